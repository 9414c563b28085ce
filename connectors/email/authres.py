"""Who sent a mail: ``Authentication-Results`` (RFC 8601) and the DMARC verdict of our own MX.

``From:`` proves nothing by itself. A sender counts as verified only when our receiving MTA (the
configured ``trusted_authserv_id``) evaluated DMARC for the From domain and it passed. Our MX
*prepends* its header, so the topmost ``Authentication-Results`` carrying our authserv-id is the
one it wrote; any lower one with the same id came with the mail and may be forged (RFC 8601 §5
asks MTAs to delete those, not all do). Headers of other authserv-ids are ignored entirely.

DMARC authenticates the From *domain* only: a verified address means "the domain's owner let this
mail through", which is the usual bar (the big providers do not let one account send as another).

``parse_authentication_results`` reads one header's value: CFWS comments (nested, with escapes,
anywhere), an optional version after the authserv-id, ``none``, several methods separated by ``;``,
``reason=``, ``ptype.property=value`` pairs with quoted strings, and the bare ``key=value`` pairs
Microsoft adds (``action=none``). It never raises; anything it cannot read whole is ``None``.

Microsoft 365 writes its header with no authserv-id at all (``spf=pass …;dmarc=pass action=none
header.from=…``). It parses, with ``""`` as the id, but ``dmarc_verified`` never trusts it: an
empty ``trusted_authserv_id`` verifies nobody, since an id-less header is just as easy to forge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.errors import InvalidHeaderDefect
from email.headerregistry import Address
from email.message import EmailMessage
from types import MappingProxyType

__all__ = ["AuthResult", "dmarc_verified", "parse_authentication_results"]

HEADER = "authentication-results"


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthResult:
    """One ``method=result`` of an ``Authentication-Results`` header.

    Attributes:
        method: The method, lower-cased (``dmarc``, ``dkim``, ``spf``, ``x-tls``, …); a method
            version (``dkim/1``) is dropped.
        result: The result, lower-cased (``pass``, ``fail``, ``none``, …).
        properties: ``reason`` and every ``ptype.property`` (``header.from``, ``smtp.mailfrom``,
            ``policy.dmarc``) or bare ``key`` (``action``), keys lower-cased, values unquoted as written.
    """

    method: str
    result: str
    properties: Mapping[str, str]


# A keyword (RFC 8601 §2.2: ldh-str; '_' seen in the wild) and a value: a run of quoted strings and
# other non-space characters, so ``"john doe"@example.com`` and base64 ``header.b=ab+/c=`` are one value.
_KEYWORD = r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_VALUE = rf'(?:{_QUOTED}|[^\s"])+'
_METHOD = re.compile(rf"\s*({_KEYWORD})\s*(?:/\s*[0-9]+\s*)?=\s*({_KEYWORD})(?=\s|$)")
_KEY = rf"{_KEYWORD}(?:\s*\.\s*{_KEYWORD})?"
# A value right after '=' may hold '=' (base64, SRS addresses); after a space it must not look like
# the next ``key=``, and an empty value is accepted only last (``smtp.mailfrom=`` of a null sender).
_PROPERTY = re.compile(rf"\s+({_KEY})\s*=({_VALUE}|\s+(?!{_KEY}\s*=){_VALUE}|\s*$)")
_SERVER = re.compile(rf"\s*({_QUOTED}|[^\s\"()<>@,;:\\/\[\]?=]+)(?:\s+([0-9]+))?\s*$")
_PIECE = re.compile(rf'{_QUOTED}|;|[^;"]+')
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def parse_authentication_results(value: str) -> tuple[str, tuple[AuthResult, ...]] | None:
    """Parse one ``Authentication-Results`` header value.

    Args:
        value: The field body, folded or not (``mx.example.com 1; dmarc=pass header.from=example.com``).

    Returns:
        The authserv-id (lower-cased) and the results in order (empty for ``none``), or ``None``
        when the value does not follow RFC 8601 closely enough to be read whole. Never raises.
    """
    text = _without_comments(_unfold(value))
    if text is None:
        return None
    segments = _split(text)
    if segments is None:
        return None
    server = _SERVER.fullmatch(segments[0])
    if server is not None:
        authserv_id = _unquote(server.group(1)).lower()
        rest = [segment for segment in segments[1:] if segment.strip()]
    elif _result(segments[0]) is not None:
        # Microsoft 365 writes no authserv-id (``spf=pass … ;dmarc=pass action=none …``).
        authserv_id, rest = "", [segment for segment in segments if segment.strip()]
    else:
        return None
    if [segment.strip().lower() for segment in rest] == ["none"]:
        return authserv_id, ()
    results = []
    for segment in rest:
        result = _result(segment)
        if result is None:
            return None
        results.append(result)
    return (authserv_id, tuple(results)) if results else None


def dmarc_verified(message: EmailMessage, *, trusted_authserv_id: str) -> str | None:
    """The From address our MX verified with DMARC, or ``None``.

    Verified only when the mail has one From header with exactly one well-formed address, and the
    topmost ``Authentication-Results`` header of ``trusted_authserv_id`` parses, holds exactly one
    ``dmarc`` result, that result is ``pass``, and its ``header.from`` names the From address's
    domain (case-insensitively). A lower header with our id, or any header of another id, never counts.

    Args:
        message: The mail, parsed with ``policy.default``.
        trusted_authserv_id: The authserv-id our receiving MTA writes (``mx.acme.example``); an
            empty one verifies nobody.

    Returns:
        The From address, lower-cased, or ``None``. Never raises.
    """
    trusted = trusted_authserv_id.strip().lower()
    if not trusted:
        return None
    address = _single_from(message)
    if address is None:
        return None
    ours = _topmost(message, trusted)
    if ours is None:
        return None
    dmarc = [result for result in ours if result.method == "dmarc"]
    if len(dmarc) != 1 or dmarc[0].result != "pass":
        return None  # several dmarc verdicts in one header are ambiguous: trust none
    header_from = dmarc[0].properties.get("header.from")
    if header_from is None:
        return None
    # RFC 7489 §11.2 writes the domain; a few writers put the whole address there.
    aligned = header_from.rpartition("@")[2].strip().rstrip(".").lower()
    domain = address.rpartition("@")[2].rstrip(".")
    return address if aligned and aligned == domain else None


def _topmost(message: EmailMessage, trusted: str) -> tuple[AuthResult, ...] | None:
    """The results of the first header carrying ``trusted``; ``None`` if it is absent or unreadable."""
    for name, value in message.raw_items():
        if name.lower() != HEADER:
            continue
        parsed = parse_authentication_results(str(value))
        if parsed is not None:
            if parsed[0] == trusted:
                return parsed[1]
            continue
        # Unreadable: if it might be ours, stop here, so that a readable forged one further down
        # can never stand in for the header our MX wrote.
        if trusted in _unfold(str(value)).lower():
            return None
    return None


def _single_from(message: EmailMessage) -> str | None:
    try:
        headers = message.get_all("From") or []
        if len(headers) != 1:
            return None
        header = headers[0]
        addresses: Sequence[Address] = getattr(header, "addresses", ())
        # An invalid From (``victim@bank.example <evil@evil.example>``) reads differently in
        # different parsers; the DMARC module may have judged another address than ours.
        if len(addresses) != 1 or any(isinstance(d, InvalidHeaderDefect) for d in header.defects):
            return None
        username, domain = str(addresses[0].username), str(addresses[0].domain)
        if not username or not domain or any(c.isspace() for c in domain):
            return None
        return str(addresses[0].addr_spec).lower()
    except Exception:  # a header the email package chokes on is simply not a verified sender
        return None


def _result(segment: str) -> AuthResult | None:
    method = _METHOD.match(segment)
    if method is None:
        return None
    properties: dict[str, str] = {}
    position = method.end()
    while position < len(segment):
        if not segment[position:].strip():
            break
        pair = _PROPERTY.match(segment, position)
        if pair is None:
            return None
        key = re.sub(r"\s+", "", pair.group(1)).lower()
        if key in properties:
            return None  # two values for one property: which one the verdict meant is unknowable
        properties[key] = _unquote(pair.group(2).strip())
        position = pair.end()
    return AuthResult(
        method=method.group(1).lower(), result=method.group(2).lower(), properties=MappingProxyType(properties)
    )


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])|\r?\n$", "", value)


def _without_comments(text: str) -> str | None:
    """``text`` with each (possibly nested) comment replaced by a space; ``None`` if unbalanced."""
    out: list[str] = []
    depth = 0
    quoted = False
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and (quoted or depth):
            if not depth:
                out.append(text[i : i + 2])
            i += 2
            continue
        if quoted:
            out.append(char)
            quoted = char != '"'
        elif char == "(":
            depth += 1
        elif char == ")":
            if not depth:
                return None
            depth -= 1
            if not depth:
                out.append(" ")
        elif not depth:
            out.append(char)
            quoted = char == '"'
        i += 1
    return None if depth or quoted else "".join(out)


def _split(text: str) -> list[str] | None:
    """``text`` split at the semicolons outside quoted strings."""
    segments = [""]
    pieces = _PIECE.findall(text)
    if "".join(pieces) != text:
        return None  # a stray quote the pattern could not place
    for piece in pieces:
        if piece == ";":
            segments.append("")
        else:
            segments[-1] += piece
    return segments


def _unquote(value: str) -> str:
    return re.sub(_QUOTED, lambda m: _ESCAPE.sub(r"\1", m.group(0)[1:-1]), value)
