"""The sandboxed Jinja environment that renders flow templates (system prompts, greetings).

Templates are written by operators; everything a customer or the model writes is passed in as
data and never becomes template source, so a message containing ``{{ 7*7 }}`` stays those
eight characters. The sandbox is immutable (no ``list.append`` from a template), refuses
attributes that start with ``_`` (``''.__class__.__mro__``), uses ``StrictUndefined`` so a typo
is an error instead of an empty string, and caps the two operators (``*``, ``**``) that can
turn a short template into gigabytes.
"""

from __future__ import annotations

import difflib
import re
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "TEMPLATE_FILENAME",
    "check_template",
    "compile_template",
    "environment",
    "template_line",
    "unsafe_names",
]

TEMPLATE_FILENAME = "<template>"
"""The file name Jinja gives a template made from a string; its frames in a traceback carry template lines."""

MAX_REPEAT_CHARS = 100_000
MAX_EXPONENT = 128


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is larger than {MAX_EXPONENT}")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_REPEAT_CHARS
                ):
                    raise SecurityError(f"repeating a sequence {times} times makes more than {MAX_REPEAT_CHARS} items")
        return super().call_binop(context, operator, left, right)


_ENVIRONMENT = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


def environment() -> ImmutableSandboxedEnvironment:
    """The shared sandboxed environment (rendering is thread-safe; templates never change it)."""
    return _ENVIRONMENT


def compile_template(source: str) -> Template:
    """Compile ``source`` once in the sandbox.

    Raises:
        jinja2.TemplateSyntaxError: with ``lineno`` relative to ``source``.
    """
    return _ENVIRONMENT.from_string(source)


def template_line(exc: BaseException) -> int | None:
    """The template-relative line where a render error happened, from Jinja's rewritten traceback."""
    line = getattr(exc, "lineno", None)
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == TEMPLATE_FILENAME and frame.lineno:
            line = frame.lineno
    return line if isinstance(line, int) else None


def unsafe_names(ast: nodes.Template) -> Iterator[tuple[str, int]]:
    """Attribute and item names the sandbox would refuse (``__class__``, ``_private``), with their lines.

    The sandbox refuses them at render time too; finding them in the syntax tree catches the ones
    inside a branch that a trial render does not take.
    """
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            name: object = node.attr
        elif isinstance(node, nodes.Getitem):
            name = node.arg.value if isinstance(node.arg, nodes.Const) else None
        elif isinstance(node, nodes.Filter):
            first = node.args[0] if node.args else None
            name = first.value if node.name == "attr" and isinstance(first, nodes.Const) else None
        else:
            continue
        if isinstance(name, str) and name.startswith("_"):
            yield name, node.lineno


def check_template(source: str, samples: Sequence[Mapping[str, Any]]) -> tuple[Template | None, list[tuple[int, str]]]:
    """Compile ``source`` and find what would fail at run time, before it runs.

    Checks: syntax; names the sandbox refuses; variables that are not in the samples' keys (or
    Jinja's globals); then a trial render with each sample under ``StrictUndefined``, which
    catches misspelt attributes such as ``customer.frist_name``.

    Args:
        source: the template text.
        samples: variables to trial-render with; the first one's keys are the allowed names.

    Returns:
        The compiled template (None if it does not compile) and the problems as
        ``(template-relative line, message with its fix)``.
    """
    try:
        ast = _ENVIRONMENT.parse(source)
    except TemplateSyntaxError as exc:
        return None, [(exc.lineno, f"template syntax error: {(exc.message or '').rstrip('.')}; fix the Jinja markup")]
    problems: list[tuple[int, str]] = []
    for name, line in unsafe_names(ast):
        problems.append(
            (line, f"{name!r} is not allowed in the sandbox; templates may not use names starting with '_'")
        )
    allowed = set(samples[0]) if samples else set()
    for name in sorted(meta.find_undeclared_variables(ast) - allowed - set(_ENVIRONMENT.globals)):
        line = min((n.lineno for n in ast.find_all(nodes.Name) if n.name == name), default=1)
        hint = _closest(name, allowed) or f"; use one of {', '.join(sorted(allowed))}"
        problems.append((line, f"unknown variable {name!r}{hint}"))
    template = _ENVIRONMENT.from_string(source)
    if problems:
        return template, problems
    seen: set[str] = set()
    for variables in samples:
        try:
            template.render(variables)
        except Exception as exc:
            message = _render_problem(exc, variables)
            if message not in seen:
                seen.add(message)
                problems.append((template_line(exc) or 1, message))
    return template, problems


def _render_problem(exc: Exception, variables: Mapping[str, Any]) -> str:
    if isinstance(exc, SecurityError):
        return f"refused by the sandbox: {exc}"
    if isinstance(exc, UndefinedError):
        match = re.search(r"has no attribute '([^']+)'", str(exc))
        hint = ""
        if match:
            names = {a for v in variables.values() for a in _attributes(v)}
            hint = _closest(match.group(1), names)
        return f"{exc}{hint or '; check the spelling, or guard it with `is defined`'}"
    return f"fails to render ({type(exc).__name__}: {exc}); fix the template"


def _attributes(value: Any) -> set[str]:
    if isinstance(value, Mapping):
        return {k for k in value if isinstance(k, str)}
    return {a for a in dir(value) if not a.startswith("_")}


def _closest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
