"""A raw mail to what the bot needs of it: headers for threading, the text the model reads, images.

``parse_mail`` never raises: a malformed, mis-encoded, binary or cut-off mail gives what could be read
of it. The model's ``text`` is the newest part of the body: quoted history and the signature are
stripped (``strip_quoted``), hidden HTML is dropped (``connectors.email.html``), invisible Unicode is
removed, and the text is capped; ``full_text`` keeps the whole body for review.
"""

from __future__ import annotations

import base64
import email.utils
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser

from connectors.email.html import html_to_text
from supportbot.messages import ImagePart

__all__ = ["ParsedMail", "parse_mail", "strip_quoted"]

_MSGID = re.compile(r"<([^<>\s]{1,250})>")
_BARE_MSGID = re.compile(r"^[^<>\s@]+@[^<>\s@]+$")
_INVISIBLE = re.compile("[\U000e0000-\U000e007f\u200b-\u200d\u2060\ufeff\u202a-\u202e\u2066-\u2069\u00ad]")
_REFERENCES_KEPT = 20
_FULL_TEXT_CHARS = 200_000
_IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"GIF87a": "gif", b"GIF89a": "gif"}

# Reply headers mail programs put above the quoted mail (English, German, French, Spanish, Dutch,
# Portuguese, Italian), possibly wrapped over two lines.
_REPLY_HEADER = re.compile(
    r"^(?:On\s.{1,200}?\swrote:|Am\s.{1,200}?\sschrieb.{0,100}:|Le\s.{1,200}?\sa\s[ée]crit\s?:|El\s.{1,200}?\sescribi[óo]:"
    r"|Op\s.{1,200}?\sschreef.{0,100}:|Em\s.{1,200}?\sescreveu:|Il\s.{1,200}?\sha\sscritto:)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_ORIGINAL = re.compile(r"^\s*-{2,}\s*(?:Original Message|Urspr[üu]ngliche Nachricht|Message d'origine|Mensaje original"
                       r"|Forwarded message|Weitergeleitete Nachricht)\s*-{2,}\s*$", re.IGNORECASE)  # fmt: skip
_HEADER_LINE = re.compile(r"^\s*\*?(From|Von|De|Van|Da|Sent|Gesendet|Envoy[ée]|Enviado|Date|Datum|To|An|À|Para|Subject"
                          r"|Betreff|Objet|Asunto|Cc)\s*:\*?", re.IGNORECASE)  # fmt: skip
_MOBILE = re.compile(r"^\s*(Sent from my \w+|Sent from (?:Mail|Outlook) for \w+|Get Outlook for \w+"
                     r"|Von meinem \w+ gesendet|Envoy[ée] de mon \w+)", re.IGNORECASE)  # fmt: skip


@dataclass(frozen=True, kw_only=True, slots=True)
class ParsedMail:
    """What the bot needs of one mail.

    Attributes:
        message_id: ``<id@host>``, or None when missing or unreadable.
        in_reply_to, references: Message-IDs in ``<…>`` form (References: the first and the last 19).
        subject: decoded, on one line.
        from_address: the single From address (domain lower-cased), or None when there is not exactly one.
        from_name: its display name.
        recipients: To, Cc, Delivered-To and X-Original-To addresses, lower-cased.
        date: the Date header.
        text: for the model: the newest part of the body, without quotes, signature or invisible characters, capped.
        full_text: the whole body as text, for review.
        images: image attachments and inline images, recognised by their bytes.
        skipped_attachments: what was not taken, with why (for the model to mention).
        truncated: the raw mail was cut before parsing, or the text was capped.
        message: the parsed headers, for the loop and DMARC checks.
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


def parse_mail(
    raw: bytes, *, max_text_chars: int = 8000, max_images: int = 4, max_image_bytes: int = 5_000_000,
    truncated: bool = False,
) -> ParsedMail:  # fmt: skip
    """Parse ``raw`` (``truncated``: it was cut at a size cap). Never raises."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    try:
        address, name = _from(message)
    except Exception:  # a From header that cannot be read at all
        address, name = None, None
    plain, html_parts, images, skipped = _walk(message, max_images=max_images, max_image_bytes=max_image_bytes)
    if plain:
        full = "\n\n".join(plain)
        newest = strip_quoted(plain[0])
    else:
        full = "\n\n".join(html_to_text(part) for part in html_parts)
        newest = strip_quoted(html_to_text(html_parts[0], drop_quotes=True)) if html_parts else ""
    text = _INVISIBLE.sub("", newest.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if len(text) > max_text_chars:
        text = text[: max_text_chars - 20].rstrip() + "\n[… shortened]"
        truncated = True
    return ParsedMail(
        message_id=_first_id(_header(message, "Message-ID")),
        in_reply_to=_ids(_header(message, "In-Reply-To"))[:5],
        references=_trim(_ids(_header(message, "References"))),
        subject=_INVISIBLE.sub("", " ".join(_header(message, "Subject").split()))[:500],
        from_address=address,
        from_name=name,
        recipients=_recipients(message),
        date=_date(message),
        text=text,
        full_text=full[:_FULL_TEXT_CHARS],
        images=tuple(images),
        skipped_attachments=tuple(skipped),
        truncated=truncated,
        message=message,
    )


def strip_quoted(text: str) -> str:
    """The newest part of a plain-text reply: cut at the quoted mail's header, at ``-- `` and at mobile
    signatures; ``>`` lines dropped. Returns ``text`` unchanged if nothing would be left (a forward)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for index, line in enumerate(lines):
        two = line + " " + lines[index + 1] if index + 1 < len(lines) else line
        if _ORIGINAL.match(line) or line.strip() == "-- " or line == "-- " or _MOBILE.match(line):
            break
        if _REPLY_HEADER.match(line.strip()) or (
            _REPLY_HEADER.match(two.strip()) and not lines[index + 1].startswith(">")
        ):
            break
        if line.strip().startswith("____") and index + 1 < len(lines) and _HEADER_LINE.match(lines[index + 1]):
            break
        if _HEADER_LINE.match(line) and _outlook_block(lines[index : index + 6]):
            break
        if line.lstrip().startswith(">"):
            continue
        kept.append(line)
    result = "\n".join(kept).strip()
    return result if result else text.strip()


def _outlook_block(lines: list[str]) -> bool:
    """``From:`` followed within a few lines by ``Sent:``/``Date:`` and ``To:``/``Subject:``: Outlook's quote."""
    names = {m.group(1).lower() for line in lines if (m := _HEADER_LINE.match(line))}
    return len(names) >= 3 and bool(names & {"from", "von", "de", "van", "da"})


def _walk(
    message: Message, *, max_images: int, max_image_bytes: int
) -> tuple[list[str], list[str], list[ImagePart], list[str]]:
    """The text/plain bodies, text/html bodies, images and skipped attachments, in document order."""
    plain: list[str] = []
    html: list[str] = []
    images: list[ImagePart] = []
    skipped: list[str] = []
    for part in _parts(message):
        kind = part.get_content_type()
        attached = part.get_content_disposition() == "attachment"
        filename = _filename(part)
        if kind == "text/plain" and not attached:
            plain.append(_text_of(part))
        elif kind == "text/html" and not attached:
            html.append(_text_of(part))
        elif part.get_content_maintype() == "image":
            data = _payload(part)
            image = _image_type(data)
            if image is None:
                skipped.append(f"{filename or kind} (not an image we can read)")
            elif len(data) > max_image_bytes:
                skipped.append(f"{filename or kind} (too big: {len(data):,} bytes)")
            elif len(images) >= max_images:
                skipped.append(f"{filename or kind} (more than {max_images} images)")
            else:
                images.append(ImagePart(url=f"data:image/{image};base64,{base64.b64encode(data).decode('ascii')}"))
        elif kind.startswith("multipart/") or kind == "message/rfc822":
            continue
        elif attached or filename:
            skipped.append(f"{filename or kind} ({kind})")
    # multipart/alternative gives the same text twice; the plain one was taken
    return plain, html if not plain else [], images, skipped


def _parts(message: Message, depth: int = 0) -> Iterator[Message]:
    """Every leaf part, forwarded mails included, at most 20 levels deep and 500 parts in all."""
    count = 0
    for part in message.walk():
        count += 1
        if count > 500:
            return
        if part.is_multipart():
            continue
        yield part


def _payload(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        return b""
    return data if isinstance(data, bytes) else b""


def _text_of(part: Message) -> str:
    data = _payload(part)
    charset = part.get_content_charset() or "utf-8"
    for name in (charset, "utf-8", "windows-1252"):
        try:
            return data.decode(name)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("latin-1")


def _image_type(data: bytes) -> str | None:
    for magic, kind in _IMAGE_TYPES.items():
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    return " ".join(str(name).split())[:100] if name else None


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # a header policy.default cannot parse
        values = message.get_all(name, failobj=[])
        value = values[0] if values else None
    return str(value) if value is not None else ""


def _ids(value: str) -> tuple[str, ...]:
    found = [f"<{m}>" for m in _MSGID.findall(value)]
    if not found:
        found = [f"<{word}>" for word in value.split() if _BARE_MSGID.match(word) and len(word) <= 250]
    unique: list[str] = []
    for item in found:
        if item not in unique:
            unique.append(item)
    return tuple(unique)


def _first_id(value: str) -> str | None:
    found = _ids(value)
    return found[0] if found else None


def _trim(ids: tuple[str, ...]) -> tuple[str, ...]:
    if len(ids) <= _REFERENCES_KEPT:
        return ids
    return (ids[0], *ids[-(_REFERENCES_KEPT - 1) :])


def _from(message: Message) -> tuple[str | None, str | None]:
    values = [str(v) for v in message.get_all("From", failobj=[])]
    pairs = [(name, addr) for name, addr in email.utils.getaddresses(values) if addr]
    if len(values) != 1 or len(pairs) != 1:
        return None, None
    name, addr = pairs[0]
    local, at, domain = addr.partition("@")
    if not at or not local or not domain or any(c.isspace() for c in addr):
        return None, None
    return f"{local}@{domain.lower()}", (" ".join(name.split())[:200] or None)


def _recipients(message: Message) -> tuple[str, ...]:
    values: list[str] = []
    for name in ("To", "Cc", "Delivered-To", "X-Original-To"):
        try:
            values.extend(str(v) for v in message.get_all(name, failobj=[]))
        except Exception:
            continue
    return tuple(dict.fromkeys(addr.lower() for _, addr in email.utils.getaddresses(values) if "@" in addr))


def _date(message: Message) -> datetime | None:
    try:
        value = message.get("Date")
        return email.utils.parsedate_to_datetime(str(value)) if value else None
    except Exception:
        return None
