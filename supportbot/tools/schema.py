"""From a function's signature to a pydantic model of its arguments and a clean JSON schema.

pydantic does the type work (``str``, ``Literal``, ``X | None``, nested models, dataclasses,
TypedDicts, ``Annotated[..., Field(...)]``). What is done here on top is for the model
providers: no ``title`` noise, ``$ref`` inlined (Gemini's schema subset has had no references),
``const`` written as a one-value ``enum`` (Gemini knows no ``const``), and
``additionalProperties: false`` on every object with declared properties.
"""

from __future__ import annotations

import copy
import inspect
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic.json_schema import PydanticJsonSchemaWarning

from supportbot.errors import ConfigError
from supportbot.tools.context import ToolContext

_SCHEMA_KEYS = frozenset({"items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else"})
_SCHEMA_LIST_KEYS = frozenset({"anyOf", "allOf", "oneOf", "prefixItems"})
_SCHEMA_MAP_KEYS = frozenset({"properties", "patternProperties"})
# OpenAPI's discriminator refers to $defs by name, which no longer exist once references are inlined.
_DROPPED_KEYS = frozenset({"title", "discriminator"})


@dataclass(frozen=True, kw_only=True, slots=True)
class _Param:
    name: str  # the parameter's name, also the argument's name in the JSON the model sends
    field: str  # the field name on the pydantic model (never clashes with BaseModel's attributes); "" for ctx
    positional_only: bool
    context: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class ArgumentSpec:
    """How to turn the model's JSON arguments into a call of the function.

    Attributes:
        model: validates the arguments (unknown ones are refused).
        schema: the JSON schema of ``parameters`` for the model provider.
        context_param: the name of the ``ToolContext`` parameter, if the function takes one.
    """

    model: type[BaseModel]
    schema: dict[str, Any]
    context_param: str | None
    params: tuple[_Param, ...]

    def bind(self, arguments: dict[str, Any], ctx: ToolContext | None) -> tuple[list[Any], dict[str, Any]]:
        """Validate ``arguments`` and return the positional and keyword arguments of the call.

        Raises:
            pydantic.ValidationError: the arguments do not fit the signature.
        """
        values = self.model.model_validate(arguments)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for param in self.params:
            value = ctx if param.context else getattr(values, param.field)
            if param.positional_only:
                args.append(value)
            else:
                kwargs[param.name] = value
        return args, kwargs


