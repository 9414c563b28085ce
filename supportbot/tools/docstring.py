"""Split a tool function's docstring into the tool's description and its per-argument docs.

Google style is the house style (``Args:`` section); Sphinx field lists (``:param x: ...``) and
numpy sections (``Parameters`` over a dashed line) are understood too, because tools are often
written by people used to one of those. The description is what is left once the parameter,
return, yield and raise sections are taken out: the model does not need them, it reads the schema.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

_ARG_SECTIONS = frozenset(
    {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments", "other parameters"}
)
_DROPPED_SECTIONS = _ARG_SECTIONS | {"returns", "return", "yields", "yield", "raises", "raise", "exceptions"}
_KNOWN_SECTIONS = _DROPPED_SECTIONS | {
    "attributes", "example", "examples", "note", "notes", "see also", "references", "todo", "warning", "warnings",
    "warns",
}  # fmt: skip

_GOOGLE_HEADER = re.compile(r"^([A-Za-z][A-Za-z ]*):\s*$")
_NUMPY_RULE = re.compile(r"^-{3,}\s*$")
_GOOGLE_ENTRY = re.compile(r"^\*{0,2}([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_SPHINX_FIELD = re.compile(r"^:(\w+)((?:\s+[^:]+)?):\s*(.*)$")


@dataclass(frozen=True, kw_only=True, slots=True)
class Docstring:
    """A parsed docstring.

    Attributes:
        description: summary and body, without the parameter/return/raise sections.
        params: argument name -> its description (only arguments that have one).
    """

    description: str = ""
    params: dict[str, str] = field(default_factory=dict)


def parse_docstring(doc: str | None) -> Docstring:
    """Parse a Google, Sphinx or numpy style docstring.

    Args:
        doc: the raw ``__doc__`` (indentation is cleaned here).

    Returns:
        The description and the argument docs; an empty ``Docstring`` for None.
    """
    if not doc or not doc.strip():
        return Docstring()
    lines = inspect.cleandoc(doc).splitlines()
    params: dict[str, str] = {}
    kept: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        header = _section_header(lines, i)
        if header is not None:
            name, numpy = header
            start = i + (2 if numpy else 1)
            end = _numpy_section_end(lines, start) if numpy else _google_section_end(lines, start)
            if name in _ARG_SECTIONS:
                params.update(_numpy_params(lines[start:end]) if numpy else _google_params(lines[start:end]))
            if name in _DROPPED_SECTIONS:
                i = end
                continue
            kept.extend(lines[i:end])
            i = end
            continue
        if _SPHINX_FIELD.match(line):
            i = _sphinx_field(lines, i, params)
            continue
        kept.append(line)
        i += 1
    return Docstring(description=_tidy(kept), params=params)


def _section_header(lines: list[str], i: int) -> tuple[str, bool] | None:
    """The section name at line ``i`` and whether it is numpy style, or None for an ordinary line."""
    line = lines[i]
    if line.startswith((" ", "\t")):
        return None
    if i + 1 < len(lines) and _NUMPY_RULE.match(lines[i + 1]) and line.strip().lower() in _KNOWN_SECTIONS:
        return line.strip().lower(), True
    match = _GOOGLE_HEADER.match(line)
    if match and match.group(1).strip().lower() in _KNOWN_SECTIONS:
        return match.group(1).strip().lower(), False
    return None


def _google_section_end(lines: list[str], start: int) -> int:
    # A Google section is its indented block: it ends at the first unindented, non-empty line.
    i = start
    while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
        i += 1
    return i


def _numpy_section_end(lines: list[str], start: int) -> int:
    # Numpy entries are unindented, so a section only ends where the next section starts.
    i = start
    while i < len(lines):
        if _section_header(lines, i) is not None:
            return i
        i += 1
    return i


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _google_params(block: list[str]) -> dict[str, str]:
    body = [line for line in block if line.strip()]
    if not body:
        return {}
    entry_indent = _indent(body[0])
    params: dict[str, str] = {}
    current: str | None = None
    for line in body:
        match = _GOOGLE_ENTRY.match(line.strip()) if _indent(line) <= entry_indent else None
        if match:
            current = match.group(1)
            params[current] = match.group(3).strip()
        elif current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
    return {name: text for name, text in params.items() if text}


def _numpy_params(block: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    current: list[str] = []
    for line in block:
        if not line.strip():
            continue
        if not line.startswith((" ", "\t")):
            names = line.split(":", 1)[0]
            current = [name.strip().lstrip("*") for name in names.split(",") if name.strip()]
            for name in current:
                params[name] = ""
        else:
            for name in current:
                params[name] = f"{params[name]} {line.strip()}".strip()
    return {name: text for name, text in params.items() if text}


def _sphinx_field(lines: list[str], i: int, params: dict[str, str]) -> int:
    """Consume one Sphinx field (and its indented continuation lines); return the next line's index."""
    match = _SPHINX_FIELD.match(lines[i])
    j = i + 1
    while j < len(lines) and lines[j].startswith((" ", "\t")) and lines[j].strip():
        j += 1
    if match is None:  # pragma: no cover - the caller only sends matching lines
        return j
    kind, arg, text = match.group(1), match.group(2).split(), match.group(3)
    if kind in {"param", "parameter", "arg", "argument", "key", "keyword"} and arg:
        full = " ".join([text.strip(), *(line.strip() for line in lines[i + 1 : j])]).strip()
        if full:
            params[arg[-1].lstrip("*")] = full  # ":param int x:" names the type first
    return j


def _tidy(lines: list[str]) -> str:
    text = "\n".join(line.rstrip() for line in lines).strip()
    return re.sub(r"\n{3,}", "\n\n", text)
