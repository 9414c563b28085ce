"""Logging as the ``logging`` section of the config asks: level, text or JSON lines, personal data redacted.

Everything supportbot logs goes through the ``supportbot`` logger tree. With ``redact_pii``
(the default) email addresses, phone numbers and card numbers in log messages are replaced by
placeholders; the database keeps the transcript unredacted for review.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from supportbot.config import LoggingSettings

# The lookbehind keeps it linear: a long run of "a.a.a…" without "@" is not tried from every position.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d ().-]{7,}\d\b")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _phone(match: re.Match[str]) -> str:
    found = match.group()
    # Dates, times and IPv4 addresses look like digit runs too; a phone number has at least 9 digits.
    if _DATE.match(found) or _IPV4.fullmatch(found) or sum(c.isdigit() for c in found) < 9:
        return found
    return "[phone]"


def redact(text: str) -> str:
    """``text`` with emails, card numbers and phone numbers replaced by ``[email]``, ``[card]``, ``[phone]``."""
    return _PHONE.sub(_phone, _CARD.sub("[card]", _EMAIL.sub("[email]", text)))


def _redact_value(value: Any) -> Any:
    """``value`` with every string in it redacted, inside lists, tuples and dicts too (copies; the original is kept)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Rewrites each record's message and its extras (strings, also those nested in lists and dicts) redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        # An exception's text quotes what it was given (an order system refusing an email address):
        # format it here, redacted; formatters print ``exc_text`` when it is set.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str | list | tuple | dict):
                setattr(record, key, _redact_value(value))
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        exception = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else None)
        if exception:
            entry["exception"] = exception
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


_installed: logging.Handler | None = None


def configure_logging(settings: LoggingSettings, *, stream: TextIO | None = None) -> logging.Handler:
    """Send the ``supportbot`` loggers to stderr (or ``stream``) as the settings say; returns the handler.

    Calling it again replaces the handler it installed before.
    """
    global _installed
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if settings.format == "json" else text)
    if settings.redact_pii:
        handler.addFilter(RedactingFilter())
    logger = logging.getLogger("supportbot")
    if _installed is not None:
        logger.removeHandler(_installed)
    logger.addHandler(handler)
    logger.setLevel(settings.level)
    logger.propagate = False
    _installed = handler
    return handler
