"""An inbound mail, parsed for the connector: headers, text for the model, images. Pure: no I/O.

``parse_mail`` never raises, whatever the bytes: a malformed, mis-labelled or truncated mail gives
whatever could be read (missing headers as None or empty). The receiver cuts mails over its size cap
and says so with ``truncated=True``. The text for the model is the visible body (HTML through
``connectors.email.html``) without quoted history, signatures and invisible characters; the whole
body is kept in ``full_text`` for review.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.header import decode_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import TypeVar

from connectors.email.html import FORWARD_MARKER, FORWARD_SUBJECT, html_to_texts
from supportbot.messages import ImagePart

__all__ = ["ParsedMail", "clean_text", "parse_mail", "strip_quoted"]

SHORTENED = "[… shortened]"
_MAX_PARTS = 500
_MAX_DEPTH = 20
_MAX_HTML_CHARS = 1_000_000  # HTMLParser reads 1-2 MB/s of dense markup; the text of more is past any cap
_MAX_ID_CHARS = 250
_MAX_NOTES = 20
_TOO_MANY = "further parts of the mail were not read: it has too many"
_SIGNATURES = frozenset({"application/pgp-signature", "application/pkcs7-signature", "application/x-pkcs7-signature"})

_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True, slots=True)
class ParsedMail:
    """What the connector needs of one inbound mail.

    Attributes:
        message_id: the Message-ID in ``<...>`` form; None if missing or invalid.
        in_reply_to: the ids of In-Reply-To, ``<...>`` form.
        references: the ids of References in order (the first and the last 20 of a longer chain).
        subject: decoded, whitespace collapsed, "" if none.
        from_address: the one address of From (domain lower-cased); None if From has none or several.
        from_name: From's display name, if any.
        recipients: the addresses of To, Cc, Delivered-To and X-Original-To, lower-cased.
        date: the Date header, timezone-aware; None if missing or invalid.
        text: the body for the model: plain text without quoted history, signature and invisible
            characters, at most ``max_text_chars`` (ending in ``[… shortened]`` when cut).
        full_text: the whole body as text, for review (capped higher).
        images: PNG, JPEG, GIF and WebP parts as ``data:`` URLs.
        skipped_attachments: a sentence for each part left out, to tell the model.
        truncated: the raw mail was cut by the receiver, or a text was capped.
        message: the parsed mail, for the checks made elsewhere (loops, DMARC).
    """

    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    from_address: str | None
    from_name: str | None
    recipients: tuple[str, ...]
    date: datetime | None
    text: str
    full_text: str
    images: tuple[ImagePart, ...]
    skipped_attachments: tuple[str, ...]
    truncated: bool
    message: EmailMessage

    @property
    def sender(self) -> str | None:
        """``from_address`` all lower-case, the form to compare and to key on."""
        return self.from_address.lower() if self.from_address else None


# -- text -------------------------------------------------------------------------------------------

# Invisible or deceptive: tag characters (ASCII smuggling), variation selectors (emoji smuggling),
# zero-width characters, bidi controls; and C0/C1 controls other than tab and newline.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u3164\uffa0\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufe00-\ufe0f\ufeff\ufff9-\ufffb\U000e0000-\U000e007f\U000e0100-\U000e01ef\ud800-\udfff]"
)


def clean_text(text: str) -> str:
    """``text`` with CRLF and CR as LF, invisible and control characters removed, no trailing spaces."""
    text = _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _cap(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return text[: max(0, limit - len(SHORTENED) - 1)].rstrip() + "\n" + SHORTENED, True


def _unsurrogate(text: str) -> str:
    """Raw 8-bit bytes in a header (kept by the parser as surrogates) read as UTF-8, as RFC 6532 has them."""
    if not re.search("[\ud800-\udfff]", text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return re.sub("[\ud800-\udfff]", "\ufffd", text)


# Labels mail software means differently from Python's codecs (WHATWG's Encoding Standard).
_CHARSETS = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "iso8859-1": "cp1252",
             "iso-8859-9": "cp1254", "gb2312": "gb18030", "gbk": "gb18030", "ks_c_5601-1987": "cp949",
             "tis-620": "cp874", "shift_jis": "cp932", "x-sjis": "cp932"}  # fmt: skip
_UNLABELLED = frozenset({"", "us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown", "default", "8bit"})


def decode_bytes(data: bytes, charset: str | None) -> str:
    """``data`` in its declared charset; unknown or wrong charsets as UTF-8, else Windows-1252, never raising."""
    label = (charset or "").strip().strip("\"'").lower()
    if label not in _UNLABELLED:
        try:
            return data.decode(_CHARSETS.get(label, label), "replace")
        except (LookupError, ValueError, TypeError):  # unknown, or not a text codec ("base64")
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _decode_words(value: str) -> str:
    """A header value with its RFC 2047 encoded words decoded."""
    try:
        chunks = decode_header(value)
    except Exception:  # a header we cannot decode is read as it is
        return value
    parts = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            parts.append(chunk)
        elif charset is None:
            parts.append(chunk.decode("raw-unicode-escape", "replace"))
        else:
            parts.append(decode_bytes(chunk, charset))
    return "".join(parts)


def _one_line(text: str, limit: int) -> str:
    return " ".join(_INVISIBLE.sub("", text).split())[:limit]


# -- quoted history ---------------------------------------------------------------------------------

_REPLY_HEADER = re.compile(
    r"^(?:On\s.+\swrote|Am\s.+\sschrieb.*|Le\s.+\sa\s+écrit|El\s.+\sescribió|Op\s.+\sschreef.*|Il\s.+\sha\s+scritto"
    r"|Em\s.+\sescreveu|Den\s.+\sskrev.*)\s*:$",
    re.IGNORECASE,
)
_ORIGINAL = re.compile(
    r"^-{3,}\s*(?:original message|ursprüngliche nachricht|message d'origine|mensaje original|oorspronkelijk bericht"
    r"|messaggio originale|mensagem original)\s*-{3,}$",
    re.IGNORECASE,
)
_FROM = re.compile(r"^\*?(?:from|von|de|van|da|från|fra)\s*:\*?\s*\S", re.IGNORECASE)
_SENT = re.compile(r"^\*?(?:sent|date|gesendet|datum|envoyé|enviado|fecha|verzonden|inviato|data|skickat|sendt)\s*:",
                   re.IGNORECASE)  # fmt: skip
_TO = re.compile(r"^\*?(?:to|subject|an|betreff|à|objet|para|asunto|aan|onderwerp|a|oggetto|assunto|till|ämne|til|emne)"
                 r"\s*:", re.IGNORECASE)  # fmt: skip
_MOBILE = re.compile(
    r"^(?:sent from my .{1,40}|sent from (?:mail|outlook|yahoo mail|samsung).{0,40}|get outlook for (?:ios|android)"
    r".{0,20}|von meinem .{1,40} gesendet|envoyé de mon .{1,40}|enviado desde mi .{1,40}|verstuurd vanaf mijn .{1,40}"
    r"|inviato da .{1,40}|sent with proton ?mail.{0,40})$",
    re.IGNORECASE,
)


def _header_block(lines: list[str], i: int) -> int | None:
    """The end of an Outlook-style header block (From, then Sent/Date and To/Subject) starting at line ``i``."""
    if not _FROM.match(lines[i].strip()):
        return None
    following = [n for n in range(i + 1, min(len(lines), i + 10)) if lines[n].strip()][:5]
    if any(_SENT.match(lines[n].strip()) for n in following) and any(_TO.match(lines[n].strip()) for n in following):
        return max(n for n in following if _SENT.match(lines[n].strip()) or _TO.match(lines[n].strip())) + 1
    return None


def _reply_header(lines: list[str], i: int) -> bool:
    """``On … wrote:`` and its translations, also folded over two lines as Gmail does."""
    line = lines[i].strip()
    candidates = [line] + ([f"{line} {lines[i + 1].strip()}"] if i + 1 < len(lines) and len(line) < 200 else [])
    return any(_REPLY_HEADER.match(c) and re.search(r"\d", c) for c in candidates)


def _strip(lines: list[str], depth: int) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if FORWARD_MARKER.match(line) and depth < 5:  # a forwarded message is content: keep its header and text
            first = next((n for n in range(i + 1, len(lines)) if lines[n].strip()), len(lines))
            last = min(len(lines), first + 12)  # its header lines end at a blank line
            end = next((n for n in range(first, last) if not lines[n].strip()), last)
            return [*out, *lines[i:end], "", *_strip(lines[end:], depth + 1)]
        start = i
        if _UNDERSCORES.match(line) or _ORIGINAL.match(line):
            i = next((n for n in range(i + 1, min(len(lines), i + 3)) if lines[n].strip()), i)
        block = _header_block(lines, i)
        if block is not None or _ORIGINAL.match(line):
            block = block or start + 1
            if depth < 5 and any(FORWARD_SUBJECT.match(header) for header in lines[start:block]):
                return [*out, *lines[start:block], "", *_strip(lines[block:], depth + 1)]
            break
        i = start
        if _reply_header(lines, i):
            break
        if lines[i] in ("-- ", "--") or _MOBILE.match(line):  # a signature: only a forwarded message may follow
            i = next((n for n in range(i + 1, len(lines)) if FORWARD_MARKER.match(lines[n].strip())), len(lines))
            continue
        if not line.startswith(">"):
            out.append(lines[i])
        i += 1
    return out


_UNDERSCORES = re.compile(r"^_{10,}$")


def strip_quoted(text: str) -> str:
    """The author's own part of a plain-text mail: no quoted history, no signature.

    Cuts at a reply header (``On … wrote:`` in English, German, French, Spanish, Dutch, Italian,
    Portuguese, Swedish), ``-----Original Message-----``, an Outlook ``From:``/``Sent:``/``To:`` block,
    the signature delimiter ``-- `` or a mobile signature; drops ``>`` lines. A forwarded message
    stays (its own history is stripped). When nothing would be left, ``text`` is returned unchanged.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    own = re.sub(r"\n{3,}", "\n\n", "\n".join(_strip(lines, 0))).strip()
    return own if own else text


