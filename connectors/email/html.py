"""HTML mail bodies as plain text, with what a reader would not see left out.

A mail's HTML can hide text from the person who reads it and still show it to a model: a
``display:none`` preheader, a ``font-size:0`` span, a ``hidden`` div. ``html_to_text`` keeps only
what a mail client renders, so hidden instructions never reach the model. It follows the HTML
parsing rules where they decide what is inside a hidden element (an unclosed ``<p>``, a stray
``</span>``, a ``</div>`` inside a table cell, an unclosed ``<b>`` that a browser re-opens), and where
it cannot be sure it hides more, never less. Styles are read inline and from simple ``.class`` and
``#id`` rules of ``<style>`` (outside ``@media``).

With ``drop_quotes`` the reply history that clients mark up (Gmail's ``div.gmail_quote``, Apple
Mail's and Thunderbird's ``blockquote type=cite``, Outlook's ``#divRplyFwdMsg`` and
``#appendonsend`` and all that follows them) is left out too, unless it is a forwarded message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from html.parser import HTMLParser

__all__ = ["FORWARD_MARKER", "FORWARD_SUBJECT", "html_to_text", "html_to_texts", "looks_forwarded"]

_VOID = frozenset("area base br col embed hr img input keygen link meta param source track wbr".split())
# Never rendered as text, whatever their style.
_DROPPED = frozenset("head script style template noscript title iframe object applet frameset".split())
# HTML's "special" elements: an end tag of an inline element never closes one of them.
_SPECIAL = frozenset(
    "address article aside blockquote body center dd details dialog dir div dl dt fieldset figcaption figure "
    "footer form h1 h2 h3 h4 h5 h6 header hgroup hr html iframe li main menu nav ol p pre section summary "
    "table tbody td tfoot th thead tr ul caption colgroup head noscript object applet template".split()
)
_SCOPE = frozenset("td th caption table template html object applet marquee".split())
_TABLE_PARTS = frozenset("tr td th tbody thead tfoot caption colgroup".split())
# A start tag of one of these closes an open <p> (HTML's "close a p element").
_CLOSES_P = frozenset(
    "address article aside blockquote center details dialog dir div dl dd dt fieldset figcaption figure footer "
    "form h1 h2 h3 h4 h5 h6 header hgroup hr li main menu nav ol p pre section summary ul".split()
)
# Browsers re-open these (with their attributes) after an outer element closed them.
_FORMATTING = frozenset("a b big code em font i nobr s small strike strong tt u".split())
_LINE = frozenset("div li tr dt dd address center section article header footer nav aside main form figure".split())
_PARAGRAPH = frozenset("p h1 h2 h3 h4 h5 h6 blockquote pre ul ol dl table hr".split())
_QUOTE_CLASSES = frozenset({"gmail_quote", "gmail_quote_container", "yahoo_quoted", "protonmail_quote"})
_CUT_IDS = frozenset({"divrplyfwdmsg", "appendonsend", "mail-editor-reference-message-container"})

FORWARD_MARKER = re.compile(
    r"^[\s>*-]*(?:forwarded message|begin forwarded message|weitergeleitete nachricht|message transf[ée]r[ée]"
    r"|mensaje reenviado|mensagem encaminhada|doorgestuurd bericht|messaggio inoltrato)\b",
    re.IGNORECASE | re.MULTILINE,
)
FORWARD_SUBJECT = re.compile(
    r"^\s*\*?(?:subject|betreff|objet|asunto|onderwerp|oggetto|assunto)\s*:\*?\s*(?:fwd?|wg|tr|rv|enc|doorst)\s*:",
    re.IGNORECASE | re.MULTILINE,
)


def looks_forwarded(text: str) -> bool:
    """Whether ``text`` starts (within its first lines) as a forwarded message rather than a quoted reply."""
    head = text.lstrip()[:800]
    return bool(FORWARD_MARKER.search(head) or FORWARD_SUBJECT.search(head))


# -- CSS --------------------------------------------------------------------------------------------

_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))\s*(px|pt|em|rem|%|ex|ch|vh|vw|cm|mm|in)?$")
_UNIT_PX = {"px": 1.0, "pt": 4 / 3, "em": 16.0, "rem": 16.0, "%": 0.16, "ex": 8.0, "ch": 8.0, "cm": 37.8, "mm": 3.78}
_TRANSPARENT = re.compile(r"^(?:transparent|(?:rgba|hsla)\(.*[,/]\s*0*\.?0*%?\s*\))$")
_MEDIA = re.compile(r"@[a-z-]+[^{;]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", re.IGNORECASE)
_RULE = re.compile(r"([^{}]+)\{([^{}]*)\}")
_SIMPLE_SELECTOR = re.compile(r"^[a-z0-9]*([.#])([a-z0-9_-]+)$", re.IGNORECASE)


def _px(value: str) -> float | None:
    """A CSS length in (approximate) pixels; None when it is not a plain length."""
    match = _NUMBER.match(value.strip())
    if match is None:
        return None
    number, unit = float(match.group(1)), match.group(2)
    if unit is None:
        return number if number == 0 else None
    return number * _UNIT_PX.get(unit, 1.0)


_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})\s?|(.))", re.DOTALL)


def _unescape(css: str) -> str:
    """CSS escapes as a browser reads them: ``\\6e one`` is ``none``."""

    def char(found: re.Match[str]) -> str:
        if found.group(1) is None:
            return found.group(2)
        code = int(found.group(1), 16)
        return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"

    return _ESCAPE.sub(char, css) if "\\" in css else css


def _declarations(style: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for declaration in _unescape(_COMMENT.sub("", style)).split(";"):
        name, colon, value = declaration.partition(":")
        if colon:
            value = value.lower().replace("!important", "")
            found[name.strip().lower()] = " ".join(value.split())
    return found


def _style_hides(style: str) -> bool:
    """Whether an element with this style shows none of its text (or shows it invisibly small or off-screen)."""
    css = _declarations(style)
    get = css.get
    if get("display") == "none" or get("visibility") in ("hidden", "collapse") or get("mso-hide") == "all":
        return True
    opacity = get("opacity", "1")
    try:
        if (float(opacity[:-1]) / 100 if opacity.endswith("%") else float(opacity)) < 0.1:
            return True
    except ValueError:
        pass
    size = _px(get("font-size", ""))
    if size is not None and size < 2:
        return True

    def tiny(*names: str) -> bool:
        return any((px := _px(get(name, ""))) is not None and px <= 1 for name in names)

    if get("overflow", get("overflow-x", get("overflow-y"))) in ("hidden", "clip") and tiny(
        "height", "max-height", "width", "max-width"
    ):
        return True
    if tiny("width", "max-width") and tiny("height", "max-height"):
        return True
    color = get("color", "").replace(" ", "")
    if color not in ("", "inherit", "initial", "unset", "revert", "currentcolor") and (
        _TRANSPARENT.match(color)
        or color in (get("background-color", "").replace(" ", ""), get("background", "").replace(" ", ""))
    ):
        return True
    if (indent := _px(get("text-indent", ""))) is not None and indent <= -500:
        return True
    if _clipped(get("clip", ""), get("clip-path", "")):
        return True
    if get("position") in ("absolute", "fixed"):
        return any((px := _px(get(side, ""))) is not None and px <= -500 for side in ("left", "top", "right"))
    return False


def _clipped(clip: str, clip_path: str) -> bool:
    """``clip: rect(1px, 1px, 1px, 1px)`` or ``clip-path: inset(50%)``: the usual "visually hidden" styles."""
    if clip.startswith("rect("):
        sides = [_px(part) for part in re.split(r"[\s,]+", clip[5:].rstrip(")").strip()) if part]
        if len(sides) == 4 and all(side is not None for side in sides):
            top, right, bottom, left = (side or 0.0 for side in sides)
            if right - left <= 1 or bottom - top <= 1:
                return True
    if clip_path.startswith("inset("):  # inset(50%) from every side leaves nothing
        percents = re.findall(r"(\d+(?:\.\d+)?)%", clip_path)
        return any(float(value) >= 50 for value in percents)
    return clip_path.replace(" ", "") in ("circle(0)", "circle(0px)", "polygon(0000)")


# -- the converter --------------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class _Open:
    tag: str
    hides: bool = False
    quote: bool = False
    cite_prefix: bool = False  # Thunderbird's attribution line: the blockquote after it is quoted history
    href: str | None = None
    start: int = 0  # index into the output where the element's text begins


class _Converter(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.newlines = 2  # trailing newlines of the output; 2 at the start so it never begins with blank lines
        self.stack: list[_Open] = []
        self.at: dict[str, list[int]] = {}  # stack positions of the open elements, by tag: O(1) scope checks
        self.specials: list[int] = []  # stack positions of the open special elements
        self.hidden = 0  # open elements that hide
        self.lingering: list[str] = []  # hidden formatting elements a browser would re-open
        self.pre = 0
        self.bullet = False
        self.quote: _Open | None = None  # the outermost open quote container
        self.quotes: list[tuple[int, int]] = []  # output ranges of quoted history
        self.cut: int | None = None
        self.after_cite_prefix = False
        self.hidden_classes: set[str] = set()
        self.hidden_ids: set[str] = set()
        self.css: list[str] = []

    # output

    def emit(self, text: str) -> None:
        if self.hidden or self.lingering or not text:
            return
        if not self.pre:
            text = re.sub(r"[ \t\n\r\f\v]+", " ", text)
            if self.newlines or (self.out and self.out[-1].endswith(" ")):
                text = text.lstrip(" ")
            if not text:
                return
        self.after_cite_prefix = self.bullet = False
        self.out.append(text)
        self.newlines = len(text) - len(text.rstrip("\n"))

    def newline(self, count: int, *, force: bool = False) -> None:
        if self.hidden or self.lingering or self.bullet:  # "- " and the item's first block share a line
            return
        if force:
            self.out.append("\n")
            self.newlines += 1
        elif self.newlines < count:
            self.out.append("\n" * (count - self.newlines))
            self.newlines = count

    # tags

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.newline(0, force=True)
            return
        if tag in _CLOSES_P and self._in_scope("p", button=True):
            self._close("p")
        if tag == "li":
            self._close_open_item(("li",), ("ul", "ol"))
        elif tag in ("dt", "dd"):
            self._close_open_item(("dt", "dd"), ("dl",))
        elif tag in ("td", "th"):
            self._close_open_item(("td", "th"), ("tr", "table"))
        elif tag == "tr":
            self._close_open_item(("tr",), ("table", "tbody", "thead", "tfoot"))
        elif tag == "body" and self._in_scope("head"):
            self._close("head")
        elif tag == "a":  # links never nest: a browser closes the open one
            self.handle_endtag("a")
        values = {name.lower(): (value or "") for name, value in attrs}
        # A closed <details> shows only its summary; all of it is left out (hiding more, never less).
        hides = tag in _DROPPED or (tag == "details" and "open" not in values) or self._hides(values)
        if tag in _VOID:
            if tag == "hr":
                self.newline(2)
            return
        self._block(tag)
        element = _Open(tag=tag, hides=hides, href=values.get("href") if tag == "a" else None, start=len(self.out))
        classes = set(values.get("class", "").split())
        element_id = values.get("id", "").strip().lower()
        if self.quote is None and self.cut is None and not hides and not self.hidden:
            if element_id in _CUT_IDS:
                self.cut = len(self.out)
            elif (
                classes & _QUOTE_CLASSES
                or "moz-cite-prefix" in classes
                or (tag == "blockquote" and (values.get("type", "").lower() == "cite" or self.after_cite_prefix))
            ):
                element.quote = True
                element.cite_prefix = "moz-cite-prefix" in classes
                self.quote = element
        self.at.setdefault(tag, []).append(len(self.stack))
        if tag in _SPECIAL:
            self.specials.append(len(self.stack))
        self.stack.append(element)
        self.hidden += hides
        if tag == "li":
            self.emit("- ")
            self.bullet = not (self.hidden or self.lingering)
        elif tag == "pre":
            self.pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # HTML ignores the "/" of <div/>: the div stays open (and a hidden one hides what follows).
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "br":  # browsers read </br> as <br>
            self.newline(0, force=True)
            return
        if tag in self.lingering:
            del self.lingering[len(self.lingering) - 1 - self.lingering[::-1].index(tag)]
        if tag in _SPECIAL:
            if self._in_scope(tag):
                self._close(tag)
            return
        # HTML's "any other end tag": it closes the innermost such element unless a special one is inside it.
        position = self._last((tag,))
        if position >= 0 and (not self.specials or self.specials[-1] < position):
            self._close(tag)

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1].tag == "style":
            self.css.append(data)
        self.emit(data)

    # structure

    def _hides(self, values: dict[str, str]) -> bool:
        if not values:
            return False
        if "hidden" in values or values.get("aria-hidden", "").strip().lower() == "true":
            return True
        if values.get("id", "").strip().lower() in self.hidden_ids:
            return True
        if self.hidden_classes.intersection(values.get("class", "").lower().split()):
            return True
        return "style" in values and _style_hides(values["style"])

    def _last(self, tags: Iterable[str]) -> int:
        """The stack position of the innermost open element of ``tags``; -1 if none is open."""
        return max((positions[-1] for tag in tags if (positions := self.at.get(tag))), default=-1)

    def _in_scope(self, tag: str, *, button: bool = False) -> bool:
        if not self.at.get(tag):
            return False
        if tag in _TABLE_PARTS:
            boundary: Iterable[str] = ("table", "template", "html")
        else:
            boundary = (*_SCOPE, "button") if button else _SCOPE
        position = self._last((tag,))
        return position >= 0 and position > self._last(b for b in boundary if b != tag)

    def _close_open_item(self, items: tuple[str, ...], containers: tuple[str, ...]) -> None:
        position = self._last(items)
        if position >= 0 and position > self._last((_SCOPE | set(containers)) - set(items)):
            self._close(self.stack[position].tag)

    def _close(self, tag: str) -> None:
        """Pop open elements up to and including the innermost ``tag``."""
        while self.stack:
            element = self.stack.pop()
            self.at[element.tag].pop()
            if element.tag in _SPECIAL:
                self.specials.pop()
            self.hidden -= element.hides
            if element.tag == "style":
                self._learn_css("".join(self.css))
                self.css.clear()
            # Browsers re-open at most three equal formatting elements ("Noah's Ark").
            if (
                element.hides
                and element.tag in _FORMATTING
                and element.tag != tag
                and self.lingering.count(element.tag) < 3
            ):
                self.lingering.append(element.tag)
            if element.tag == "pre":
                self.pre -= 1
            elif element.tag == "li" and self.bullet:  # an empty item
                self.out.pop()
                self.bullet, self.newlines = False, 1
            if element.tag == "a" and element.href and not self.hidden:
                self._link(element)
            self._block(element.tag)
            if element is self.quote:
                self.quote = None
                self.after_cite_prefix = element.cite_prefix
                self.quotes.append((element.start, len(self.out)))
            if element.tag == tag:
                return

    def _block(self, tag: str) -> None:
        if tag in _PARAGRAPH:
            self.newline(2)
        elif tag in _LINE:
            self.newline(1)
        elif tag in ("td", "th") and not self.newlines:
            self.emit(" ")

    def _link(self, element: _Open) -> None:
        href = (element.href or "").strip()
        if not re.match(r"^(?:https?|mailto):", href, re.IGNORECASE) or len(href) > 2000:
            return
        text = "".join(self.out[element.start :]).strip()
        bare = href.removeprefix("mailto:").removeprefix("MAILTO:")
        if text and text.rstrip("/") not in (href.rstrip("/"), bare.rstrip("/")):
            self.emit(f" ({href})")

    def _learn_css(self, css: str) -> None:
        for selectors, body in _RULE.findall(_MEDIA.sub("", _COMMENT.sub("", css))):
            if not _style_hides(body):
                continue
            for selector in selectors.split(","):
                match = _SIMPLE_SELECTOR.match(selector.strip())
                if match:
                    names = self.hidden_classes if match.group(1) == "." else self.hidden_ids
                    names.add(match.group(2).lower())

    def finish(self) -> tuple[str, str]:
        # A tag or comment still open at the end is dropped, as browsers drop it (and HTMLParser's close()
        # would show it as text, re-scanning it once per "<": quadratic on "<a <a <a ...").
        if self.rawdata.startswith("<"):
            self.rawdata = ""
        self.close()
        if self.stack:
            self._close(self.stack[0].tag)
        full = "".join(self.out)
        regions = [(s, e) for s, e in self.quotes if not self._forward(s, e)]
        if self.cut is not None and not self._forward(self.cut, len(self.out)):
            regions.append((self.cut, len(self.out)))
        keep = [True] * len(self.out)
        for start, end in regions:
            keep[start:end] = [False] * (end - start)
        return _tidy(full), _tidy("".join(piece for piece, kept in zip(self.out, keep, strict=True) if kept))

    def _forward(self, start: int, end: int) -> bool:
        before = "".join(self.out[max(0, start - 20) : start]).rstrip().rpartition("\n")[2]
        return looks_forwarded("".join(self.out[start:end])) or bool(FORWARD_MARKER.search(before))


def _tidy(text: str) -> str:
    lines = [line.strip(" \t\xa0") for line in text.replace("\xa0", " ").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_texts(html: str) -> tuple[str, str]:
    """The visible text of ``html``, and the same without the quoted reply history (see the module's docstring)."""
    converter = _Converter()
    try:
        converter.feed(html)
        return converter.finish()
    except Exception:  # HTMLParser on markup it cannot read: what was read so far, hidden parts still left out
        text = _tidy("".join(converter.out))
        return text, text


def html_to_text(html: str, *, drop_quotes: bool = False) -> str:
    """The text a reader of ``html`` sees: blocks as lines, ``- `` list items, links as ``text (url)``.

    Args:
        html: the HTML, decoded.
        drop_quotes: leave out the quoted reply history clients mark up (forwarded messages stay).
    """
    full, own = html_to_texts(html)
    return own if drop_quotes else full
