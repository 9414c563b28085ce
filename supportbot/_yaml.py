"""YAML with line numbers, and the ``file:line: key: problem; fix`` reports built on them.

``load_yaml`` parses with PyYAML's safe loader and remembers the line of every mapping key and
sequence item, so a problem found later (by pydantic, by the flow checks) can point at the line
the operator must edit. ``Problems`` collects those reports so a file with five mistakes is
refused once, with five lines, instead of five times.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from supportbot.errors import ConfigError

YamlKey = str | int
YamlPath = tuple[YamlKey, ...]

_MAX_NODES = 200_000  # aliases can expand a small file exponentially ("billion laughs")


class YamlSyntaxError(Exception):
    """The text is not valid YAML (or uses YAML features a config must not use).

    Attributes:
        line: 1-based line of the problem.
        problem: what is wrong, without the location.
    """

    def __init__(self, problem: str, line: int) -> None:
        super().__init__(f"line {line}: {problem}")
        self.problem = problem
        self.line = line


@dataclass(frozen=True, kw_only=True, slots=True)
class YamlDocument:
    """A parsed YAML document and where each of its parts is.

    Attributes:
        data: the document as plain Python data (dicts, lists, scalars); None when empty.
        lines: 1-based line of each mapping key and sequence item, by path (``("llm", "model")``,
            ``("tools", 1)``); ``()`` is the document's first line.
        value_lines: 1-based line where each scalar's text starts; for block scalars (``|``,
            ``>``) that is the line after the indicator, so a template's line 1 is found there.
    """

    data: Any
    lines: Mapping[YamlPath, int] = field(default_factory=dict)
    value_lines: Mapping[YamlPath, int] = field(default_factory=dict)

    def line(self, path: Iterable[YamlKey]) -> int:
        """The line of ``path``, or of its nearest ancestor that exists in the file (e.g. for a missing key)."""
        parts = tuple(path)
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return self.lines.get((), 1)

    def value_line(self, path: Iterable[YamlKey]) -> int:
        """The line where the scalar at ``path`` starts its text (falls back to ``line``)."""
        parts = tuple(path)
        return self.value_lines.get(parts) or self.line(parts)


def load_yaml(text: str) -> YamlDocument:
    """Parse one YAML document safely, recording line numbers.

    Raises:
        YamlSyntaxError: invalid YAML, more than one document, a duplicate key, a key that is
            not a plain value, a recursive alias, or a document that expands too much.
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
            raise YamlSyntaxError(problem, line) from None
        except yaml.YAMLError as exc:
            raise YamlSyntaxError(str(exc), 1) from None
        if node is None:
            return YamlDocument(data=None)
        builder = _Builder(loader)
        data = builder.build(node, ())
        builder.lines.setdefault((), node.start_mark.line + 1)
        return YamlDocument(data=data, lines=builder.lines, value_lines=builder.value_lines)
    finally:
        loader.dispose()


class _Builder:
    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.lines: dict[YamlPath, int] = {}
        self.value_lines: dict[YamlPath, int] = {}
        self.count = 0
        self.stack: set[int] = set()

    def build(self, node: yaml.Node, path: YamlPath) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise YamlSyntaxError(
                "the document expands to too many values (aliases?); write it out plainly", node.start_mark.line + 1
            )
        if isinstance(node, yaml.ScalarNode):
            start = node.start_mark.line + 1
            self.value_lines[path] = start + 1 if node.style in ("|", ">") else start
            return self._construct(node)
        if id(node) in self.stack:
            raise YamlSyntaxError("an alias refers to its own parent; remove the recursion", node.start_mark.line + 1)
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                items = []
                for index, child in enumerate(node.value):
                    self.lines.setdefault((*path, index), child.start_mark.line + 1)
                    items.append(self.build(child, (*path, index)))
                return items
            if isinstance(node, yaml.MappingNode):
                return self._build_mapping(node, path)
        finally:
            self.stack.discard(id(node))
        raise YamlSyntaxError(f"unsupported YAML node {type(node).__name__}", node.start_mark.line + 1)

    def _build_mapping(self, node: yaml.MappingNode, path: YamlPath) -> dict[Any, Any]:
        # Duplicates among the node's own keys are mistakes; keys brought in by a merge (<<) may be overridden.
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self._key(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise YamlSyntaxError(f"duplicate key {key!r} (first at line {seen[key]}); keep only one", line)
            seen[key] = line
        try:
            self.loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            raise YamlSyntaxError(exc.problem or "invalid merge (<<)", mark.line + 1 if mark else 1) from None
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node)
            child: YamlPath = (*path, key if isinstance(key, str | int) and not isinstance(key, bool) else str(key))
            self.lines[child] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, child)
        return result

    def _key(self, key_node: yaml.Node) -> Any:
        if not isinstance(key_node, yaml.ScalarNode):
            raise YamlSyntaxError(
                "a mapping key must be a plain value, not a list or mapping", key_node.start_mark.line + 1
            )
        return self._construct(key_node)

    def _construct(self, node: yaml.ScalarNode) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise YamlSyntaxError(exc.problem or "invalid value", node.start_mark.line + 1) from None


