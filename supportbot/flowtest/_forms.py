"""How values are written in a flow-test file: the short forms, what is refused, and the JSON Schema of both.

``spec.py`` declares the keys; this module reads their values as the loader does (a number or a
date where text is expected is that text, ``TEXT`` is ``[TEXT]``) and refuses, with the fix, what
would silently weaken a test: a key written without a value (null would switch an assertion
off), an empty text (it matches every reply), a YAML boolean where text is expected. The
``json_schema_extra`` functions make the editors' schema say the same.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationInfo, WithJsonSchema, field_validator

# A number is text here too (``reply_contains: 249.8``): the loader reads it as the text it was written as.
_TEXT_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "string", "minLength": 1}, {"type": "number"}]}
_TEXTS_SCHEMA = {"anyOf": [*_TEXT_SCHEMA["anyOf"], {"type": "array", "items": _TEXT_SCHEMA}]}
Texts = Annotated[list[str], WithJsonSchema(_TEXTS_SCHEMA)]
"""One text or a list of texts (``reply_contains: shipped`` or ``reply_contains: [shipped, A1001]``)."""
_STRINGS = TypeAdapter(list[str])
_NO_VALUE = "has no value; give one or remove the key"


def quote_fix(value: bool) -> str:
    """The fix for a YAML boolean where text is expected (YAML 1.1 reads an unquoted yes, no, on, off as one)."""
    return f'expected text, got {kind_of(value)}; write it in quotes: "{"yes" if value else "no"}"'


def _no_nulls(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """The schema as strict as the loader: a key written without a value is refused (``Model._has_value``)."""
    nullable: frozenset[str] = getattr(model, "_NULLABLE", frozenset())
    for name, prop in schema.get("properties", {}).items():
        branches = prop.get("anyOf")
        if name in nullable or not isinstance(branches, list):
            continue
        kept = [branch for branch in branches if branch != {"type": "null"}]
        if len(kept) == 1 and not set(kept[0]) & set(prop):
            del prop["anyOf"]
            prop.update(kept[0])
        else:
            prop["anyOf"] = kept
        if prop.get("default", 0) is None:
            del prop["default"]


class Model(BaseModel):
    """A part of a test file: unknown keys are refused, and so is a key written without a value."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_no_nulls)
    _NULLABLE: ClassVar[frozenset[str]] = frozenset()
    """Keys whose null means something (``customer: null``, an anonymous visitor)."""

    @field_validator("*", mode="before")
    @classmethod
    def _has_value(cls, value: Any, info: ValidationInfo) -> Any:
        # `reply_contains:` with nothing after it is null, which would switch the assertion off: refuse it.
        if value is None and info.field_name not in cls._NULLABLE:
            raise ValueError(_NO_VALUE)
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation in (str, str | None):
                raise ValueError(quote_fix(value))
        return value


def as_texts(value: Any, *, empty: str) -> list[str]:
    """``TEXT`` or ``[TEXT, ...]`` as a list; anything else is refused with the expected forms.

    Args:
        value: as written.
        empty: why an empty text is refused, and what to write instead.
    """
    items = value if isinstance(value, list) else [value]
    if isinstance(value, dict) or value is None:
        raise ValueError(f"expected text or a list of texts, got {kind_of(value)}")
    for item in items:
        if isinstance(item, bool):
            raise ValueError(quote_fix(item))
        if item == "":
            raise ValueError(empty)
    return _STRINGS.validate_python([as_text(item) for item in items])


def as_text(value: Any) -> Any:
    """A number or date YAML read from unquoted text (``2026-11-25``, ``42``) as that text."""
    if isinstance(value, date):
        return value.isoformat()
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def as_moment(value: Any) -> Any:
    """A YAML timestamp or date as an aware datetime (a time without a zone is UTC)."""
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(), tzinfo=UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f'{value!r} is not a date and time; write e.g. "2026-11-20T10:00:00Z"') from None
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def one_kind_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """What ``ModelStep._one_kind`` checks, for editors: exactly one of the four keys, args only with call."""
    _no_nulls(schema, model)
    schema["oneOf"] = [{"required": [key]} for key in ("reply", "call", "calls", "error")]
    schema["dependentRequired"] = {"args": ["call"]}


def one_or_list(schema: dict[str, Any]) -> None:
    """``called: NAME`` and ``called: {tool: NAME}`` are one item, as ``Expect._one_call`` reads them."""
    for branch in list(schema.get("anyOf", [schema])):
        if branch.get("type") == "array":
            schema.setdefault("anyOf", []).append(branch["items"])


EMPTY = "an empty text matches every {what}; give the text to look for"


# A number is the text it was written as, and YAML's booleans the words yes and no (Turn._words).
CUSTOMER_SCHEMA: dict[str, Any] = {"type": ["string", "number", "boolean"]}
