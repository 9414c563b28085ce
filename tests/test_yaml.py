from __future__ import annotations

import pytest

from supportbot._yaml import Problems, YamlSyntaxError, did_you_mean, dotted, is_secret_name, load_yaml, show
from supportbot.errors import ConfigError

DOC = """\
# a comment
llm:
  model: m
  pricing:
    input_per_mtok: 1
tools:
  - a
  -
    name: b
flow: [x, y]
prompt: |
  first line
  second line
"""


def test_lines_of_keys_and_items() -> None:
    doc = load_yaml(DOC)
    assert doc.data["tools"] == ["a", {"name": "b"}]
    assert doc.line(("llm",)) == 2
    assert doc.line(("llm", "model")) == 3
    assert doc.line(("llm", "pricing", "input_per_mtok")) == 5
    assert doc.line(("tools", 0)) == 7
    assert doc.line(("tools", 1)) == 9
    assert doc.line(("tools", 1, "name")) == 9
    assert doc.line(("flow", 1)) == 10
    assert doc.line(()) == 2


def test_missing_path_falls_back_to_nearest_ancestor() -> None:
    doc = load_yaml(DOC)
    assert doc.line(("llm", "pricing", "nope")) == 4
    assert doc.line(("nothing", "here")) == 2


def test_block_scalar_text_starts_on_the_next_line() -> None:
    doc = load_yaml(DOC)
    assert doc.line(("prompt",)) == 11
    assert doc.value_line(("prompt",)) == 12
    assert doc.value_line(("llm", "model")) == 3


def test_empty_document_is_none() -> None:
    assert load_yaml("# nothing\n").data is None


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("a: 1\nb: [1, 2\nc: 3\n", 3, "expected ',' or ']'"),
        ("a: 1\n  b: 2\n", 2, "mapping values are not allowed"),
        ("a: 1\nb: 2\na: 3\n", 3, "duplicate key 'a' (first at line 1)"),
        ("a: 1\n---\nb: 2\n", 2, "single document"),
        ("a: &x [1, *x]\n", 1, "refers to its own parent"),
        ("? [1, 2]\n: x\n", 1, "mapping key must be a plain value"),
        ("a: !!python/object:os.system x\n", 1, "could not determine a constructor"),
    ],
)
def test_syntax_errors_carry_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(YamlSyntaxError) as info:
        load_yaml(text)
    assert info.value.line == line
    assert words in info.value.problem


def test_alias_bombs_are_refused() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    with pytest.raises(YamlSyntaxError, match="too many values"):
        load_yaml("\n".join(levels) + "\n")


def test_merge_keys_may_be_overridden() -> None:
    doc = load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
    assert doc.data["other"] == {"x": 1, "y": 3}


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("bot_token", True),
        ("password_hash", True),
        ("signing_secret", True),
        ("apiKey", True),
        ("Authorization", True),
        ("max_tokens", False),
        ("tokenizer", False),
        ("model", False),
        (3, False),
    ],
)
def test_secret_names(name: object, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_helpers() -> None:
    assert dotted(("tools", 1, "name")) == "tools[1].name"
    assert dotted(("llm", "max_tokens")) == "llm.max_tokens"
    assert did_you_mean("lookup_ordr", ["lookup_order", "create_ticket"]) == "; did you mean 'lookup_order'?"
    assert did_you_mean("zzz", ["lookup_order"]) == ""
    assert show("abc") == "'abc'"
    assert show("sk-123", secret=True) == "a hidden value"
    assert show([1]) == "a list"


def test_problems_are_raised_together_sorted_by_file_and_line() -> None:
    problems = Problems()
    assert not problems
    problems.add("b.yaml", 3, "x", "bad x")
    problems.add("a.yaml", 9, "y", "bad y")
    problems.add("a.yaml", 2, "", "invalid YAML")
    problems.add("a.yaml", 2, "", "invalid YAML")
    with pytest.raises(ConfigError) as info:
        problems.raise_if_any()
    assert str(info.value).splitlines() == ["a.yaml:2: invalid YAML", "a.yaml:9: y: bad y", "b.yaml:3: x: bad x"]