def build_argument_spec(fn: Callable[..., Any], *, where: str, docs: dict[str, str]) -> ArgumentSpec:
    """Build the argument model and JSON schema of ``fn``.

    Args:
        fn: the tool function.
        where: ``module:function``, for error messages.
        docs: per-argument descriptions from the docstring.

    Raises:
        ConfigError: a parameter has no type hint, is ``*args``/``**kwargs``, or has a type that
            has no JSON schema.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tool {where}: cannot read its signature: {exc}") from exc
    try:
        # ToolContext is offered by name so it may be imported under TYPE_CHECKING only.
        hints = typing.get_type_hints(fn, localns={"ToolContext": ToolContext}, include_extras=True)
    except Exception as exc:
        raise ConfigError(
            f"tool {where}: cannot resolve its type hints ({type(exc).__name__}: {exc}); "
            "import every type it names at module level"
        ) from exc

    fields: dict[str, Any] = {}
    params: list[_Param] = []
    context_param: str | None = None
    for index, param in enumerate(signature.parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            star = "*" if param.kind is param.VAR_POSITIONAL else "**"
            raise ConfigError(
                f"tool {where}: {star}{param.name} is not allowed; name every argument the model may send"
            )
        if param.name not in hints:
            raise ConfigError(
                f"tool {where}: parameter '{param.name}' has no type hint; annotate it (e.g. '{param.name}: str') "
                "so its JSON schema can be built"
            )
        hint = hints[param.name]
        positional_only = param.kind is param.POSITIONAL_ONLY
        if _is_context(hint):
            context_param = param.name
            params.append(_Param(name=param.name, field="", positional_only=positional_only, context=True))
            continue
        _check_json_schema(hint, where=where, name=param.name)
        field_name = f"arg{index}"
        fields[field_name] = (hint, _field_info(param, hint, docs.get(param.name)))
        params.append(_Param(name=param.name, field=field_name, positional_only=positional_only))

    model_name = "".join(part.capitalize() for part in getattr(fn, "__name__", "tool").split("_")) + "Arguments"
    try:
        model: type[BaseModel] = create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)
        with warnings.catch_warnings():
            # A default with no JSON form (e.g. a sentinel object) is just left out of the schema.
            warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
            raw_schema = model.model_json_schema(by_alias=True)
    except Exception as exc:
        raise ConfigError(f"tool {where}: cannot build the JSON schema of its parameters: {exc}") from exc
    cleaned = clean_schema(raw_schema, where=where)
    schema = {"type": "object", "properties": cleaned.pop("properties", {})}
    if cleaned.get("required"):
        schema["required"] = cleaned.pop("required")
    schema["additionalProperties"] = False
    schema.update((key, value) for key, value in cleaned.items() if key not in schema and key != "required")
    return ArgumentSpec(model=model, schema=schema, context_param=context_param, params=tuple(params))


def _field_info(param: inspect.Parameter, hint: Any, doc: str | None) -> FieldInfo:
    """The pydantic field of one parameter: its default, its JSON name, its description."""
    options: dict[str, Any] = {"alias": param.name}
    default = param.default
    described = _has_description(hint) or (isinstance(default, FieldInfo) and bool(default.description))
    if doc and not described:
        options["description"] = doc
    if isinstance(default, FieldInfo):  # ``x: int = Field(3, ge=1)``
        # Merging does not derive the validation/serialisation aliases from ``alias``, so name all three.
        return FieldInfo.merge_field_infos(
            default, validation_alias=param.name, serialization_alias=param.name, **options
        )
    if default is param.empty:
        return Field(**options)  # type: ignore[no-any-return]
    return Field(default, **options)  # type: ignore[no-any-return]


def _is_context(hint: Any) -> bool:
    """``ToolContext``, also ``Annotated`` or optional (``ctx: ToolContext | None = None`` eases unit tests)."""
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return members == [ToolContext]
    return hint is ToolContext


def _has_description(hint: Any) -> bool:
    if typing.get_origin(hint) is not Annotated:
        return False
    return any(isinstance(meta, FieldInfo) and meta.description for meta in typing.get_args(hint)[1:])


def _check_json_schema(hint: Any, *, where: str, name: str) -> None:
    """Refuse, naming the parameter, a type pydantic can't validate or describe."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
            TypeAdapter(hint).json_schema()
    except Exception as exc:
        shown = getattr(hint, "__name__", None) or repr(hint)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"tool {where}: parameter '{name}' has type {shown}, which has no JSON schema ({reason}); "
            "use str, int, float, bool, Literal, list, a pydantic model, a dataclass or a TypedDict"
        ) from exc


def clean_schema(schema: dict[str, Any], *, where: str = "") -> dict[str, Any]:
    """Return a provider-friendly copy of a pydantic JSON schema (see the module docstring).

    Raises:
        ConfigError: the schema is recursive (a reference can't be inlined into itself).
    """
    defs = schema.get("$defs", {})
    cleaned: dict[str, Any] = _clean(schema, defs, (), where)
    return cleaned


def _clean(node: Any, defs: dict[str, Any], stack: tuple[str, ...], where: str) -> Any:
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = str(node["$ref"]).rsplit("/", 1)[-1]
        if name in stack or name not in defs:
            raise ConfigError(
                f"tool {where}: the type '{name}' refers to itself; recursive argument types can't be inlined, "
                "so flatten it (e.g. a list of simple items)"
            )
        resolved = _clean(copy.deepcopy(defs[name]), defs, (*stack, name), where)
        # Siblings of $ref (a field's description, default) override the referenced type's own.
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return {**resolved, **_clean(siblings, defs, stack, where)}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or key == "$defs":
            continue
        if key in _SCHEMA_KEYS:
            out[key] = _clean(value, defs, stack, where)
        elif key in _SCHEMA_LIST_KEYS:
            out[key] = [_clean(item, defs, stack, where) for item in value]
        elif key in _SCHEMA_MAP_KEYS:
            out[key] = {name: _clean(sub, defs, stack, where) for name, sub in value.items()}
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value  # data (default, enum, examples) or a plain keyword
    if len(out.get("allOf", ())) == 1:
        inner = out.pop("allOf")[0]
        out = {**inner, **out}
    if "properties" in out:
        out.setdefault("type", "object")
        out.setdefault("additionalProperties", False)
    return out


def format_validation_error(error: ValidationError) -> list[str]:
    """One plain line per problem, e.g. ``order_id: field required``."""
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        kind = item["type"]
        if kind == "missing":
            message = "field required"
        elif kind == "extra_forbidden":
            message = "unexpected argument"
        else:
            message = item["msg"][:1].lower() + item["msg"][1:]
        problems.append(f"{where}: {message}")
    return problems
