"""Folding streamed chunks into one message: OpenAI fragments, Gemini whole calls, extras, usage."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from supportbot.llm.accumulate import ChunkAccumulator, StreamFacts, usage_from_dict
from supportbot.messages import ToolCall, Usage


def delta(finish: str | None = None, usage: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}], "usage": usage}


def run(*chunks: dict[str, Any], facts: StreamFacts | None = None) -> Any:
    acc = ChunkAccumulator(facts)
    texts = [t for t in (acc.add(c) for c in chunks) if t]
    return texts, acc.completion()


SIGNATURE = {"google": {"thought_signature": "CrICAd+/opaque=="}}


def test_text_deltas() -> None:
    texts, completion = run(
        delta(role="assistant", content=""), delta(content="Hel"), delta(content="lo"), delta("stop")
    )
    assert texts == ["Hel", "lo"]
    assert completion.message.content == "Hello"
    assert completion.message.tool_calls == ()
    assert completion.finish_reason == "stop"


def test_openai_fragments_by_index() -> None:
    facts = StreamFacts()
    _, completion = run(
        delta(
            tool_calls=[
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": ""}}
            ]
        ),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"order_id":'}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '"A123"}'}}]),
        delta("tool_calls"),
        facts=facts,
    )
    assert completion.message.tool_calls == (
        ToolCall(id="call_1", name="lookup_order", arguments='{"order_id":"A123"}'),
    )
    assert completion.message.content is None
    assert completion.finish_reason == "tool_calls"
    assert facts.indexed_tool_calls and not facts.indexless_tool_calls


def test_parallel_indexed_calls_interleaved() -> None:
    _, completion = run(
        delta(
            tool_calls=[
                {"index": 0, "id": "a", "function": {"name": "one", "arguments": "{"}},
                {"index": 1, "id": "b", "function": {"name": "two", "arguments": "["}},
            ]
        ),
        delta(tool_calls=[{"index": 1, "function": {"arguments": "]"}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": "}"}}]),
        delta("tool_calls"),
    )
    assert [(c.id, c.name, c.arguments) for c in completion.message.tool_calls] == [
        ("a", "one", "{}"),
        ("b", "two", "[]"),
    ]


def test_gemini_whole_calls_in_one_delta_keep_the_signature_verbatim() -> None:
    facts = StreamFacts()
    first = {
        "extra_content": copy.deepcopy(SIGNATURE),
        "function": {"arguments": '{"order_id":"A1"}', "name": "lookup"},
        "id": "function-call-1",
        "type": "function",
    }
    second = {
        "function": {"arguments": '{"order_id":"A2"}', "name": "lookup"},
        "id": "function-call-2",
        "type": "function",
    }
    _, completion = run(delta(role="assistant", tool_calls=[first, second]), delta("stop"), facts=facts)
    calls = completion.message.tool_calls
    assert [(c.id, c.arguments) for c in calls] == [
        ("function-call-1", '{"order_id":"A1"}'),
        ("function-call-2", '{"order_id":"A2"}'),
    ]
    assert calls[0].extra == {"extra_content": SIGNATURE}
    assert calls[1].extra == {}
    assert completion.finish_reason == "tool_calls"  # Gemini streams say "stop" after tool calls
    assert facts.raw_finish_reason == "stop"
    assert facts.indexless_tool_calls and not facts.indexed_tool_calls


def test_older_gemini_null_index_and_empty_id_are_separate_calls() -> None:
    entry = {"index": None, "id": "", "type": "function", "function": {"name": "lookup", "arguments": '{"n":1}'}}
    later = {"index": None, "id": "", "type": "function", "function": {"name": "lookup", "arguments": '{"n":2}'}}
    _, completion = run(delta(tool_calls=[entry, dict(entry)]), delta(tool_calls=[later]), delta("stop"))
    calls = completion.message.tool_calls
    # Keying them all to one slot would glue the JSON texts together.
    assert [c.arguments for c in calls] == ['{"n":1}', '{"n":1}', '{"n":2}']
    ids = [c.id for c in calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 3
    _, again = run(delta(tool_calls=[entry]), delta("stop"))
    assert again.message.tool_calls[0].id not in ids  # unique across responses, not only within one


@pytest.mark.parametrize(
    "chunk",
    [
        {"choices": "x"},
        {"choices": [{"index": 0, "delta": "hi"}]},
        {"choices": [5]},
        {"choices": [{"index": 0, "delta": {"content": 42}}]},
    ],
)
def test_a_chunk_of_the_wrong_shape_is_an_error_of_its_own(chunk: dict[str, Any]) -> None:
    with pytest.raises((TypeError, AttributeError, ValueError)):
        ChunkAccumulator().add(chunk)
        ChunkAccumulator().completion()


def test_content_as_a_list_of_parts_is_joined() -> None:
    acc = ChunkAccumulator()
    acc.add({"choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "Hi "}, {"type": "x"},
                                                             {"type": "text", "text": "there"}]}}]})  # fmt: skip
    assert acc.completion().message.content == "Hi there"


def test_indexless_fragments_continue_their_call() -> None:
    _, completion = run(
        delta(tool_calls=[{"id": "x1", "function": {"name": "lookup", "arguments": '{"order'}}]),
        delta(tool_calls=[{"function": {"arguments": '_id": "A1"}'}}]),
        delta(tool_calls=[{"id": "x1", "function": {"arguments": ""}}]),  # a gateway repeating the id
        delta("stop"),
    )
    assert [(c.id, c.arguments) for c in completion.message.tool_calls] == [("x1", '{"order_id": "A1"}')]


def test_unknown_keys_of_a_call_are_kept_deep() -> None:
    vertex = {"vertex": {"thought_signature": "sig", "nested": [1, {"k": None}]}}
    _, completion = run(
        delta(
            tool_calls=[
                {
                    "index": 0,
                    "id": "c",
                    "function": {"name": "f", "arguments": "{}"},
                    "extra_content": vertex,
                    "x_gateway": 3,
                }
            ]
        ),
        delta("tool_calls"),
    )
    assert completion.message.tool_calls[0].extra == {"extra_content": vertex, "x_gateway": 3}


def test_arguments_sent_as_an_object_become_json_text() -> None:
    _, completion = run(
        delta(tool_calls=[{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]), delta("stop")
    )
    assert completion.message.tool_calls[0].arguments == '{"a": 1}'


def test_text_extra_content_and_metadata_only_delta_last_wins() -> None:
    _, completion = run(
        delta(content="Hi", extra_content={"google": {"thought_signature": "one"}}),
        delta(extra_content={"google": {"thought_signature": "two"}}),  # metadata only
        delta("stop"),
    )
    assert completion.message.content == "Hi"
    assert completion.message.extra == {"extra_content": {"google": {"thought_signature": "two"}}}


def test_text_and_tool_calls_together() -> None:
    _, completion = run(
        delta(content="Let me check."),
        delta(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]),
        delta("stop"),
    )
    assert completion.message.content == "Let me check."
    assert completion.finish_reason == "tool_calls"


def test_finish_reason_kept_without_tool_calls() -> None:
    _, completion = run(delta(content="cut"), delta("length"))
    assert completion.finish_reason == "length"


def test_refusal_counts_as_text() -> None:
    texts, completion = run(delta(refusal="I can't help with that."), delta("stop"))
    assert texts == ["I can't help with that."]
    assert completion.message.content == "I can't help with that."


def test_usage_last_wins_never_summed_and_model_kept() -> None:
    facts = StreamFacts()
    chunks = [
        {
            **delta(content="a"),
            "model": "m-1",
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        },
        {**delta(content="b"), "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}},
        delta("stop"),
        {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}},
        {"choices": None, "usage": None},
    ]
    _, completion = run(*chunks, facts=facts)
    assert completion.usage == Usage(input_tokens=10, output_tokens=3)
    assert completion.model == "m-1"
    assert facts.usage_seen and facts.chunks == 5


def test_no_usage_gives_zero_usage() -> None:
    facts = StreamFacts()
    _, completion = run(delta(content="a"), delta("stop"), facts=facts)
    assert completion.usage == Usage()
    assert not facts.usage_seen


def test_finished_only_after_a_finish_reason() -> None:
    acc = ChunkAccumulator()
    acc.add(delta(content="a"))
    assert not acc.finished
    acc.add(delta("stop"))
    assert acc.finished


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
            Usage(input_tokens=100, output_tokens=20),
        ),
        # Gemini: thinking is left out of completion_tokens but is in the total (and billed as output).
        (
            {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 170},
            Usage(input_tokens=100, output_tokens=70),
        ),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 70,
                "total_tokens": 170,
                "completion_tokens_details": {"reasoning_tokens": 50},
                "prompt_tokens_details": {"audio_tokens": 30},
            },
            Usage(input_tokens=100, output_tokens=70, reasoning_tokens=50, audio_input_tokens=30),
        ),
        ({"prompt_tokens": 5, "completion_tokens": 2}, Usage(input_tokens=5, output_tokens=2)),
        ({"prompt_tokens": 5, "completion_tokens_details": None}, Usage(input_tokens=5)),
    ],
)
def test_usage_from_dict(raw: dict[str, Any], expected: Usage) -> None:
    assert usage_from_dict(raw) == expected


def test_reasoning_details_merge_per_type_and_index_and_pieces_without_index_stay_apart() -> None:
    _, completion = run(
        delta(reasoning_details=[{"type": "reasoning.summary", "summary": "Plan ", "index": 0}]),
        delta(reasoning_details=[{"type": "reasoning.summary", "summary": "made.", "index": 0, "id": "s1"}]),
        delta(
            reasoning_details=[
                {"type": "reasoning.encrypted", "data": "AAA", "id": "e1"},
                {"type": "reasoning.encrypted", "data": "BBB", "id": "e1"},
            ]
        ),
        delta(reasoning_details=["not a detail", {"type": "reasoning.text", "text": "x", "index": 1}]),
        delta("stop", content="ok"),
    )
    assert completion.message.extra == {
        "reasoning_details": [
            {"type": "reasoning.summary", "summary": "Plan made.", "index": 0, "id": "s1"},
            {"type": "reasoning.encrypted", "data": "AAA", "id": "e1"},
            {"type": "reasoning.encrypted", "data": "BBB", "id": "e1"},
            {"type": "reasoning.text", "text": "x", "index": 1},
        ]
    }


def test_empty_choices_and_raw_finish_reason() -> None:
    _, empty = run({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 0}})
    assert not empty.choices and empty.raw_finish_reason is None and not empty.message.content
    _, filtered = run(delta("content_filter"))
    assert filtered.choices and filtered.raw_finish_reason == "content_filter" == filtered.finish_reason