# -- headers ----------------------------------------------------------------------------------------


def _safe(call: Callable[[], _T], default: _T) -> _T:
    try:
        return call()
    except Exception:  # the stdlib parses some garbage headers by raising
        return default


def _raw(message: Message, name: str) -> list[str]:
    """The values of header ``name`` as the mail has them (unfolded; raw UTF-8 decoded)."""
    try:
        values = [str(v) for k, v in message.raw_items() if k.lower() == name]
    except Exception:  # a header the parser could not even store
        return []
    return [_unsurrogate(re.sub(r"\r?\n(?=[ \t])|\r|\n", "", value)) for value in values]


def _msg_ids(values: list[str]) -> list[str]:
    ids: list[str] = []
    for value in values:
        for _ in range(5):  # comments, possibly nested
            value, count = re.subn(r"\([^()]*\)", " ", value)
            if not count:
                break
        found = [f"<{''.join(inner.split())}>" for inner in re.findall(r"<([^<>]*)>", value)]
        if not found:  # tolerate ids without their brackets
            found = [f"<{token}>" for token in re.split(r"[\s,;]+", value) if "@" in token.strip("<>")]
        for msg_id in found:
            if len(msg_id) <= _MAX_ID_CHARS and re.fullmatch(r"<[^\s<>\x00-\x1f\x7f]+>", msg_id) and msg_id not in ids:
                ids.append(msg_id)
    return ids


