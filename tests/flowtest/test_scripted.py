"""``CaseModel``: a turn's script answers the engine's requests in order; otherwise the fallback model does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import pytest

from supportbot.errors import LLMError
from supportbot.flowtest.scripted import CaseModel, ScriptExhausted, ordinal
from supportbot.flowtest.spec import ModelStep
from supportbot.llm.base import Completion, LLMRequest, StreamEvent, TextChunk
from supportbot.messages import ChatMessage, Usage

REQUEST = LLMRequest(messages=[ChatMessage(role="system", content="s" * 400), ChatMessage(role="user", content="hi")],
                     model="m")  # fmt: skip


class Recorder:
    """A fallback model that answers "fallback" and keeps the requests."""

    def __init__(self) -> None:
        self.requests: list[LLMRequest] = []

    async def stream(self, request: LLMRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        yield Completion(message=ChatMessage(role="assistant", content="fallback"), finish_reason="stop")

    async def aclose(self) -> None:
        return None


def steps(*items: dict[str, object]) -> list[ModelStep]:
    return [ModelStep.model_validate(item) for item in items]


async def answer(model: CaseModel, request: LLMRequest = REQUEST) -> tuple[str, Completion]:
    text, completion = "", None
    async for event in model.stream(request):
        if isinstance(event, TextChunk):
            text += event.text
        else:
            completion = event
    assert completion is not None
    return text, completion


@pytest.mark.parametrize(
    ("number", "word"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"), (13, "13th"), (21, "21st"),
     (22, "22nd"), (101, "101st")],
)  # fmt: skip
def test_ordinal(number: int, word: str) -> None:
    assert ordinal(number) == word


async def test_the_script_answers_in_order() -> None:
    model = CaseModel(fallback=Recorder())
    assert model.begin_turn(1, steps({"call": "lookup_order", "args": {"order_id": "A1001"}},
                                     {"calls": [{"call": "a"}, {"call": "b", "args": {"x": 1}}]},
                                     {"reply": "It has  shipped.", "usage": {"output_tokens": 7}}))  # fmt: skip
    _, first = await answer(model)
    assert first.finish_reason == "tool_calls" and first.model == "scripted"
    (call,) = first.message.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("lookup_order", {"order_id": "A1001"})
    _, second = await answer(model)
    assert [(c.name, json.loads(c.arguments)) for c in second.message.tool_calls] == [("a", {}), ("b", {"x": 1})]
    assert len({c.id for c in (*first.message.tool_calls, *second.message.tool_calls)}) == 3
    text, third = await answer(model)
    assert text == third.message.content == "It has  shipped."
    # Usage left out is estimated as characters / 4: the request's (402) in, the response's out.
    assert third.usage == Usage(input_tokens=100, output_tokens=7)
    assert first.usage == Usage(input_tokens=100, output_tokens=len('lookup_order{"order_id": "A1001"}') // 4)
    assert model.unused() is None and model.exhausted is None
    assert len(model.requests) == 3


async def test_an_error_step_fails_like_a_provider() -> None:
    model = CaseModel(fallback=Recorder())
    model.begin_turn(1, steps({"error": "the provider is down"}))
    with pytest.raises(LLMError, match="the provider is down"):
        await answer(model)


async def test_too_few_entries() -> None:
    model = CaseModel(fallback=Recorder())
    model.begin_turn(2, steps({"call": "lookup_order"}, {"call": "lookup_order"}))
    await answer(model)
    await answer(model)
    with pytest.raises(ScriptExhausted):
        await answer(model)
    assert model.exhausted == "the engine asked the model a 3rd time but model: has 2 entries; add a reply:"
    assert model.unused() is None


@pytest.mark.parametrize(
    ("script", "asked", "message"),
    [
        ([{"reply": "a"}, {"reply": "b"}, {"reply": "c"}], 1,
         "has 3 entries but the engine asked the model only once: the 1st is a reply:, which ends the turn; remove "
         "the entries after it, or move them to the next turn"),
        ([{"call": "create_ticket"}, {"reply": "b"}], 1,
         "has 2 entries but the engine asked the model only once: the turn ended after the 1st (a confirmation "
         "question or a handoff ends it); remove the entries after it, or move them to the next turn"),
        ([{"reply": "a"}], 0,
         "has 1 entry but the engine did not ask the model in this turn (a person has the conversation, or the "
         "message was refused); remove model:"),
    ],
)  # fmt: skip
async def test_too_many_entries(script: Sequence[dict[str, object]], asked: int, message: str) -> None:
    model = CaseModel(fallback=Recorder())
    model.begin_turn(1, steps(*script))
    for _ in range(asked):
        await answer(model)
    assert model.unused() == message


async def test_a_turn_without_script_goes_to_the_fallback() -> None:
    fallback = Recorder()
    model = CaseModel(fallback=fallback)
    model.begin_turn(1, steps({"reply": "scripted"}))
    await answer(model)
    assert not model.begin_turn(2, None)
    _, completion = await answer(model)
    assert completion.message.content == "fallback" and fallback.requests == [REQUEST] and model.unused() is None


async def test_live_ignores_scripts() -> None:
    fallback = Recorder()
    model = CaseModel(fallback=fallback, scripted=False)
    assert not model.begin_turn(1, steps({"reply": "scripted"}))
    _, completion = await answer(model)
    assert completion.message.content == "fallback" and model.unused() is None and model.requests == [REQUEST]
