"""Turning a provider's failures into supportbot errors that say what happened and what to do.

Error bodies come as ``{"error": {...}}``, as Gemini's ``[{"error": {...}}]``, or as plain text
from a proxy. A gateway's ``error.metadata.raw`` (OpenRouter: the upstream provider's own error,
with ``metadata.provider_name``) is added to the message, in HTTP errors and in errors inside a stream.
Retryability follows openai-python (408, 409, 429 except ``insufficient_quota``,
5xx; ``x-should-retry`` overrides), and the retry delay comes from ``retry-after-ms``,
``Retry-After`` or Gemini's ``details[].retryDelay``.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any, NoReturn

from supportbot.errors import LLMConnectionError, LLMError, LLMHTTPError, LLMProtocolError, LLMTimeout

_RETRY_STATUSES = frozenset({408, 409, 429})
_RETRY_GOOGLE_STATUSES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED"})
_RAW_LIMIT = 1000  # characters of a provider's raw error kept in the message
_TIMEOUT_WHAT = {
    "connect": "could not connect",
    "first_byte": "did not start answering",
    "between_chunks": "stalled: no data arrived",
    "total": "did not finish its answer",
}


def http_error(
    url: str, status: int, reason: str | None, headers: Mapping[str, str], body: bytes, *, key: str, model: str
) -> LLMHTTPError:
    """The error for a non-2xx answer.

    Args:
        url: the endpoint called.
        status, reason: the HTTP status and its phrase.
        headers: the response headers.
        body: the response body.
        key: the API key in use, removed from the message should the provider echo it.
        model: the configured model, named in the hint of a 404.
    """
    parsed, error = _error_object(body)
    message = _error_message(error, body)
    code = error.get("code") if error else None
    kind = error.get("type") if error else None
    retryable = status in _RETRY_STATUSES or status >= 500
    quota = "insufficient_quota" in (code, kind)
    if quota:
        retryable = False
    should_retry = headers.get("x-should-retry")
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    retry_after = _retry_after_header(headers)
    if retry_after is None and error:
        retry_after = _google_retry_delay(error)
    phrase = f" {reason}" if reason else ""
    text = f"LLM endpoint {url} answered {status}{phrase}: {message!r}. {_hint(status, message, quota, key, model)}"
    return LLMHTTPError(_redact(text, key), status=status, body=parsed, retryable=retryable, retry_after=retry_after)


def stream_error(url: str, data: bytes, parsed: dict[str, Any] | None, *, key: str) -> LLMHTTPError:
    """The error for ``data: {"error": ...}`` or ``event: error`` inside a 200 stream.

    ``status`` is the error's own code when it looks like an HTTP status, else 200.
    """
    if parsed is None:
        parsed_any, error = _error_object(data)
    else:
        parsed_any, error = parsed, _as_error(parsed)
    message = _error_message(error, data)
    code = error.get("code") if error else None
    google_status = error.get("status") if error else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 200
    retryable = status in _RETRY_STATUSES or status >= 500 or google_status in _RETRY_GOOGLE_STATUSES
    text = (
        f"LLM endpoint {url} reported an error in the middle of its answer: {message!r}. "
        "The provider failed while answering; try again later."
    )
    return LLMHTTPError(_redact(text, key), status=status, body=parsed_any, retryable=retryable)


def timeout_error(url: str, which: str, seconds: float) -> LLMTimeout:
    """The error for a timeout: ``which`` is connect, first_byte, between_chunks or total."""
    return LLMTimeout(
        f"LLM endpoint {url} {_TIMEOUT_WHAT[which]} within {seconds:g} s (llm.timeouts.{which}_s). "
        f"Check that the endpoint is up, or raise llm.timeouts.{which}_s."
    )


def connection_error(url: str, exc: BaseException) -> LLMConnectionError:
    """The error for a connection that could not be made or broke before the answer began."""
    return LLMConnectionError(
        f"LLM endpoint {url} could not be reached or dropped the connection: {exc}. Check llm.base_url and the network."
    )


def cut_error(url: str) -> LLMProtocolError:
    """The error for a stream that ended without a finish_reason; retryable while no text was handed on."""
    error = LLMProtocolError(
        f"LLM endpoint {url}: stream ended before the model finished (no finish_reason). "
        "The connection was dropped by the provider or a proxy; try again."
    )
    error.retryable = True  # a dropped connection is transient; the caller still never retries after text
    return error


def not_json_error(url: str, data: bytes, what: str) -> LLMProtocolError:
    """The error for an answer that is not chat-completions JSON."""
    return LLMProtocolError(
        f"LLM endpoint {url} sent {what}: {data[:200]!r}. "
        "Check that llm.base_url points to an OpenAI-compatible chat-completions API."
    )


def raise_final(exc: LLMError, attempt: int) -> NoReturn:
    """Raises ``exc``, saying how many attempts were made when there were several."""
    if attempt == 0:
        raise exc
    text = f"{exc} (gave up after {attempt + 1} attempts)"
    final: LLMError
    if isinstance(exc, LLMHTTPError):
        final = LLMHTTPError(
            text, status=exc.status, body=exc.body, retryable=exc.retryable, retry_after=exc.retry_after
        )
    else:
        final = type(exc)(text)
        final.retryable = exc.retryable
    raise final from exc


def _hint(status: int, message: str, quota: bool, key: str, model: str) -> str:
    if status == 401:
        if not key:
            return "No API key is set: set llm.api_key or SUPPORTBOT_LLM_API_KEY."
        return "Check llm.api_key / SUPPORTBOT_LLM_API_KEY."
    if status == 403:
        return "The key may not use this model or endpoint; check llm.api_key and llm.model."
    if status == 404:
        return f"Check llm.base_url (the part before /chat/completions) and llm.model ({model!r})."
    if quota:
        return "The account has no quota left; add credit or use another llm.api_key."
    if status == 429:
        return "The provider is rate limiting; lower the load or ask for a higher limit."
    if status == 400 and ("thought_signature" in message or "reasoning details to be preserved" in message):
        return "supportbot did not send Gemini's thought signature back; please report this bug."
    if status == 400 and "reasoning_content" in message:
        return "supportbot did not send the model's reasoning_content back; please report this bug."
    if status == 400:
        return "The provider refused the request; check llm.model and the flow's model settings."
    if status >= 500:
        return "The provider failed; try again later."
    return "Check the llm section of the configuration."


def _redact(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


def _as_error(parsed: object) -> dict[str, Any] | None:
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]  # Gemini wraps error bodies in an array
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            return error
        if isinstance(error, str):
            return {"message": error}
    return None


def _error_object(body: bytes) -> tuple[object, dict[str, Any] | None]:
    try:
        parsed: object = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:300], None
    return parsed, _as_error(parsed)


def _error_message(error: Mapping[str, Any] | None, body: bytes) -> str:
    if error and error.get("message"):
        return str(error["message"]) + _provider_reason(error)
    return body.decode("utf-8", "replace")[:300].strip() or "(empty body)"


def _provider_reason(error: Mapping[str, Any]) -> str:
    """The upstream provider's own words that a gateway passed on (OpenRouter: ``error.metadata.raw``).

    OpenRouter's message is often only "Provider returned error"; the reason is in ``metadata``.
    """
    metadata = error.get("metadata")
    if not isinstance(metadata, dict):
        return ""
    raw = metadata.get("raw")
    if raw is None or raw == "":
        return ""
    if not isinstance(raw, str):
        raw = json.dumps(raw, ensure_ascii=False)
    if len(raw) > _RAW_LIMIT:
        raw = raw[:_RAW_LIMIT] + "..."
    provider = metadata.get("provider_name")
    who = f"provider {provider}" if isinstance(provider, str) and provider else "the provider"
    return f" ({who} said: {raw})"


def _retry_after_header(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


def _google_retry_delay(error: Mapping[str, Any]) -> float | None:
    details = error.get("details")
    if not isinstance(details, list):
        return None
    for detail in details:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None