_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+")


def _addresses(values: list[str]) -> list[tuple[str, str]]:
    """``(display name, addr-spec)`` of each valid address in the values, domain lower-cased."""
    found: list[tuple[str, str]] = []
    try:
        pairs = getaddresses(values)
    except Exception:  # getaddresses raises on some garbage
        return found
    for name, addr in pairs:
        if len(addr) <= 254 and _ADDRESS.fullmatch(addr):
            local, _, domain = addr.rpartition("@")
            found.append((name, f"{local}@{domain.lower()}"))
    return found


def _sender(message: Message) -> tuple[str | None, str | None]:
    """From's one address and its name. The header parser of ``policy.default`` must read the same
    address: where two parsers disagree (CVE-2023-27043's tricks), nobody can say who sent it."""
    found = _addresses(_raw(message, "from"))
    if len(found) != 1:
        return None, None
    name, address = found[0]
    try:
        others = [a.addr_spec.lower() for h in message.get_all("from") or () for a in getattr(h, "addresses", ())]
    except Exception:  # policy.default raises on some garbage From headers
        return None, None
    if others != [address.lower()]:
        return None, None
    return address, _one_line(_decode_words(name), 200) or None


def _date(message: Message) -> datetime | None:
    values = _raw(message, "date")
    if not values:
        return None
    date = _safe(lambda: parsedate_to_datetime(values[0]), None)
    return date.replace(tzinfo=UTC) if date is not None and date.tzinfo is None else date


# -- body -------------------------------------------------------------------------------------------


