"""Threading helpers: subjects, tags, Message-IDs, References, reply addresses and conversation keys.

A reply to our mail finds its conversation by, in order (protocols.md §4): an ``In-Reply-To`` or
``References`` id we know (``message_key``), a reply-address token (``help+TOKEN@acme.example``,
``token_from_recipients``), or a subject tag (``[#TOKEN]``, ``subject_tag``). The tag and the token
only *point* at a conversation: the caller must still check that the sender belongs to it, so a
subject alone never joins a mail to someone else's conversation. Nothing here stores anything.

Tags and tokens use Crockford's base32 alphabet (digits and capitals without I, L, O and U): they
survive being read aloud or retyped, and ``[#IMPORTANT]`` or ``[#URGENT12]`` in a customer's own
subject are never taken for ours. Tokens are compared without case, since some servers lower-case
the addresses they deliver to.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from email.utils import getaddresses

__all__ = [
    "make_message_id",
    "message_key",
    "new_tag",
    "normalize_subject",
    "references_for",
    "reply_subject",
    "reply_token_address",
    "subject_tag",
    "thread_key",
    "token_from_recipients",
]

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TAG_LENGTH = 10
EMPTY_SUBJECT = "Your message"

_TAG_TOKEN = r"[0-9A-HJKMNP-TV-Z]{8,12}"
_TAG = re.compile(rf"\s*\[#({_TAG_TOKEN})\]")
# Reply and forward prefixes, repeated: English, German, Nordic, Finnish, Dutch, French, Italian
# (``R:``, ``RIF:``), Chinese clients, with Outlook's counters (``Re[2]:``) and full-width colons.
_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|fwd?|wg|tr|rif|r|回复|答复|转发)\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"[0-9A-Za-z]{4,64}")
_UNIQUE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.)){0,126}[A-Za-z0-9]|[A-Za-z0-9]")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_BRACKETED = re.compile(r"<([^<>\s]+)>")


def normalize_subject(subject: str) -> str:
    """``subject`` without reply and forward prefixes, our tags, or runs of white space.

    ``"RE: Re: AW: Fwd: hello [#ABCD234567]"`` becomes ``"hello"``; ``"Re[2]: x"`` becomes ``"x"``.
    """
    return _strip(subject)


def reply_subject(subject: str, tag: str | None = None) -> str:
    """The subject of a reply: ``Re:`` exactly once, then the subject, then ``[#tag]`` once.

    Args:
        subject: The subject being answered (decoded).
        tag: The conversation's tag. When given, it replaces any tag the subject carries; when
            ``None``, tags already in the subject are kept (moved to the end).

    Raises:
        ValueError: ``tag`` is not a tag (8–12 characters of Crockford's base32, upper case).
    """
    if tag is not None and not re.fullmatch(_TAG_TOKEN, tag):
        raise ValueError(f"tag {tag!r}: expected 8-12 characters of {CROCKFORD}")
    tags = [tag] if tag is not None else list(dict.fromkeys(_TAG.findall(subject)))
    text = _strip(subject) or EMPTY_SUBJECT
    return " ".join(["Re:", text, *(f"[#{t}]" for t in tags)])


def subject_tag(subject: str) -> str | None:
    """The first of our tags in ``subject`` (``"ABCD234567"`` of ``"Re: x [#ABCD234567]"``), if any."""
    match = _TAG.search(subject)
    return match.group(1) if match else None


def new_tag() -> str:
    """A random tag for a new conversation: 10 characters of Crockford's base32 (50 bits)."""
    return "".join(secrets.choice(CROCKFORD) for _ in range(TAG_LENGTH))


def tag_for(key: str) -> str:
    """The tag of the thread with conversation key ``key``: 10 characters of Crockford's base32 from its hash,
    so a mail read twice (after a crash, a new UIDVALIDITY) gives its thread the same tag both times."""
    number = int.from_bytes(hashlib.sha256(b"tag:" + key.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    return "".join(CROCKFORD[(number >> (5 * i)) & 31] for i in range(TAG_LENGTH))


def make_message_id(*, domain: str, unique: str) -> str:
    """``<sb.{unique}@{domain}>``: the same outbox row always gets the same Message-ID.

    Sending a reply again after a crash then repeats the Message-ID, which receivers and our own
    dedupe recognise, instead of arriving as a second mail.

    Args:
        domain: A host name (``acme.example``); lower-cased.
        unique: What makes the id unique, such as an outbox row id: letters, digits, ``.``, ``_``
            and ``-``, 1–128 characters, starting and ending with a letter or digit.

    Raises:
        ValueError: ``domain`` or ``unique`` would not make a valid Message-ID.
    """
    if not _UNIQUE.fullmatch(unique):
        raise ValueError(f"unique {unique!r}: use 1-128 letters, digits, '.', '_' or '-' (no '..', no edge dot)")
    labels = domain.lower().removesuffix(".").split(".")
    if len(domain) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"domain {domain!r}: expected a host name such as acme.example")
    return f"<sb.{unique}@{'.'.join(labels)}>"


def references_for(
    parent_message_id: str | None, parent_references: Sequence[str], *, keep: int = 20
) -> tuple[str, ...]:
    """The ``References`` of a reply (RFC 5322 §3.6.4).

    Args:
        parent_message_id: The Message-ID of the mail answered, if it had one.
        parent_references: Its ``References`` ids or, when it had none, its ``In-Reply-To``; each
            item may hold one id or a whole header value of several.
        keep: At most this many ids: the first (the thread's root) and the last ``keep - 1``.

    Returns:
        The ids in order, each in angle brackets, without duplicates (compared without case);
        the parent's Message-ID last.

    Raises:
        ValueError: ``keep`` is below 2 (the root and the parent).
    """
    if keep < 2:
        raise ValueError(f"keep={keep}: at least 2 (the thread's root and the parent)")
    parent = next(iter(_ids(parent_message_id or "")), None)
    chain: dict[str, str] = {}
    for item in parent_references:
        for found in _ids(item):
            chain.setdefault(found.lower(), found)
    if parent is not None:
        chain.pop(parent.lower(), None)  # the parent goes last, even if a client listed it earlier
        chain[parent.lower()] = parent
    ids = list(chain.values())
    if len(ids) > keep:
        ids = [ids[0], *ids[len(ids) - keep + 1 :]]
    return tuple(ids)


def reply_token_address(address: str, token: str) -> str:
    """``help+TOKEN@acme.example`` for ``help@acme.example``: replies to it name their conversation.

    Raises:
        ValueError: ``address`` is not a plain address, or ``token`` is not 4–64 letters and digits.
    """
    local, domain = _split_address(address)
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"token {token!r}: expected 4-64 letters and digits")
    return f"{local}+{token.upper()}@{domain}"


def token_from_recipients(recipients: Iterable[str], address: str) -> str | None:
    """The token of the first ``help+TOKEN@acme.example`` among ``recipients``, upper-cased.

    Args:
        recipients: Addresses or header values (``To``, ``Cc``, ``Delivered-To``; display names allowed).
        address: Our address (``help@acme.example``); compared without case.
    """
    local, domain = (part.lower() for part in _split_address(address))
    prefix = f"{local}+"
    for _, found in getaddresses([str(recipient) for recipient in recipients]):
        found_local, at, found_domain = found.strip().lower().rpartition("@")
        if not at or found_domain.rstrip(".") != domain or not found_local.startswith(prefix):
            continue
        token = found_local[len(prefix) :]
        if _TOKEN.fullmatch(token):
            return token.upper()
    return None


def thread_key(message_id: str | None, raw_fallback: bytes) -> str:
    """A stable key for the conversation a mail starts, at most 64 characters.

    ``"m:"`` and a hash of the Message-ID (lower-cased, without brackets), so the key is the same
    whichever copy of the mail arrives; ``"r:"`` and a hash of the raw mail when it has none.
    """
    normal = _normal_id(message_id or "")
    if normal:
        return "m:" + _digest(normal.encode("utf-8", "surrogatepass"))
    return "r:" + _digest(raw_fallback)


def message_key(message_id: str) -> str:
    """The key of a known Message-ID, as ``thread_key`` makes it (for ``In-Reply-To``/``References`` lookups).

    Raises:
        ValueError: ``message_id`` is empty.
    """
    normal = _normal_id(message_id)
    if not normal:
        raise ValueError(f"message_id {message_id!r}: empty")
    return "m:" + _digest(normal.encode("utf-8", "surrogatepass"))


def _strip(subject: str) -> str:
    text = re.sub(r"\s+", " ", subject).strip()
    while True:  # "[#TAG] Re: x" and "Re: [#TAG] Fwd: x": prefixes may hide behind a tag
        stripped = _TAG.sub("", _PREFIX.sub("", text)).strip()
        if stripped == text:
            return text
        text = stripped


def _ids(value: str) -> list[str]:
    """The Message-IDs in a header value, as ``<id>``; ids written without brackets are accepted."""
    found = _BRACKETED.findall(value)
    if not found:
        found = [token.strip("<>") for token in value.split()]
    return [f"<{item}>" for item in found if item]


def _normal_id(message_id: str) -> str:
    match = _BRACKETED.search(message_id)
    text = match.group(1) if match else re.sub(r"\s+", "", message_id).strip("<>")
    return text.lower()


def _digest(data: bytes) -> str:
    return base64.b32encode(hashlib.sha256(data).digest()).decode("ascii").rstrip("=").lower()


def _split_address(address: str) -> tuple[str, str]:
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain or re.search(r"[\s<>,;\"@]", local + domain):
        raise ValueError(f"address {address!r}: expected a plain address like help@acme.example")
    return local, domain
