"""Text between Slack and the model, made safe both ways.

Out: the model writes Markdown; Slack's ``text`` field speaks mrkdwn, in which ``<!channel>``,
``<!here>``, ``<@U…>`` and ``<#C…>`` notify people. ``to_mrkdwn`` renders the Markdown (bold,
italics, strike, code, lists, headings, links to http(s) only) and escapes ``&``, ``<`` and ``>``
everywhere else, so nothing the model writes can broadcast or mention. ``to_markdown`` keeps the
Markdown for Slack's native streaming (``markdown_text``) and breaks the same tokens apart with an
invisible U+2060 WORD JOINER; it is local (each change depends only on the next few characters), so
a stream can send it piece by piece: ``stream_ready`` says how much of a growing text is settled.

In: ``from_slack`` turns a Slack message's text (entities, ``<url|label>`` links, ``<@U…>``
mentions) into plain text for the model and for operators' replies to other channels.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["WORD_JOINER", "escape", "from_slack", "stream_ready", "to_markdown", "to_mrkdwn"]

WORD_JOINER = "\u2060"
_BROADCAST_WORDS = ("here", "channel", "everyone")
_BROADCAST = re.compile(r"@(?=(?:here|channel|everyone))", re.IGNORECASE)

# -- plain text ----------------------------------------------------------------------------------

# NUL, and the private-use characters ``to_mrkdwn`` uses as markers (below): never part of a message.
_MARKERS = re.compile("[\x00\ue000-\ue002]")


def _strip(text: str) -> str:
    return _MARKERS.sub("", text)


def escape(text: str) -> str:
    """Plain text as mrkdwn that shows it as it is: ``&``, ``<``, ``>`` as entities, no ``@here``."""
    return _escape(_strip(text))


def _escape(text: str) -> str:
    """``escape`` of a text already stripped (``to_mrkdwn``'s markers, if any, are its own)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BROADCAST.sub("@" + WORD_JOINER, text)


# -- Markdown to mrkdwn ----------------------------------------------------------------------------

_FENCE = re.compile(r"^(\s*)(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_QUOTE = re.compile(r"^(\s*>+\s?)(.*)$")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(\s*<?((?:[^()\s<>]|\([^()\s]*\))+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SAFE_URL = re.compile(r"^https?://[^\s<>|\"'`]+$", re.IGNORECASE)
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_ITALIC_UNDERSCORE = re.compile(r"(?<![\w_])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![\w_])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
# Private-use characters stand for rendered pieces while the rest of a line is escaped; ``_strip`` takes
# them out of the input first, so the model's text can never name a piece.
_SLOT = "\ue000{}\ue001"
_SLOTS = re.compile("\ue000(\\d+)\ue001")
_BOLD_MARK = "\ue002"


def to_mrkdwn(markdown: str) -> str:
    """The model's Markdown as Slack mrkdwn for a message's ``text``: formatting kept, nothing that notifies."""
    out: list[str] = []
    fence: str | None = None
    for line in _strip(markdown).replace("\r\n", "\n").split("\n"):
        opening = _FENCE.match(line)
        if fence is not None:
            if opening and opening.group(2) == fence:
                out.append("```")
                fence = None
            else:
                out.append(escape(line))
            continue
        if opening:
            fence = opening.group(2)
            out.append("```")  # mrkdwn has no language tag: it would show as the first line
            continue
        out.append(_line(line))
    if fence is not None:
        out.append("```")
    return "\n".join(out)


def _line(line: str) -> str:
    if _RULE.match(line):
        return "――――――――"
    heading = _HEADING.match(line)
    if heading:
        return f"*{_inline(heading.group(1))}*" if heading.group(1) else ""
    bullet = _BULLET.match(line)
    if bullet:
        return f"{bullet.group(1)}• {_inline(bullet.group(2))}"
    quote = _QUOTE.match(line)
    if quote:
        # The leading '>' stays raw: mrkdwn's quote marker; it can open no <...> token without a '<'.
        return ">" + " " + _inline(quote.group(2))
    return _inline(line)


def _inline(text: str) -> str:
    pieces: list[str] = []

    def slot(rendered: str) -> str:
        pieces.append(rendered)
        return _SLOT.format(len(pieces) - 1)

    def code(match: re.Match[str]) -> str:
        return slot(f"`{escape(match.group(2).strip())}`")

    def link(match: re.Match[str]) -> str:
        image, label, url = match.group(1), match.group(2).strip(), match.group(3)
        label = label or ("image" if image else url)
        if not _SAFE_URL.match(url):
            return label  # javascript:, data:, relative: shown as the label alone, never a link
        return slot(f"<{url.replace('&', '&amp;')}|{escape(label).replace('|', '¦')}>")

    text = _CODE_SPAN.sub(code, text)
    text = _LINK.sub(link, text)
    text = _escape(text)
    text = _BOLD.sub(lambda m: f"{_BOLD_MARK}{m.group(2)}{_BOLD_MARK}", text)
    text = _ITALIC_STAR.sub(r"_\1_", text)
    text = _ITALIC_UNDERSCORE.sub(r"_\1_", text)
    text = _STRIKE.sub(r"~\1~", text)
    text = text.replace(_BOLD_MARK, "*")
    return _SLOTS.sub(lambda m: pieces[int(m.group(1))], text)


# -- Markdown for native streaming -------------------------------------------------------------------

# '<' or '&' before a character that could start a token or an entity, '@' before a broadcast word.
_TOKEN = re.compile(r"(?<=<)(?=[!@#])|(?<=&)(?=[#A-Za-z])|(?<=@)(?=(?:here|channel|everyone))", re.IGNORECASE)


def to_markdown(markdown: str) -> str:
    """The model's Markdown for ``markdown_text`` (Slack renders it), with every mention and broadcast token
    (``<!here>``, ``<@U…>``, ``<#C…>``, ``&lt;…`` entities, ``@channel``) broken by an invisible word joiner.

    Local: ``to_markdown(a) + to_markdown(b) == to_markdown(a + b)`` whenever ``stream_ready(a) == len(a)``.
    """
    return _TOKEN.sub(WORD_JOINER, markdown.replace("\x00", ""))


def stream_ready(text: str) -> int:
    """How much of a growing ``text`` ``to_markdown`` can render now: all but a trailing ``<``, ``&`` or
    ``@`` with the start of a broadcast word, whose rendering depends on what comes next."""
    end = len(text)
    while True:
        if text.endswith(("<", "&"), 0, end):
            end -= 1
            continue
        at = text.rfind("@", max(0, end - 9), end)
        if at >= 0:
            tail = text[at + 1 : end].lower()
            if any(word.startswith(tail) and word != tail for word in _BROADCAST_WORDS):
                end = at  # '<@he' may still become '<@here': what precedes the '@' is checked again
                continue
        return end


# -- Slack to plain text ------------------------------------------------------------------------------

_SLACK_TOKEN = re.compile(r"<([^<>]*)>")
_ENTITIES = (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))


def from_slack(text: str, *, user_name: Callable[[str], str | None] | None = None) -> str:
    """A Slack message's text as plain text: ``<https://x|label>`` → ``label (https://x)``, ``<@U1>`` → ``@name``,
    ``<#C1|general>`` → ``#general``, ``<!here>`` → ``@here``, entities decoded."""

    def token(match: re.Match[str]) -> str:
        inner = match.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            name = label or (user_name(target[1:]) if user_name else None)
            return f"@{name or 'someone'}"
        if target.startswith("#"):
            return f"#{label or 'channel'}"
        if target.startswith("!"):
            special = target[1:].split("^", 1)[0]
            if special == "subteam":
                return f"@{label.lstrip('@') or 'group'}"
            if special == "date":
                return label
            return f"@{special}"
        if target.startswith("mailto:"):
            return label or target.removeprefix("mailto:")
        if label and label != target:
            return f"{label} ({target})"
        return target

    text = _SLACK_TOKEN.sub(token, text)
    for entity, char in _ENTITIES:
        text = text.replace(entity, char)
    return text