def image_kind(data: bytes) -> str | None:
    """``png``, ``jpeg``, ``gif`` or ``webp`` from the first bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _complete(data: bytes, kind: str) -> bool:
    """Whether an image ends as its format ends (checked when the mail was cut)."""
    if kind == "png":
        return b"IEND" in data[-32:]
    if kind == "jpeg":
        return b"\xff\xd9" in data[-1024:]
    if kind == "gif":
        return data.rstrip(b"\x00").endswith(b";")
    return int.from_bytes(data[4:8], "little") + 8 <= len(data)


@dataclass(kw_only=True, slots=True)
class _Body:
    max_images: int
    max_image_bytes: int
    max_chars: int
    prefer_html: bool
    cut: bool  # the mail was truncated by the receiver
    segments: list[list[tuple[str, str]]] = field(default_factory=lambda: [[]])  # (full, own) per text part
    images: list[ImagePart] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    parts: int = 0
    truncated: bool = False

    def walk(self, part: Message, depth: int = 0, *, text: bool = True) -> None:
        self.parts += 1
        if self.parts > _MAX_PARTS or depth > _MAX_DEPTH:
            if _TOO_MANY not in self.skipped:
                self.skipped.append(_TOO_MANY)
            return
        ctype = _safe(part.get_content_type, "text/plain")
        payload = _safe(lambda: part.get_payload(), None)
        if isinstance(payload, list):
            children = [child for child in payload if isinstance(child, Message)]
            if ctype.startswith("message/"):  # a forwarded mail, its text as text
                for child in children:
                    self.forwarded(child, depth + 1) if text else self.walk(child, depth + 1, text=False)
                return
            chosen = self.choose(children) if ctype == "multipart/alternative" else None
            for child in children:
                self.walk(child, depth + 1, text=text and (chosen is None or child is chosen))
            return
        attachment = _safe(part.get_content_disposition, None) == "attachment"
        if ctype.startswith("image/") or ctype == "application/octet-stream":  # the content decides, not the label
            self.image(part, ctype)
        elif ctype in ("text/plain", "text/html") or ctype.startswith(("multipart/", "message/")):  # unparsed
            if attachment:
                self.skip(part, ctype, "only the mail's text and images are read")
            elif text:
                self.text(part, ctype)
        elif ctype not in _SIGNATURES:
            self.skip(part, ctype, "it is not a PNG, JPEG, GIF or WebP image")

    def choose(self, children: list[Message]) -> Message | None:
        """The alternative to read: the first non-empty text/plain (or the last HTML with ``prefer_html``)."""
        types = [_safe(child.get_content_type, "") for child in children]
        plain = [c for c, t in zip(children, types, strict=True) if t == "text/plain" and _decoded(c).strip()]
        rich = [c for c, t in zip(children, types, strict=True) if t == "text/html" or t.startswith("multipart/")]
        order = [*rich[::-1], *plain] if self.prefer_html else [*plain, *rich[::-1]]
        return order[0] if order else (children[0] if children else None)

    def text(self, part: Message, ctype: str) -> None:
        body = _decoded(part)
        limit = _MAX_HTML_CHARS if ctype == "text/html" else self.max_chars
        cut = len(body) > limit
        full, own = html_to_texts(body[:limit]) if ctype == "text/html" else (body[:limit], body[:limit])
        if cut:
            self.truncated = True
            full, own = f"{full}\n{SHORTENED}", f"{own}\n{SHORTENED}"
        self.segments[-1].append((full, own))

    def forwarded(self, message: Message, depth: int) -> None:
        lines = ["---------- Forwarded message ----------"]
        for name in ("From", "Date", "Subject", "To"):
            values = _raw(message, name.lower())
            if values:
                lines.append(f"{name}: {_one_line(_decode_words(values[0]), 500)}")
        header = "\n".join(lines) + "\n"
        self.segments.append([(header, header)])
        self.walk(message, depth)
        self.segments.append([])

    def image(self, part: Message, ctype: str) -> None:
        if len(self.images) >= self.max_images:
            self.skip(part, ctype, f"at most {self.max_images} images are read per mail")
            return
        encoded: object = _safe(lambda: part.get_payload(), None)
        size = len(encoded) * 3 // 4 if isinstance(encoded, str) else 0
        if size > self.max_image_bytes * 1.05 + 1024:  # not worth decoding: base64 is 4/3 of the bytes (+ line breaks)
            self.skip(part, ctype, f"it is larger than {self.max_image_bytes:,} bytes")
            return
        data = _payload(part)
        kind = image_kind(data)
        if len(data) > self.max_image_bytes:
            self.skip(part, ctype, f"it is larger than {self.max_image_bytes:,} bytes")
        elif kind is None:
            self.skip(part, ctype, "it is not a PNG, JPEG, GIF or WebP image")
        elif self.cut and not _complete(data, kind):
            self.skip(part, ctype, "it is incomplete (the mail was too large)")
        else:
            self.images.append(ImagePart(url=f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"))

    def skip(self, part: Message, ctype: str, reason: str) -> None:
        name = _one_line(_unsurrogate(_safe(part.get_filename, None) or ""), 100)
        label = f"{name} ({ctype})" if name else ctype
        self.skipped.append(f"{label} was not included: {reason}")


def _payload(part: Message) -> bytes:
    """The part's content, transfer encoding undone (best effort on bad base64 or quoted-printable)."""
    data = _safe(lambda: part.get_payload(decode=True), None)
    return data if isinstance(data, bytes) else b""


