"""Finding and reading flow-test files, every problem of every file at once.

Test files are the ``*.yaml`` / ``*.yml`` files under the given paths (by default ``tests/`` beside
the config file). A YAML file without a top-level ``cases:`` is not a test file: it is skipped
with a note. Each test file is checked against ``TestFile`` and then against the project: the
tools and flows it names must exist, so ``tests/x.yaml:12: cases[0].turns[1].expect.called[0].tool:
unknown tool 'lookup_ordr'; did you mean 'lookup_order'?`` is reported before anything runs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from supportbot._yaml import (
    Problems,
    YamlDocument,
    YamlPath,
    YamlSyntaxError,
    did_you_mean,
    dotted,
    load_yaml,
    validation_problems,
)
from supportbot.flowtest.spec import TestFile

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, kw_only=True, slots=True)
class SpecFile:
    """A valid test file.

    Attributes:
        path: the file.
        shown: the file as problems and failures name it (relative to the working directory).
        name: the file as progress lines name it: relative to the directory it was found in, or with
            several paths given, relative to the working directory (``shown``), so no two files share it.
        doc: the parsed YAML, for line numbers.
        spec: the validated content.
    """

    path: Path
    shown: str
    name: str
    doc: YamlDocument
    spec: TestFile

    def at(self, path: YamlPath) -> str:
        """``file:line`` of the key at ``path`` (or of its nearest written ancestor)."""
        return f"{self.shown}:{self.doc.line(path)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Found:
    """The test files found, and notes on YAML files that are not test files."""

    files: tuple[SpecFile, ...]
    notes: tuple[str, ...] = ()


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it, else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def find_files(paths: Sequence[Path], *, default: Path, problems: Problems) -> list[tuple[Path, str]]:
    """The YAML files to read, each with the name progress lines use; a path that does not exist is a problem.

    With one path, a file is named relative to it (``orders.yaml``); with several, relative to the
    working directory (``tests/orders.yaml``, ``more/orders.yaml``), so that files of the same name
    under two paths stay apart in progress lines, the summary, ``-k`` and JUnit XML.

    Args:
        paths: files and directories given on the command line; none means ``default``.
        default: the tests directory beside the config file (or ``./tests``).
        problems: where a missing path goes.
    """
    found: list[tuple[Path, str]] = []
    several = len(paths) > 1
    for path in paths or [default]:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()):
                relative = file.relative_to(path)
                if not any(part.startswith(".") for part in relative.parts):
                    found.append((file, shown_path(file) if several else relative.as_posix()))
        elif path.is_file():
            found.append((path, shown_path(path) if several else path.name))
        elif paths:
            problems.add(
                shown_path(path), None, "", "no such file or directory; give a test file or a directory of them"
            )
        else:
            problems.add(
                shown_path(path), None, "",
                "there is no tests directory; create it with a test file (see docs/testing.md), or name test files",
            )  # fmt: skip
    unique: dict[Path, tuple[Path, str]] = {}
    for file, name in found:
        unique.setdefault(file.resolve(), (file, name))  # a file given twice runs once, as first named
    return list(unique.values())


def load_files(
    candidates: Iterable[tuple[Path, str]], *, tools: Collection[str], flows: Collection[str], problems: Problems
) -> Found:
    """Read and check every candidate; problems go to ``problems``, files without ``cases:`` become notes.

    Args:
        candidates: ``(path, name)`` pairs from ``find_files``.
        tools: the names of the project's tools (built-in, ``tools.modules``, ``tools/``).
        flows: the names of the project's flows.
        problems: where every problem goes.
    """
    files: list[SpecFile] = []
    notes: list[str] = []
    known_tools = {*tools, *(f"transfer_to_{flow}" for flow in flows)}
    for path, name in candidates:
        shown = shown_path(path)
        try:
            doc = load_yaml(path.read_text(encoding="utf-8"))
        except YamlSyntaxError as exc:
            problems.add(shown, exc.line, "", f"invalid YAML: {exc.problem}; check indentation and quoting")
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.add(shown, None, "", f"cannot read the file ({exc}); check it and its permissions")
            continue
        if not isinstance(doc.data, dict) or "cases" not in doc.data:
            notes.append(f"{shown}: no top-level cases:, so not a test file; skipped")
            continue
        _check_names(shown, doc, known_tools, set(flows), problems)
        try:
            spec = TestFile.model_validate(doc.data)
        except ValidationError as exc:
            validation_problems(exc, TestFile, file=shown, doc=doc, problems=problems)
            continue
        files.append(SpecFile(path=path, shown=shown, name=name, doc=doc, spec=spec))
    return Found(files=tuple(files), notes=tuple(notes))


def _check_names(file: str, doc: YamlDocument, tools: set[str], flows: set[str], problems: Problems) -> None:
    """Every tool and flow a test file names exists in the project; case names are unique in the file.

    Read from the parsed YAML, not the validated model, so that these problems come together with
    the file's other problems.
    """

    def check(path: YamlPath, known: set[str], what: str, *, empty_refused: bool = True) -> None:
        value = _get(doc.data, path)
        if value == "" and empty_refused:
            return  # TestFile refuses an empty name: one problem for one mistake
        if isinstance(value, str) and value not in known:
            hint = did_you_mean(value, known) or f"; the {what}s are {', '.join(sorted(known))}"
            problems.add(file, doc.line(path), dotted(path), f"unknown {what} {value!r}{hint}")

    cases = _items(doc.data, ("cases",))
    for base in [(), *cases]:
        check((*base, "flow"), flows, "flow")
        for rule in _items(doc.data, (*base, "rules")):
            check((*rule, "call"), tools, "tool", empty_refused=False)
            check((*rule, "after"), tools, "tool", empty_refused=False)
    first: dict[str, int] = {}
    for case in cases:
        name = _get(doc.data, (*case, "name"))
        if isinstance(name, str):
            line = doc.line((*case, "name"))
            if name in first:
                problems.add(file, line, f"{dotted(case)}.name",
                             f"{name!r} is also the name of the case at line {first[name]}; give each case a unique "
                             "name")  # fmt: skip
            first.setdefault(name, line)
        expects = [(*case, "expect")]
        for turn in _items(doc.data, (*case, "turns")):
            expects.append((*turn, "expect"))
            for step in _items(doc.data, (*turn, "model")):
                check((*step, "call"), tools, "tool")
                for call in _items(doc.data, (*step, "calls")):
                    check((*call, "call"), tools, "tool")
        for expect in expects:
            called = (*expect, "called")
            # The short forms too: `called: NAME` and `called: {tool: NAME}` are one item.
            for at in _items(doc.data, called) if isinstance(_get(doc.data, called), list) else [called]:
                check(at if isinstance(_get(doc.data, at), str) else (*at, "tool"), tools, "tool")
            for name_at in _items(doc.data, (*expect, "not_called")):
                check(name_at, tools, "tool")
            for key, known, what in (("confirmation", tools, "tool"), ("transfer", flows, "flow"),
                                     ("flow", flows, "flow")):  # fmt: skip
                check((*expect, key), known, what)
            if isinstance(_get(doc.data, (*expect, "not_called")), str):
                check((*expect, "not_called"), tools, "tool")


def _get(data: Any, path: YamlPath) -> Any:
    """The value at ``path`` in parsed YAML, or None where the path does not exist (or has another shape)."""
    for part in path:
        if isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data):
            data = data[part]
        elif isinstance(part, str) and isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


def _items(data: Any, path: YamlPath) -> list[YamlPath]:
    """The paths of the items of the list at ``path`` (none if it is not a list)."""
    value = _get(data, path)
    return [(*path, index) for index in range(len(value))] if isinstance(value, list) else []
