"""The exceptions supportbot raises, split by who must act.

::

    SupportbotError
    ├── ConfigError            the operator must fix a file, a flow or a tool signature
    ├── LLMError               the model provider failed (after retries, where retrying made sense)
    │   ├── LLMHTTPError       a non-2xx answer, or an error object inside a 200 stream
    │   ├── LLMTimeout         connect, first byte or between-chunk timeout
    │   ├── LLMConnectionError the connection could not be made or broke
    │   ├── LLMProtocolError   the answer does not follow the chat-completions wire format
    │   └── LLMCircuitOpen     the endpoint failed repeatedly; calls fail at once until a probe succeeds
    ├── StorageError           the database is unreachable or refused a write
    ├── ConnectorError         a channel (Slack, email, widget) failed
    ├── Unavailable            the server takes no new messages now; the sender should send again later
    │   └── Busy               too many model calls are waiting; the sender should retry after ``retry_after``
    └── MessageTooLarge        the sender must send less: a message over ``limits``, refused unstored

``ToolRetry`` is not an error of supportbot: a tool raises it to tell the model what to do
differently ("order ids look like A1001"), and the model gets the message as the tool result.
"""

from __future__ import annotations


class SupportbotError(Exception):
    """Root of every error supportbot raises on purpose."""


class ConfigError(SupportbotError):
    """A configuration file, a flow or a tool definition is wrong; the message says where and how to fix it."""


class LLMError(SupportbotError):
    """The model provider could not produce an answer.

    Attributes:
        retryable: whether the same request may succeed if sent again later.
    """

    retryable: bool = False


class LLMHTTPError(LLMError):
    """The provider answered with an error status or an error object inside the stream."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: object = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retryable = retryable
        self.retry_after = retry_after


class LLMTimeout(LLMError):
    """The provider did not connect, did not start answering, or stalled between chunks in time."""

    retryable = True


class LLMConnectionError(LLMError):
    """The connection to the provider could not be opened or broke before the answer was complete."""

    retryable = True


class LLMProtocolError(LLMError):
    """The provider's answer is not valid chat-completions output (bad SSE, bad JSON, stream cut short)."""


class LLMCircuitOpen(LLMError):
    """The endpoint failed ``llm.resilience.failure_threshold`` times in a row: no request was sent.

    The circuit breaker (``supportbot.llm.breaker``) lets one probe through after ``open_s``
    seconds; the engine answers with its fallback meanwhile.

    Attributes:
        retry_after: seconds until the breaker lets a probe through.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageError(SupportbotError):
    """The database could not be reached or refused an operation."""


class ConnectorError(SupportbotError):
    """A channel connector failed to receive or deliver a message."""


class Unavailable(SupportbotError):
    """The server is shutting down and takes no new messages; the channel should ask the client to retry."""


class Busy(Unavailable):
    """This worker has ``llm.resilience.max_queued_calls`` model calls waiting; the message was refused unstored.

    Channels answer with HTTP 429 and ``Retry-After`` (Slack gets a non-2xx and sends the event
    again; a mail stays unread and is read again).

    Attributes:
        retry_after: seconds the sender should wait before sending again.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MessageTooLarge(SupportbotError):
    """A customer's message is over one of the ``limits``; it was refused before anything was stored.

    The channel tells the sender (an HTTP 413, a WebSocket error frame, a reply in Slack) and
    acknowledges nothing: there is nothing to answer.

    Attributes:
        limit: the setting that refuses it, e.g. ``limits.max_message_chars``.
        allowed: that setting's value.
        actual: how much the message has of what the setting counts.
    """

    def __init__(self, message: str, *, limit: str, allowed: int, actual: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.allowed = allowed
        self.actual = actual


class ToolRetry(Exception):
    """Raised by a tool to send the model a correction instead of a result.

    Example::

        raise ToolRetry("order ids look like A1001")
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TurnTaken(SupportbotError):
    """The message's turn was taken by another worker (its inbox row is no longer ``received``): this worker
    lost the conversation's lane while it prepared the turn, and stores and answers nothing."""
