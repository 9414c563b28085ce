"""``supportbot._json`` gives what ``json`` gives, value for value and byte for byte, orjson or not."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import uuid
from typing import Any

import orjson
import pytest

from supportbot._json import dumps_bytes, dumps_compact, has_long_number, is_plain, loads
from supportbot.config import LLMSettings
from supportbot.llm.base import Completion, LLMRequest
from supportbot.llm.client import OpenAICompatibleLLM, _encode_body, _Fragments, message_to_dict
from supportbot.messages import ChatMessage, ImagePart, ToolCall
from supportbot.testing import FakeLLMServer, Reply


def stdlib_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def outcome(call: Any, *args: Any) -> tuple[str, str]:
    """What a call returned (its repr, so 1 and 1.0 differ), or the type and text of what it raised."""
    try:
        return "returned", repr(call(*args))
    except Exception as exc:
        if isinstance(exc, json.JSONDecodeError):
            return type(exc).__name__, f"{exc.msg} at {exc.pos}"
        return type(exc).__name__, str(exc)


def short(value: Any) -> str:
    try:
        return ascii(value)[:40]
    except RecursionError:
        return "nested too deep for repr"


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


class Color(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 3


class Tag(enum.StrEnum):
    NEW = "new"


class Text(str):
    pass


class Number(int):
    pass


class Real(float):
    pass


class Mapping(dict[str, Any]):
    pass


@dataclasses.dataclass
class Point:
    x: int


ORDINARY = [
    {"role": "user", "content": "Where is order A1001?"},
    [1, -2, 0, True, False, None, "x", [], {}],
    {"ü": "Ünïcode, emoji 😀, RTL עברית, \u2028\u2029\ufeff\x7f"},
    "".join(chr(i) for i in range(0x20)) + '"\\/',
    "\x00 is escaped as \\u0000",
    (1, "tuple", (2,)),
    2**63 - 1,
    2**64 - 1,
    -(2**63),
    [0.0, -0.0, 1.0, 0.1, 0.3 + 0.1, 1 / 3, 0.95, 49.99, 1e-4, 9999999999999998.0, -123.456],
    nested(200),
]

# Values orjson writes differently from json, or refuses.
AWKWARD = [
    float("nan"),
    float("inf"),
    [float("-inf")],
    {"cost": 1e-05},
    1e-07,
    2**64,
    -(2**63) - 1,
    10**40,
    {1: "int key"},
    {True: "bool key", None: "None key", 1.5: "float key"},
    {"a": 1, 2: "mixed keys"},
    Real(2.5),
    nested(300),
]
# orjson raises on these (the walk takes them for plain, as it does not look inside strs).
SURROGATES = ["\ud800 lone surrogate", {"k\udfff": "surrogate in a key"}]
# Floats json writes with an exponent: orjson writes some of them the same way, depending on its version.
EXPONENTS = [5e-324, 1e-300, 9e-5, 1e16, 1.5e17, 1e100, 1.7976931348623157e308]
# orjson writes these as json does, but they are not of the exact types the walk takes.
SUBCLASSES = [Text("str subclass"), Number(7), Mapping(a=1), Size.BIG, Tag.NEW, [Size.BIG, Tag.NEW]]
REFUSED = [
    Color.RED,
    uuid.UUID(int=1),
    datetime.datetime(2026, 11, 24, 12, 0),
    datetime.date(2026, 11, 24),
    Point(1),
    decimal.Decimal("1.5"),
    {1, 2},
    b"bytes",
    nested(5000),
]


def test_the_awkward_values_are_ones_orjson_gets_wrong() -> None:
    # Without these, the cases below would not test the fallbacks.
    for value in [*AWKWARD, *SURROGATES, *REFUSED]:
        assert outcome(orjson.dumps, value) != outcome(lambda v: stdlib_dumps(v).encode(), value), value


@pytest.mark.parametrize("value", ORDINARY + AWKWARD + SURROGATES + EXPONENTS + SUBCLASSES + REFUSED, ids=short)
def test_dumps_is_json_dumps(value: Any) -> None:
    assert outcome(dumps_compact, value) == outcome(stdlib_dumps, value)
    assert outcome(dumps_bytes, value) == outcome(lambda v: stdlib_dumps(v).encode(), value)


def test_cycles_are_json_s_error() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    assert (
        outcome(dumps_compact, cycle) == outcome(stdlib_dumps, cycle) == ("ValueError", "Circular reference detected")
    )
    assert outcome(dumps_bytes, cycle) == outcome(stdlib_dumps, cycle)


@pytest.mark.parametrize("value", ORDINARY, ids=short)
def test_ordinary_values_are_plain(value: Any) -> None:
    assert is_plain(value)


@pytest.mark.parametrize("value", AWKWARD[:-1] + EXPONENTS + SUBCLASSES + REFUSED[:-1], ids=short)
def test_awkward_values_are_not_plain(value: Any) -> None:
    # Nesting is left to orjson, which raises beyond 254 levels.
    assert not is_plain(value)


def test_checked_values_of_unexpected_types_still_go_to_json() -> None:
    for value in [Text("x"), Number(1), Mapping(a=1), Point(1), datetime.date(2026, 1, 1), "\ud800", {1: 2}, 2**70]:
        checked = outcome(lambda v: dumps_bytes(v, checked=True), value)
        assert checked == outcome(lambda v: stdlib_dumps(v).encode(), value), value


# -- the request body: only the provider extras are walked ---------------------------------------------

EXTRAS = [
    {},
    {"extra_content": {"google": {"thought_signature": "CrICAd+/opaque=="}}},
    {"score": float("nan")},
    {"score": 1e-05, "big": 2**70},
    {"when": [1.5, None, True]},
]


@pytest.mark.parametrize("extra", EXTRAS, ids=short)
def test_request_body_is_json_s_bytes(extra: dict[str, Any]) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "number", "minimum": 1e-05}}}
    system = ChatMessage(role="system", content="Be kind. Ünïcode too.")
    messages = [
        system,
        ChatMessage(role="user", content="Where is my order?", images=(ImagePart(url="data:image/png;base64,AA"),)),
        ChatMessage(role="assistant", tool_calls=(ToolCall(id="c1", name="f", arguments="{}", extra=extra),)),
        ChatMessage(role="tool", tool_call_id="c1", name="f", content='{"minimum":1e-05}'),
        ChatMessage(role="assistant", content="Here you are \x00\u2028", extra=extra),
    ]
    fragments = _Fragments()
    for request in [
        LLMRequest(messages=messages, tools=[tool], model="m", temperature=1e-05, top_p=0.95, max_tokens=5),
        LLMRequest(messages=messages[1:], model="m", temperature=float("nan")),
        LLMRequest(messages=messages[:1], model="m"),
    ]:
        for _ in range(2):  # the second time with the system prompt and the tools from the kept text
            expected: dict[str, Any] = {"messages": [message_to_dict(m) for m in request.messages]}
            if request.tools:
                expected["tools"] = list(request.tools)
            expected |= {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
            expected |= {k: v for k, v in [("temperature", request.temperature), ("top_p", request.top_p),
                                           ("max_tokens", request.max_tokens)] if v is not None}  # fmt: skip
            assert _encode_body(request, True, fragments) == stdlib_dumps(expected).encode()


# -- loads ------------------------------------------------------------------------------------------------

TEXTS = [
    '{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":" order"},"finish_reason":null}],"usage":null}',
    '{"usage":{"prompt_tokens":1184,"completion_tokens":10,"total_tokens":1194}}',
    ' \t\n{"a": [1, 2.5, -0, -0.0, 1E5, 1e-400, true, false, null]}\r\n',
    '{"a":1,"a":2}',
    '"\\u00fc\\ud83d\\ude00\\u0000 ü 😀"',
    "18446744073709551615",
    "-9223372036854775808",
    "1234567890123456789.5",
    '"a tracking number: 12345678901234567890"',
    "0.1234567890123456789012345",
    # orjson reads these differently or not at all
    "18446744073709551616",
    "-9223372036854775809",
    '{"seed": 123456789012345678901234567890}',
    "1" * 400,
    "1e400",
    "-1e400",
    "NaN",
    "[Infinity, -Infinity]",
    '"\\ud800"',
    '"\\udc00\\ud800"',
    '{"\\udfff": 1}',
    # errors
    "",
    " ",
    "{",
    "[1,]",
    '{"a":1}x',
    "01",
    "1.",
    ".5",
    '"\x01"',
    "{'a': 1}",
    "\ufeff{}",
    "[" * 1100 + "]" * 1100,
]


@pytest.mark.parametrize("text", TEXTS, ids=short)
def test_loads_is_json_loads(text: str) -> None:
    assert outcome(loads, text) == outcome(json.loads, text)
    if "\ud800" not in text:
        data = text.encode()
        assert outcome(loads, data) == outcome(json.loads, data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xef\xbb\xbf{}",  # a UTF-8 BOM: json skips it in bytes
        '{"a": "ü"}'.encode("utf-16"),
        '{"a": "ü"}'.encode("utf-32-be"),
        b'"\xed\xa0\x80"',  # an encoded lone surrogate: json reads it as one
        b'"\xff"',  # not UTF-8: json raises UnicodeDecodeError
        b'{"a": "\xc3"}',
    ],
    ids=short,
)
def test_loads_bytes_is_json_loads(data: bytes) -> None:
    assert outcome(loads, data) == outcome(json.loads, data)


def test_a_str_with_a_lone_surrogate_is_read_by_json() -> None:
    text = '{"a": "\ud800"}'
    assert outcome(loads, text) == outcome(json.loads, text) == ("returned", repr({"a": "\ud800"}))


def test_errors_are_json_decode_errors() -> None:
    with pytest.raises(json.JSONDecodeError) as caught:
        loads(b'{"order_id": A1001}')
    assert (caught.value.msg, caught.value.pos) == ("Expecting value", 13)
    assert type(caught.value) is json.JSONDecodeError  # json's own, not orjson's subclass


@pytest.mark.parametrize(
    ("data", "long"),
    [(b'{"a":1700000000}', False), (b"123456789012345678", False), (b"1234567890123456789", True),
     (b'"id 9876543210987654321"', True), (b"-9223372036854775809", True), (b"12345678901234567\n89", False)],
)  # fmt: skip
def test_long_numbers(data: bytes, long: bool) -> None:
    assert has_long_number(data) is long


def test_checked_text_skips_the_look_for_long_numbers() -> None:
    # Which is why the caller must have looked: orjson reads this as a float.
    assert loads(b"18446744073709551617", checked=True) == 1.8446744073709552e19
    assert loads(b"18446744073709551617") == 18446744073709551617


@pytest.mark.parametrize("stream", [True, False])
async def test_the_client_reads_long_numbers_as_json_does(stream: bool) -> None:
    # The stream looks for long numbers once per network read, across all its events.
    big = 2**70 + 1  # a float cannot hold it
    async with FakeLLMServer() as fake:
        fake.script(Reply("Your order has shipped.", usage=(big, 7)))
        llm = OpenAICompatibleLLM(LLMSettings(base_url=fake.base_url, model="m", stream=stream))
        try:
            request = LLMRequest(messages=[ChatMessage(role="user", content="Hi")], model="m")
            events = [event async for event in llm.stream(request)]
        finally:
            await llm.aclose()
    completion = events[-1]
    assert isinstance(completion, Completion) and completion.usage is not None
    assert completion.usage.input_tokens == big