# --- problem reports -------------------------------------------------------------------------

_SECRET_WORDS = frozenset(
    {
        "key",
        "apikey",
        "secret",
        "token",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "authorization",
        "cookie",
        "credential",
        "credentials",
    }
)


def is_secret_name(name: object) -> bool:
    """Whether a key's name says its value is a secret (``api_key``, ``bot_token``; not ``max_tokens``)."""
    if not isinstance(name, str):
        return False
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    return any(word in _SECRET_WORDS for word in words)


def dotted(path: Iterable[YamlKey]) -> str:
    """``("tools", 1)`` -> ``tools[1]``; ``("llm", "max_tokens")`` -> ``llm.max_tokens``."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def did_you_mean(word: str, candidates: Collection[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def show(value: Any, *, secret: bool = False) -> str:
    """A short, safe rendering of a bad value for an error message (secrets are never shown)."""
    if secret:
        return "a hidden value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "nothing (an empty value)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, kw_only=True, slots=True, order=True)
class Problem:
    """One thing wrong in one file: ``file:line: key: message``."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line is not None else self.file
        return ": ".join(part for part in (where, self.key, self.message) if part)


class Problems:
    """Collects problems of one or several files and raises them together as one ``ConfigError``."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, file: str, line: int | None, key: str, message: str) -> None:
        self.items.append(Problem(file=file, line=line, key=key, message=message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        """Raise a ``ConfigError`` listing every problem, one per line, by file and line."""
        if self.items:
            unique = sorted(set(self.items), key=lambda p: (p.file, p.line or 0, p.key, p.message))
            raise ConfigError("\n".join(str(p) for p in unique))


# --- pydantic errors as problems ---------------------------------------------------------------

_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "path_type": "a file path",
    "url_type": "a URL",
}


def validation_problems(
    exc: ValidationError,
    model: type[BaseModel],
    *,
    file: str,
    doc: YamlDocument | None,
    problems: Problems,
    reasons: Mapping[YamlPath, str] | None = None,
    prefix: YamlPath = (),
    skip: Collection[YamlPath] = (),
) -> None:
    """Translate pydantic's errors into ``file:line: key: problem; fix`` reports.

    Args:
        exc: the error pydantic raised for ``model``.
        model: the model that was validated; walked to drop union tags from error locations and
            to suggest field names for unknown keys.
        file: the file name to show.
        doc: the parsed file, for line numbers (None: no lines).
        problems: where to add the reports.
        reasons: why a limit exists, by path (``("llm", "max_tokens")``: "the model's output limit").
        prefix: path of ``model`` inside the document.
        skip: paths already reported (e.g. an unset environment variable), whose errors would repeat them.
    """
    for error in exc.errors(include_url=False):
        path, parent = _walk(model, tuple(error["loc"]))
        full = (*prefix, *path)
        if any(full[: len(s)] == s for s in skip):
            continue
        line = doc.line(full) if doc is not None else None
        secret = any(is_secret_name(part) for part in full)
        kind = error["type"]
        ctx = error.get("ctx") or {}
        value = error.get("input")
        if kind == "extra_forbidden":
            name = str(path[-1]) if path else "?"
            fields = _field_names(parent)
            message = f"unknown key {name!r}{did_you_mean(name, fields)}"
            if not message.endswith("?") and fields:
                message += f"; known keys here: {', '.join(sorted(fields))}"
        elif kind == "missing":
            message = f"missing required key {path[-1]!r}; add it" if path else "missing a required value"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            key = str(ctx.get("discriminator", "'source'")).strip("'")
            full = (*full, key)
            line = doc.line(full) if doc is not None else None
            if kind == "union_tag_invalid":
                message = f"{show(ctx.get('tag'))} is not known; use one of {ctx.get('expected_tags')}"
            else:
                message = f"missing required key {key!r}; add it"
        elif kind in _EXPECTED:
            message = f"expected {_EXPECTED[kind]}, got {show(value, secret=secret)}"
        elif kind in ("less_than_equal", "less_than"):
            limit = ctx.get("le", ctx.get("lt"))
            why = (reasons or {}).get(full)
            word = "more than" if kind == "less_than_equal" else "not less than"
            message = f"{show(value, secret=secret)} is {word} {limit}" + (f", {why}" if why else "")
            message += f"; use at most {limit}" if kind == "less_than_equal" else f"; use less than {limit}"
        elif kind in ("greater_than_equal", "greater_than"):
            limit = ctx.get("ge", ctx.get("gt"))
            word = "less than" if kind == "greater_than_equal" else "not more than"
            message = f"{show(value, secret=secret)} is {word} {limit}; use "
            message += f"at least {limit}" if kind == "greater_than_equal" else f"more than {limit}"
        elif kind == "literal_error":
            message = f"{show(value, secret=secret)} is not allowed; use one of {ctx.get('expected')}"
        elif kind == "string_pattern_mismatch":
            message = f"{show(value, secret=secret)} does not match the pattern {ctx.get('pattern')}; "
            example = _example(parent, path)
            message += f"write it like {example!r}" if example is not None else "change it to match"
        elif kind in ("string_too_short", "too_short"):
            least = ctx.get("min_length")
            what = "character" if kind == "string_too_short" else "item"
            message = f"needs at least {least} {what}{'s' if least != 1 else ''}; fill it in"
        elif kind in ("string_too_long", "too_long"):
            most = ctx.get("max_length")
            what = "characters" if kind == "string_too_long" else "items"
            message = f"has more than {most} {what}; shorten it to at most {most}"
        elif kind == "value_error":
            message = str(error["msg"]).removeprefix("Value error, ")
        else:
            message = str(error["msg"])
        problems.add(file, line, dotted(full), message)


def error_paths(exc: ValidationError, model: type[BaseModel]) -> list[YamlPath]:
    """The path of each of pydantic's errors as the file spells it (union tags left out)."""
    return [_walk(model, tuple(error["loc"]))[0] for error in exc.errors(include_url=False)]


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[YamlPath, type[BaseModel] | None]:
    """Follow an error location through the models: the path as the file spells it, and the model of the last key."""
    path: list[YamlKey] = []
    current: Any = model
    parent: type[BaseModel] | None = model
    for part in loc:
        item = _item_type(current) if isinstance(part, int) and not isinstance(part, bool) else None
        if item is not None:  # an index into a list of models: go on inside the item's model
            path.append(part)
            current = item
            continue
        members = _models_in(current)
        if len(members) > 1 and isinstance(part, str):
            tagged = [m for m in members if _has_literal(m, part)]
            if tagged and part not in {name for m in members for name in m.model_fields}:
                current = tagged[0]
                continue
        target = members[0] if len(members) == 1 else None
        parent = target
        path.append(part)
        if target is not None and isinstance(part, str) and part in target.model_fields:
            current = target.model_fields[part].annotation
        else:
            current = None
    return tuple(path), parent


def _item_type(annotation: Any) -> Any:
    """``X`` of ``list[X]`` or ``list[X] | None``; None for anything else."""
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    for candidate in (annotation, *candidates):
        if typing.get_origin(candidate) in (list, tuple) and typing.get_args(candidate):
            return typing.get_args(candidate)[0]
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return []


def _has_literal(model: type[BaseModel], value: str) -> bool:
    return any(
        typing.get_origin(info.annotation) is typing.Literal and value in typing.get_args(info.annotation)
        for info in model.model_fields.values()
    )


def _example(model: type[BaseModel] | None, path: YamlPath) -> Any:
    """The first of ``examples`` of the field at the end of ``path`` in ``model``, if it has one."""
    name = path[-1] if path else None
    info = model.model_fields.get(name) if model is not None and isinstance(name, str) else None
    return info.examples[0] if info is not None and info.examples else None


def _field_names(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    hidden: frozenset[str] = getattr(model, "__hidden_keys__", frozenset())
    return [name for name in model.model_fields if name not in hidden]
