"""HTML mail to plain text, without what a reader cannot see.

Text hidden from the customer (``display:none``, ``visibility:hidden``, zero sizes or opacity, the
``hidden`` and ``aria-hidden`` attributes, scripts and styles) is dropped with everything inside it:
it is where a prompt injection hides. With ``drop_quotes`` the quoted history mail programs wrap in
known containers (Gmail's ``div.gmail_quote``, Apple's and Thunderbird's ``blockquote type=cite``,
Outlook's ``#divRplyFwdMsg`` and what follows it) is dropped too.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["html_to_text"]

_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
                   "track", "wbr"})  # fmt: skip
_INVISIBLE = frozenset({"script", "style", "head", "template", "noscript", "title", "object", "iframe", "svg"})
_BLOCK = frozenset({"p", "div", "section", "article", "header", "footer", "table", "tr", "ul", "ol", "h1", "h2",
                    "h3", "h4", "h5", "h6", "blockquote", "pre", "address", "dl", "dt", "dd", "form", "fieldset",
                    "center", "main", "nav", "aside", "figure", "figcaption"})  # fmt: skip
_HIDDEN_STYLE = re.compile(
    r"(?:^|;)\s*(?:display\s*:\s*none|visibility\s*:\s*(?:hidden|collapse)|opacity\s*:\s*0(?:\.0*)?\s*(?:;|$|!)"
    r"|font-size\s*:\s*0(?:\.0*)?\s*(?:px|pt|em|rem|%)?\s*(?:;|$|!)|(?:max-)?(?:height|width)\s*:\s*0(?:\.0*)?\s*(?:px|pt|em|rem|%)?\s*(?:;|$|!)"
    r"|mso-hide\s*:\s*all|clip\s*:\s*rect\(\s*0)",
    re.IGNORECASE,
)
_OUTLOOK_REPLY = frozenset({"divrplyfwdmsg", "appendonsend", "x_divrplyfwdmsg"})
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_LINES = re.compile(r"\n\s*\n\s*(\n\s*)+")


def html_to_text(html: str, *, drop_quotes: bool = False) -> str:
    """The visible text of ``html``: blocks on lines of their own, list items as ``- ``, links as
    ``text (url)`` when the text is not the address; hidden elements dropped (and quoted history with
    ``drop_quotes``). Never raises."""
    parser = _Text(drop_quotes=drop_quotes)
    try:
        parser.feed(html)
        parser.close()
    except Exception:
        pass
    text = "".join(parser.out)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _LINES.sub("\n\n", "\n".join(lines)).strip()


class _Text(HTMLParser):
    def __init__(self, *, drop_quotes: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.drop_quotes = drop_quotes
        self.out: list[str] = []
        self.stack: list[tuple[str, bool]] = []  # open elements: (tag, drops its content)
        self.dropping = 0  # open elements that drop their content
        self.rest_dropped = False  # Outlook's reply header: the quoted mail follows to the end
        self.links: list[str | None] = []
        self.link_text: list[list[str]] = []

    def _hides(self, tag: str, attrs: dict[str, str | None]) -> bool:
        if tag in _INVISIBLE:
            return True
        if "hidden" in attrs or (attrs.get("aria-hidden") or "").strip().lower() == "true":
            return True
        style = attrs.get("style") or ""
        if style and _HIDDEN_STYLE.search(style.replace("\n", " ")):
            return True
        if not self.drop_quotes:
            return False
        classes = (attrs.get("class") or "").lower().split()
        ident = (attrs.get("id") or "").lower()
        if "gmail_quote" in classes or "moz-cite-prefix" in classes or "yahoo_quoted" in classes:
            return True
        if tag == "blockquote" and (attrs.get("type") or "").lower() == "cite":
            return True
        if ident in _OUTLOOK_REPLY:
            self.rest_dropped = True
            return True
        return False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        tag = tag.lower()
        named = {name.lower(): value for name, value in attrs}
        if tag in _VOID:
            if not self.dropping and not self.rest_dropped:
                if tag == "br":
                    self._write("\n")
                elif tag == "hr":
                    self._write("\n\n")
                elif tag == "img" and not self._hides(tag, named) and (alt := (named.get("alt") or "").strip()):
                    self._write(f"[{alt}]")
            return
        if tag == "p" and self.stack and self.stack[-1][0] == "p":
            self._end("p")  # an unclosed <p> ends where the next begins
        drops = self._hides(tag, named)
        self.stack.append((tag, drops))
        if drops:
            self.dropping += 1
            return
        if self.dropping or self.rest_dropped:
            return
        if tag in _BLOCK:
            self._write("\n\n" if tag in ("p", "blockquote", "table", "ul", "ol") or tag.startswith("h") else "\n")
        elif tag == "li":
            self._write("\n- ")
        elif tag in ("td", "th"):
            self._write(" ")
        elif tag == "a":
            self.links.append(named.get("href"))
            self.link_text.append([])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag.lower() in _VOID:
            self.handle_starttag(tag, attrs)
        # <div/> and the like open nothing

    def handle_endtag(self, tag: str) -> None:
        tag = tag.lower()
        if tag in _VOID:
            return
        if any(open_tag == tag for open_tag, _ in self.stack):
            self._end(tag)

    def _end(self, tag: str) -> None:
        """Close ``tag`` and every element left open inside it (unclosed tags must not hide the rest)."""
        while self.stack:
            open_tag, drops = self.stack.pop()
            if drops:
                self.dropping -= 1
            elif not self.dropping and not self.rest_dropped:
                self._closed(open_tag)
            if open_tag == tag:
                return

    def _closed(self, tag: str) -> None:
        if tag in _BLOCK:
            self._write("\n")
        elif tag == "a" and self.links:
            href = self.links.pop()
            text = "".join(self.link_text.pop()).strip()
            if href and href.startswith(("http://", "https://", "mailto:")) and href.removeprefix("mailto:") != text:
                self._write(f" ({href})")

    def handle_data(self, data: str) -> None:
        if self.dropping or self.rest_dropped:
            return
        data = data.replace("\n", " ")
        if self.link_text:
            self.link_text[-1].append(data)
        self._write(data)

    def _write(self, text: str) -> None:
        self.out.append(text)
