"""JSON on the hot path of a turn: orjson where it gives exactly what ``json`` gives, ``json`` everywhere else.

Every function here returns what the standard library would, byte for byte and value for value;
orjson only makes it cheaper. Where the two differ, the standard library decides:

- orjson writes NaN and Infinity as ``null``, some floats in another form (``1e-05`` as
  ``0.00001``), Enums and UUIDs that ``json`` refuses, and raises on ints beyond 64 bits,
  non-str keys and lone surrogates. ``dumps_*`` hand orjson only values that ``is_plain``
  accepts, and anything orjson still refuses to ``json``.
- orjson rejects ``NaN``/``Infinity`` literals, lone surrogate escapes, a BOM and other
  encodings, and reads integers beyond 64 bits as floats. ``loads`` hands ``json`` every text
  orjson rejects (so its errors are ``json``'s own) and every text with a run of 19 digits.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps_bytes", "dumps_compact", "has_long_number", "is_plain", "loads"]

# One encoder for every call: ``json.dumps`` with options builds a new one per call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# orjson raises on subclasses, dataclasses and datetimes (it would write them its own way), so json decides.
_STRICT = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
_INT_MIN, _INT_END = -(2**63), 2**64  # orjson writes ints in this range; it reads them as ints too
# An integer orjson reads as a float has at least 19 digits; digits become "0" to find such a run in C.
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def is_plain(value: Any) -> bool:
    """Whether orjson writes ``value`` exactly as ``json.dumps`` does.

    True for dicts with str keys, lists, tuples, strs, bools, None, ints within 64 bits and floats
    that both write without an exponent (zero, and 1e-4 <= abs(x) < 1e16: shortest round-trip
    digits either way); exact types only, so subclasses, Enums, NaN and Infinity are not plain.
    A str with a lone surrogate is plain here; orjson raises on it, and the callers fall back.
    """
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not is_plain(item):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            if not is_plain(item):
                return False
        return True
    if kind is int:
        whole: int = value
        return _INT_MIN <= whole < _INT_END
    if kind is float:
        number: float = value
        return number == 0.0 or 1e-4 <= abs(number) < 1e16  # False for NaN
    return False


def _plain(value: Any) -> bool:
    try:
        return is_plain(value)
    except RecursionError:  # nested too deep for orjson anyway, or a cycle: json says which
        return False


def dumps_bytes(value: Any, *, checked: bool = False) -> bytes:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()``.

    Args:
        value: any value ``json.dumps`` takes.
        checked: the caller knows that ``is_plain(value)`` holds, from the value's shape (walking
            a large value costs about as much as ``json`` itself). Subclasses, dataclasses and
            datetimes still go to ``json``; floats, Enums and UUIDs would not: check those.

    Raises:
        TypeError, ValueError: what ``json.dumps`` raises.
        UnicodeEncodeError: the value has a lone surrogate (``json`` writes it, UTF-8 cannot).
    """
    if checked or _plain(value):
        try:
            return orjson.dumps(value, option=_STRICT)
        except orjson.JSONEncodeError:
            pass  # a lone surrogate, a type that was not expected, nesting deeper than orjson goes
    return _encode(value).encode()


def dumps_compact(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":"))``, lone surrogates and all.

    Raises:
        TypeError, ValueError: what ``json.dumps`` raises.
    """
    if _plain(value):
        try:
            return orjson.dumps(value, option=_STRICT).decode()
        except orjson.JSONEncodeError:
            pass
    return _encode(value)


def has_long_number(data: bytes) -> bool:
    """Whether ``data`` has a run of 19 digits: an integer there may lie beyond 64 bits, which orjson reads as a float.

    One look at several texts joined by a non-digit costs less than one look at each.
    """
    # ``find`` rather than ``in``, which first raises (and clears) a TypeError trying the bytes as an integer.
    return data.translate(_ZEROS).find(_LONG_NUMBER) >= 0


def loads(data: bytes | str, *, checked: bool = False) -> Any:
    """``json.loads(data)``: the same value, or the same exception.

    Args:
        data: the JSON text.
        checked: the caller knows that ``has_long_number(data)`` is false.

    Raises:
        json.JSONDecodeError: the text is not JSON.
        UnicodeDecodeError: ``data`` is bytes in no encoding ``json`` detects.
    """
    if isinstance(data, str):
        try:
            raw = data.encode()
        except UnicodeEncodeError:  # a lone surrogate: orjson refuses it, json takes it
            return json.loads(data)
    else:
        raw = data
    if checked or raw.translate(_ZEROS).find(_LONG_NUMBER) < 0:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # json's error, or json's reading of NaN, a lone surrogate, a BOM, UTF-16...
    return json.loads(data)