def _decoded(part: Message) -> str:
    return decode_bytes(_payload(part), _safe(part.get_content_charset, None))


def _parse(raw: bytes) -> EmailMessage:
    for headers_only in (False, True):
        try:
            parsed = BytesParser(policy=policy.default).parsebytes(raw, headersonly=headers_only)
        except Exception:  # deeply nested garbage can exhaust the parser; try less
            continue
        if isinstance(parsed, EmailMessage):
            return parsed
    return EmailMessage()


def parse_mail(
    raw: bytes,
    *,
    max_text_chars: int = 8000,
    max_images: int = 4,
    max_image_bytes: int = 5_000_000,
    truncated: bool = False,
    max_full_text_chars: int = 200_000,
    prefer_html: bool = False,
) -> ParsedMail:
    """Parse a raw mail (RFC 5322 bytes); never raises.

    Args:
        raw: the mail as received (possibly cut at the receiver's size cap).
        max_text_chars: cap of ``text``, the model's input.
        max_images: images taken, in the mail's order; more are listed in ``skipped_attachments``.
        max_image_bytes: cap of one image, decoded.
        truncated: the receiver cut the mail; the result says so, and a cut image is left out.
        max_full_text_chars: cap of ``full_text``.
        prefer_html: read the HTML of a ``multipart/alternative`` rather than its plain text (the one
            a reader sees in most clients, with hidden text dropped).
    """
    message = _parse(raw)
    body = _Body(max_images=max_images, max_image_bytes=max_image_bytes, max_chars=max_full_text_chars,
                 prefer_html=prefer_html, cut=truncated)  # fmt: skip
    try:
        body.walk(message)
    except Exception:  # whatever a mail's structure, the mail is still answered with what was read
        body.skipped.append("part of the mail could not be read")
    segments = [seg for seg in body.segments if seg]
    full = clean_text("\n\n".join("\n".join(full for full, _ in seg) for seg in segments))
    own = [clean_text("\n".join(own for _, own in seg))[:max_full_text_chars] for seg in segments]
    text = clean_text("\n\n".join(strip_quoted(seg) for seg in own if seg))
    text, text_cut = _cap(text, max_text_chars)
    full, full_cut = _cap(full, max_full_text_chars)
    references = _msg_ids(_raw(message, "references"))
    if len(references) > 21:
        references = [references[0], *references[-20:]]
    from_address, from_name = _sender(message)
    skipped = body.skipped[:_MAX_NOTES]
    if len(body.skipped) > _MAX_NOTES:
        skipped.append(f"{len(body.skipped) - _MAX_NOTES} more parts were not included")
    recipients = dict.fromkeys(
        address.lower() for name in ("to", "cc", "delivered-to", "x-original-to")
        for _, address in _addresses(_raw(message, name))
    )  # fmt: skip
    return ParsedMail(
        message_id=next(iter(_msg_ids(_raw(message, "message-id")[:1])), None),
        in_reply_to=tuple(_msg_ids(_raw(message, "in-reply-to"))),
        references=tuple(references),
        subject=_one_line(_decode_words(" ".join(_raw(message, "subject")[:1])), 1000),
        from_address=from_address,
        from_name=from_name,
        recipients=tuple(recipients),
        date=_date(message),
        text=text,
        full_text=full,
        images=tuple(body.images),
        skipped_attachments=tuple(skipped),
        truncated=truncated or body.truncated or text_cut or full_cut,
        message=message,
    )
