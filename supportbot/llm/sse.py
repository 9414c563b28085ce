"""An incremental Server-Sent Events decoder, as the WHATWG spec and openai-python read streams.

Bytes go in as the network delivers them (a chunk may end in the middle of a line, or in the
middle of a UTF-8 character); complete events come out. Lines end with ``\\n``, ``\\r\\n`` or
``\\r``; ``:`` lines are keep-alive comments; several ``data:`` lines of one event are joined
with ``\\n``; ``event:`` is kept, ``id:`` and ``retry:`` are accepted and ignored.

The decoder is on the hot path of every model response, so it works on whole byte strings:
``bytes.splitlines`` (which, unlike ``str.splitlines``, only splits on ``\\n``, ``\\r`` and
``\\r\\n``) does the line splitting in C, and data stays ``bytes`` because ``json.loads``
takes UTF-8 bytes directly. Substrings are looked for with ``bytes.find``, not ``in``: ``b"x" in data``
first tries ``b"x"`` as an integer, and raises, formats and clears a TypeError before it searches.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "SSEEvent"]


class SSEEvent(NamedTuple):
    """One dispatched event.

    A NamedTuple rather than a frozen dataclass: one is made per streamed token and a tuple
    is several times cheaper to build.

    Attributes:
        event: the ``event:`` field, ``"message"`` when the event had none.
        data: the ``data:`` lines joined with ``\\n``, as raw UTF-8 bytes.
    """

    event: str
    data: bytes


_DATA = b"data:"
_new = tuple.__new__
_COLON = 58  # ord(":")
_SPACE = 32  # ord(" ")


class SSEDecoder:
    """Turns a byte stream into SSE events; feed it chunks, then call ``close()`` at EOF.

    Example::

        decoder = SSEDecoder()
        async for chunk in response.content.iter_any():
            for event in decoder.feed(chunk):
                ...
        for event in decoder.close():
            ...
    """

    __slots__ = ("_data", "_event", "_partial", "_skip_lf")

    def __init__(self) -> None:
        self._partial = b""  # an unfinished line carried over to the next chunk
        self._skip_lf = False  # the last chunk ended in "\r": a leading "\n" belongs to it
        self._data: list[bytes] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decodes one network chunk.

        Args:
            chunk: the next bytes of the stream, cut anywhere.

        Returns:
            The events completed by this chunk, in order (often none or one).
        """
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        elif not (self._partial or self._data or self._event) and chunk[-2:] == b"\n\n" and chunk.find(b"\r") < 0:
            return self._blocks(chunk)
        if self._partial:
            chunk = self._partial + chunk
            self._partial = b""
        if not chunk:
            return []
        lines = chunk.splitlines()
        last = chunk[-1]
        if last == 13:  # "\r": maybe the first half of "\r\n" split across chunks
            self._skip_lf = True
        elif last != 10:  # no line ending: the last line continues in the next chunk
            self._partial = lines.pop()
        return self._lines(lines)

    def _blocks(self, chunk: bytes) -> list[SSEEvent]:
        """The usual network read: whole events, ``\\n`` line endings, nothing carried over.

        Most events are a single ``data:`` line, so the chunk is cut at blank lines and such an
        event is taken whole; any other event goes through ``_lines`` like a cut-up chunk would.
        """
        events: list[SSEEvent] = []
        for block in chunk.split(b"\n\n"):
            if block.startswith(_DATA) and block.find(b"\n") < 0:
                value = block[5:]
                # tuple.__new__ skips the NamedTuple's Python-level __new__: one event per token.
                events.append(_new(SSEEvent, ("message", value[1:] if value[:1] == b" " else value)))
            elif block:
                events.extend(self._lines([*block.split(b"\n"), b""]))
        return events

    def close(self) -> list[SSEEvent]:
        """Ends the stream.

        The spec drops an event not followed by a blank line; servers that end with
        ``data: [DONE]`` and no newline are common enough that we dispatch it instead.

        Returns:
            The last event, if one was pending.
        """
        lines = [self._partial, b""] if self._partial else [b""]
        self._partial = b""
        self._skip_lf = False
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(SSEEvent(self._event or "message", data[0] if len(data) == 1 else b"\n".join(data)))
                    data.clear()
                elif self._event == "error":
                    # An error event without data still means the stream failed.
                    events.append(SSEEvent("error", b""))
                self._event = ""
            elif line.startswith(_DATA):
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
            elif line[0] == _COLON:
                continue
            else:
                name, sep, value = line.partition(b":")
                if sep and value[:1] == b" ":
                    value = value[1:]
                if name == b"event":
                    self._event = value.decode("utf-8", "replace")
                elif name == b"data":  # "data" alone on its line: an empty data line
                    data.append(value)
                # "id" and "retry" steer EventSource reconnection, which a chat completion
                # never does; unknown fields are ignored as the spec says.
        return events
