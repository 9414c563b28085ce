"""Model output to Slack: formatting kept, nothing that notifies; Slack's text to plain text."""

from __future__ import annotations

import random
import re

import pytest

from connectors.slack.mrkdwn import WORD_JOINER, escape, from_slack, stream_ready, to_markdown, to_mrkdwn

WJ = WORD_JOINER

# Everything Slack turns into a notification or a link of its own: a raw '<' opening a special token.
_DANGER = re.compile(r"<[!@#]|<!?(here|channel|everyone)|(?<![\w\u2060])@(here|channel|everyone)\b")


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        # broadcasts, mentions and channel links are shown, never sent
        ("<!channel> sale!", "&lt;!channel&gt; sale!"),
        ("<!here|here> and <!everyone>", "&lt;!here|here&gt; and &lt;!everyone&gt;"),
        ("ping <@U0123ABC> and <@W1|bob>", "ping &lt;@U0123ABC&gt; and &lt;@W1|bob&gt;"),
        ("see <#C0123|general>", "see &lt;#C0123|general&gt;"),
        ("<!subteam^S123|@devs>", "&lt;!subteam^S123|@devs&gt;"),
        ("@here @channel @everyone", f"@{WJ}here @{WJ}channel @{WJ}everyone"),
        ("write to ana@example.com", "write to ana@example.com"),
        # entities: a literal '&lt;' stays literal text, it cannot become a '<'
        ("&lt;!channel&gt;", "&amp;lt;!channel&amp;gt;"),
        ("a & b < c > d", "a &amp; b &lt; c &gt; d"),
        # Markdown as mrkdwn
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("~~gone~~", "~gone~"),
        ("snake_case_name and 2*3*4", "snake_case_name and 2*3*4"),
        ("`<!here>` in code", "`&lt;!here&gt;` in code"),
        ("# Your order", "*Your order*"),
        ("- one\n* two\n+ three", "• one\n• two\n• three"),
        ("  - nested", "  • nested"),
        ("1. first\n2. second", "1. first\n2. second"),
        ("> quoted <b>", "> quoted &lt;b&gt;"),
        ("```python\nx = '<!here>' & 1\n```", "```\nx = '&lt;!here&gt;' &amp; 1\n```"),
        ("```\nunclosed <@U1>", "```\nunclosed &lt;@U1&gt;\n```"),
        # links: http(s) only, as <url|label>; anything else is the label alone
        ("[track it](https://t.example/a?b=1&c=2)", "<https://t.example/a?b=1&amp;c=2|track it>"),
        ("[wiki](https://en.example/A_(b))", "<https://en.example/A_(b)|wiki>"),
        ("[click](javascript:alert(1))", "click"),
        ("[x](data:text/html,<b>)", "[x](data:text/html,&lt;b&gt;)"),
        ("[me](mailto:a@b.c)", "me"),
        ("[a <!here> link](https://ok.example)", "<https://ok.example|a &lt;!here&gt; link>"),
        ("[x](https://ok.example|<!channel>)", "[x](https://ok.example|&lt;!channel&gt;)"),
        ("![chart](https://img.example/c.png)", "<https://img.example/c.png|chart>"),
        ("<https://evil.example|@channel>", "&lt;https://evil.example|@\u2060channel&gt;"),
        ("bare https://shop.example/o/1 link", "bare https://shop.example/o/1 link"),
        ("\x00<!here>", "&lt;!here&gt;"),
    ],
)
def test_markdown_becomes_safe_mrkdwn(markdown: str, mrkdwn: str) -> None:
    rendered = to_mrkdwn(markdown)
    assert rendered == mrkdwn
    assert not _DANGER.search(rendered)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<!channel>", f"<{WJ}!channel>"),
        ("hi <@U0123> <#C1>", f"hi <{WJ}@U0123> <{WJ}#C1>"),
        ("&lt;!here&gt; &#60;!here&#62;", f"&{WJ}lt;!here&{WJ}gt; &{WJ}#60;!here&{WJ}#62;"),
        ("@channel @Here", f"@{WJ}channel @{WJ}Here"),
        ("**bold** [a](https://x.example) a < b & c", "**bold** [a](https://x.example) a < b & c"),
    ],
)
def test_markdown_for_native_streams_breaks_every_token(text: str, expected: str) -> None:
    assert to_markdown(text) == expected


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("\ue0003\ue001", "3"),  # a slot marker naming no piece
        ("`a` and \ue0000\ue001", "`a` and 0"),  # or naming another piece
        ("\ue002not bold\ue002 **bold**", "not bold *bold*"),
        ("- \ue000\ue001\ue002<!here>", "• &lt;!here&gt;"),
    ],
)
def test_the_renderers_own_markers_in_the_input_are_dropped(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn
    assert escape(markdown) == escape(markdown.translate({0xE000: None, 0xE001: None, 0xE002: None}))
    assert not any(mark in escape(markdown) for mark in "\ue000\ue001\ue002")


def test_escape_is_plain_text() -> None:
    assert escape("Ana <ana@x> & @here *not bold*") == f"Ana &lt;ana@x&gt; &amp; @{WJ}here *not bold*"


def test_streamed_pieces_join_to_the_whole_at_every_split() -> None:
    """Sent piece by piece as ``stream_ready`` allows, the stream shows exactly ``to_markdown`` of the whole."""
    pieces = ["<", "!", "here", "> ", "&", "lt;", "@", "h", "e", "re ", "@", "chan", "nel", " <@U1> ", "& ", "<#", "C>"]
    text = "".join(pieces)
    generator = random.Random(7)
    for _ in range(300):
        cuts = sorted(generator.sample(range(1, len(text)), generator.randint(1, 12)))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        buffer, shown, sent = "", "", ""
        for chunk in chunks:
            buffer += chunk
            ready = stream_ready(buffer)
            sent += to_markdown(buffer[len(shown) : ready])
            shown = buffer[:ready]
        sent += to_markdown(buffer[len(shown) :])  # the end: stopStream sends the rest
        assert sent == to_markdown(text), chunks


@pytest.mark.parametrize(
    ("text", "ready"),
    [("abc", 3), ("abc<", 3), ("a&", 1), ("x @", 2), ("x @he", 2), ("x @here", 7), ("x @hex", 6), ("a@b.c", 5)],
)
def test_stream_ready_holds_back_only_what_the_next_characters_decide(text: str, ready: int) -> None:
    assert stream_ready(text) == ready


@pytest.mark.parametrize(
    ("slack", "plain"),
    [
        ("hello &lt;b&gt; &amp; bye", "hello <b> & bye"),
        ("<https://shop.example/o?a=1&amp;b=2|my order>", "my order (https://shop.example/o?a=1&b=2)"),
        ("<https://shop.example>", "https://shop.example"),
        ("<mailto:ana@example.com|ana@example.com>", "ana@example.com"),
        ("<@U1> and <@U2|bob>", "@Ana and @bob"),
        ("<@U9>", "@someone"),
        ("<#C1|general> <!here> <!subteam^S1|@devs>", "#general @here @devs"),
        ("<!date^1392734382^{date}|Feb 18>", "Feb 18"),
    ],
)
def test_slack_text_becomes_plain_text(slack: str, plain: str) -> None:
    assert from_slack(slack, user_name={"U1": "Ana"}.get) == plain
