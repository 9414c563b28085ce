"""The engine: one customer turn of a conversation, from the stored message to the stored reply.

``Engine.run_turn`` is an async generator of ``supportbot.events`` events. It holds the
conversation's lock for the whole turn, stores the customer's message before calling the
model, loops model → tools → model up to the flow's limit, and stores every message with its
tokens, cost and latency. When the model fails after its retries the customer gets a polite
fallback and an escalation ticket is opened: a turn never ends in silence.

The flows and tools are one ``Snapshot``; ``Engine.swap`` (a hot reload) replaces it for the turns
that start afterwards, while each running turn finishes on the snapshot it started with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from jinja2 import TemplateSyntaxError, meta

from supportbot.config import Config
from supportbot.confirm import DECLINED, confirmation_prompt, is_yes
from supportbot.errors import ConfigError, LLMError
from supportbot.events import (
    Event,
    Handoff,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnFailed,
    TurnFinished,
    TurnStarted,
)
from supportbot.flows import Flow, Flows, TemplateContext
from supportbot.history import fit, to_chat_messages
from supportbot.llm.base import LLM, Completion, LLMRequest, TextChunk
from supportbot.messages import ChatMessage, ImagePart, ToolCall, Usage
from supportbot.pricing import cost_usd
from supportbot.store.base import Conversation, Customer, NewMessage, Outgoing, Store, StoredMessage
from supportbot.store.spending import SpendingStore
from supportbot.templating import environment
from supportbot.tools import ToolContext, ToolRegistry, ToolResult
from supportbot.tools.orders import OrderSource

log = logging.getLogger("supportbot.engine")

TRANSFER_PREFIX = "transfer_to_"
HISTORY_LIMIT = 400
PROMPT_CACHE_SIZE = 1024
FALLBACK_TEXT = (
    "I'm sorry, I can't answer right now because of a technical problem on our side. "
    "I've passed your message to our support team (ticket #{ticket}), and a person will get back to you."
)
LIMIT_TEXT = (
    "This conversation needs a person's attention, so I've passed it to our support team "
    "(ticket #{ticket}). Someone will get back to you here."
)
TOO_LONG_TEXT = (
    "Your message is too long for me to handle ({length} characters; the limit is {limit}). "
    "Could you shorten it or split it into a few messages?"
)
TOO_MANY_IMAGES_TEXT = "You attached {count} images; I can look at {limit} per message. Could you send fewer?"
IMAGE_TOO_LARGE_TEXT = (
    "One of your images is larger than {limit} MB. Could you send a smaller one (a screenshot works)?"
)
EMPTY_ANSWER_RETRIES = 1
"""How many times a model call that answered nothing (no text, no tool calls) is tried again before the fallback."""
_CONTROL = {c: None for c in range(32) if c not in (9, 10, 13)} | {0x7F: None}


def clean_text(text: str) -> str:
    """Customer text as stored and sent: NFC, no NUL or other control characters, no lone surrogates."""
    text = text.translate(_CONTROL)
    text = text.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(text) else text
    return unicodedata.normalize("NFC", text)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _data_url_bytes(url: str) -> int:
    """The size of a ``data:`` URL's content (an http(s) image is fetched by the provider, not us)."""
    if not url.startswith("data:"):
        return 0
    payload = url.partition(",")[2]
    return len(payload) * 3 // 4 if ";base64" in url[: url.find(",")] else len(payload)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Snapshot:
    """One loaded version of the flows and tools, with what the engine caches about them.

    ``Engine.swap`` replaces the whole snapshot in one assignment. A turn takes the snapshot that
    is current when it starts and keeps it to its end (model requests, tool calls, confirmations,
    transfers), so an edit never reaches a turn half-way; the conversation's next turn runs on the
    new one.

    Attributes:
        flows: the flows.
        tools: the registry holding every tool a flow may name.
        loaded_at: when the engine started serving it.
        schemas: the tool definitions offered per flow and verification (``tool_schemas``).
        prompts: rendered system prompts, least recently used first (``Engine._system_prompt``).
    """

    flows: Flows
    tools: ToolRegistry
    loaded_at: datetime
    schemas: dict[tuple[str, bool], tuple[list[dict[str, Any]], int]] = field(default_factory=dict)
    prompts: dict[tuple[Any, ...], ChatMessage] = field(default_factory=dict)

    def tool_schemas(self, flow: Flow, *, verified: bool) -> tuple[list[dict[str, Any]], int]:
        """The tool definitions offered in a flow and a high estimate of the tokens they take.

        Tools declared ``requires_verified`` are offered only to a verified customer; computed once
        per flow and verification.
        """
        key = (flow.name, verified)
        cached = self.schemas.get(key)
        if cached is None:
            schemas = list(self.tools.schemas(flow.tools, verified=verified))
            for target in flow.handoffs:
                schemas.append(_transfer_schema(self.flows.get(target)))
            cached = self.schemas[key] = (schemas, len(json.dumps(schemas)) // 3 if schemas else 0)
        return cached


@dataclass(kw_only=True)
class _Turn:
    """What one running turn knows; lives only while the turn runs."""

    snapshot: Snapshot  # the flows and tools this turn runs on, to its end
    conversation: Conversation
    customer: Customer
    flow: Flow
    history: list[ChatMessage]
    system: ChatMessage | None = None  # rendered once per turn and flow
    seq: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    text: str = ""  # everything the customer was sent this turn
    round_text: str = ""  # what the current model response streamed, not stored yet
    inbox_id: int | None = None  # the customer message this turn answers (its delivery names it)
    # A round of read-only calls and their results, stored with what the turn stores next (``Engine._store``).
    unsaved: list[NewMessage] = field(default_factory=list)

    def reply(self, kind: str, text: str) -> Outgoing:
        """The outbox row that delivers this turn's reply on the conversation's channel."""
        return Outgoing(channel=self.conversation.channel, payload={"kind": kind, "text": text, "turn": self.inbox_id})


class Engine:
    """Runs conversations: flows, tools, the model and the store wired together.

    ``flows`` and ``tools`` are read from the current ``Snapshot``; ``swap`` replaces them for the
    turns that start after it.

    Args:
        config: the loaded configuration.
        flows: the loaded flows.
        tools: the registry holding every tool a flow may name.
        llm: the model client.
        store: persistence.
        http: a shared HTTP session handed to tools.
        orders: the order source handed to tools.
        clock: returns the current time (tests pass a fixed one).
    """

    def __init__(
        self,
        *,
        config: Config,
        flows: Flows,
        tools: ToolRegistry,
        llm: LLM,
        store: Store,
        http: aiohttp.ClientSession,
        orders: OrderSource,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.config = config
        self.llm = llm
        self.store = store
        self.http = http
        self.orders = orders
        self.clock = clock
        self._snapshot = Snapshot(flows=flows, tools=tools, loaded_at=clock())
        self._spending = store if isinstance(store, SpendingStore) else None  # for the daily cost caps

    @property
    def snapshot(self) -> Snapshot:
        """The flows and tools that turns starting now run on."""
        return self._snapshot

    @property
    def flows(self) -> Flows:
        """The current flows."""
        return self._snapshot.flows

    @property
    def tools(self) -> ToolRegistry:
        """The current tool registry."""
        return self._snapshot.tools

    def swap(self, flows: Flows, tools: ToolRegistry) -> Snapshot:
        """Serve ``flows`` and ``tools`` from the next turn on; turns already running finish on theirs.

        The caller has validated them (``supportbot.runtime.load_tools_and_flows``). A conversation
        stored under a flow that no longer exists continues in the default flow.

        Returns:
            The new snapshot.
        """
        snapshot = Snapshot(flows=flows, tools=tools, loaded_at=self.clock())
        self._snapshot = snapshot  # one assignment: a turn sees the old snapshot or the new one, never a mix
        return snapshot

    # -- conversations ---------------------------------------------------------------------------

    async def start_conversation(
        self, customer: Customer, *, channel: str, flow: str | None = None, greet: bool = True
    ) -> tuple[Conversation, str | None]:
        """Open a conversation and store the flow's greeting, if it has one and ``greet``. Returns both.

        A channel where the customer writes first (Slack, email) opens it without a greeting: the
        model would otherwise see a greeting the customer was never shown.
        """
        flows = self._snapshot.flows
        if flow is not None and flow not in flows:
            raise ConfigError(f"there is no flow {flow!r}; the flows are {', '.join(sorted(flows))}")
        chosen = flows.get(flow or self.config.flows.default)
        # The id is drawn first so the greeting can be rendered before anything is stored: then the
        # conversation and its greeting are stored in one transaction.
        new = Conversation(id=uuid.uuid4().hex, customer_id=customer.id, channel=channel, flow=chosen.name)
        greeting = chosen.render_greeting(self._template_context(new, customer, chosen)) if greet else None
        opening = []
        if greeting:
            opening.append(NewMessage(role="assistant", content=greeting, kind="greeting", flow=chosen.name))
        conversation = await self.store.create_conversation(
            customer_id=customer.id, channel=channel, flow=chosen.name, conversation_id=new.id, messages=opening
        )
        return conversation, greeting

    # -- one turn --------------------------------------------------------------------------------

    async def run_turn(
        self, conversation_id: str, text: str, *, images: Sequence[ImagePart] = (), inbox_id: int | None = None
    ) -> AsyncIterator[Event]:
        """Answer one customer message, yielding events as the reply streams.

        The message is stored before anything else happens; if storing fails, the error
        propagates and the channel must not acknowledge the message. The conversation's lock is
        held while the generator runs: iterate it to the end, or close it
        (``contextlib.aclosing``) when giving up on it. ``inbox_id`` names the message's inbox row,
        marked ``stored`` together with the message (``Store.begin_turn``).
        """
        text = clean_text(text)
        refusal = self._refusal(text, images)
        message = NewMessage(role="user", content=text, images=tuple(images), status="error" if refusal else "ok")
        async with self.store.lock(conversation_id):
            start = await self.store.begin_turn(conversation_id, message, history=HISTORY_LIMIT, inbox_id=inbox_id)
            conversation = start.conversation
            if refusal:
                # Kept (nothing is lost) but not processed: the customer is told why.
                saved = await self.store.add_messages(
                    conversation_id,
                    [NewMessage(role="assistant", content=refusal, kind="notice", flow=conversation.flow)],
                    outgoing=Outgoing(channel=conversation.channel,
                                      payload={"kind": "notice", "text": refusal, "turn": inbox_id}),
                )  # fmt: skip
                yield TextDelta(text=refusal, seq=0)
                yield TurnFinished(text=refusal, message_id=saved[0].id)
                return
            if conversation.status == "human":
                # A person has this conversation: the message is stored for them; the bot stays silent.
                yield TurnFinished(text="", message_id=None)
                return
            if conversation.status == "closed":
                conversation = await self.store.update_conversation(conversation_id, status="bot")
            snapshot = self._snapshot
            turn = _Turn(
                snapshot=snapshot,
                conversation=conversation,
                customer=start.customer,
                flow=snapshot.flows.get(conversation.flow),
                history=to_chat_messages(start.history),
                inbox_id=inbox_id,
            )
            yield TurnStarted(conversation_id=conversation_id, flow=turn.flow.name)
            pending = _pending_at(start.history)
            if pending is not None:
                async for event in self._resolve_pending(turn, start.history, pending, text):
                    yield event
            turn.history.append(ChatMessage(role="user", content=text, images=tuple(images)))
            async for event in self._loop(turn):
                yield event

    async def resume_turn(self, conversation_id: str, *, inbox_id: int | None = None) -> AsyncIterator[Event]:
        """Finish a turn that a stop cut off after the customer's message was stored (``inbox_id``'s).

        Yields the events ``run_turn`` would have yielded from there on. A turn that in fact
        ended (its reply is stored), or a conversation a person has taken, gives only a
        ``TurnFinished`` with empty text.
        """
        async with self.store.lock(conversation_id):
            conversation = await self.store.get_conversation(conversation_id)
            if conversation is None:
                raise ConfigError(f"there is no conversation {conversation_id!r} to resume")
            stored = await self.store.list_messages(conversation_id, last=HISTORY_LIMIT)
            last_user = max((i for i, m in enumerate(stored) if m.role == "user"), default=None)
            answered = last_user is None or any(
                m.role == "assistant" and not m.tool_calls and m.content for m in stored[last_user + 1 :]
            )
            customer = await self.store.get_customer(conversation.customer_id)
            if answered or conversation.status != "bot" or customer is None:
                yield TurnFinished(text="", message_id=None)
                return
            snapshot = self._snapshot
            turn = _Turn(
                snapshot=snapshot,
                conversation=conversation,
                customer=customer,
                flow=snapshot.flows.get(conversation.flow),
                history=to_chat_messages(stored),
                inbox_id=inbox_id,
            )
            yield TurnStarted(conversation_id=conversation_id, flow=turn.flow.name)
            async for event in self._loop(turn):
                yield event

    def _refusal(self, text: str, images: Sequence[ImagePart]) -> str | None:
        """Why a message is too large to process, in words for the customer; None when it is fine."""
        limits = self.config.limits
        if len(text) > limits.max_message_chars:
            return TOO_LONG_TEXT.format(length=len(text), limit=limits.max_message_chars)
        if len(images) > limits.max_images_per_message:
            return TOO_MANY_IMAGES_TEXT.format(count=len(images), limit=limits.max_images_per_message)
        if any(_data_url_bytes(image.url) > limits.max_image_bytes for image in images):
            return IMAGE_TOO_LARGE_TEXT.format(limit=limits.max_image_bytes // 1_000_000 or 1)
        return None

    async def _loop(self, turn: _Turn) -> AsyncIterator[Event]:
        limits = turn.flow.limits
        # ``turns`` counts the message of this turn already.
        if turn.conversation.turns > limits.max_turns or turn.conversation.cost_usd >= limits.max_cost_usd:
            reason = (
                f"conversation reached the flow's limit of {limits.max_turns} turns"
                if turn.conversation.turns > limits.max_turns
                else f"conversation cost reached the flow's limit of ${limits.max_cost_usd:.2f}"
            )
            async for event in self._escalate_to_human(turn, reason):
                yield event
            return
        for round_ in range(limits.max_tool_rounds + 1):
            capped = await self._over_daily_cap(turn)
            if capped is not None:
                async for event in self._escalate_to_human(turn, capped):
                    yield event
                return
            started = time.perf_counter()
            request = self._request(turn)
            completion: Completion | None = None
            failure: str | None = None
            wasted = Usage()  # what empty answers cost: billed, so counted with the answer that follows
            for attempt in range(EMPTY_ANSWER_RETRIES + 1):
                completion = None
                shown = False
                try:
                    async for chunk in self.llm.stream(request):
                        if isinstance(chunk, TextChunk):
                            turn.round_text += chunk.text
                            if shown:
                                yield self._delta(turn, chunk.text)
                            elif turn.round_text.strip():
                                # Leading whitespace waits for the text after it: an answer that turns
                                # out empty has then shown the customer nothing to take back.
                                shown = True
                                yield self._delta(turn, turn.round_text, starts_block=True)
                        else:
                            completion = chunk
                except LLMError as exc:
                    failure = str(exc)
                except Exception as exc:
                    # A bug in a model client must not leave the customer without an answer.
                    log.exception("the model client failed in conversation %s", turn.conversation.id)
                    failure = f"the model client failed: {type(exc).__name__}: {exc}"
                if completion is None or not _is_empty(completion):
                    break
                # No text and no tool calls (a content filter, max_tokens spent on thinking, ``choices: []``):
                # a failed round, tried once more; nothing of it is stored or kept for the next attempt.
                failure = _empty_reason(completion)
                wasted += completion.usage
                turn.round_text = ""
                completion = None
                log.warning("%s in conversation %s (attempt %d)", failure, turn.conversation.id, attempt + 1)
            if completion is None:
                async for event in self._fail(turn, failure or "the model client ended without an answer", wasted):
                    yield event
                return
            latency_ms = (time.perf_counter() - started) * 1000
            message = completion.message
            usage = completion.usage + wasted
            cost = cost_usd(usage, self.config.llm.pricing)
            await self._add_spending(turn, cost)
            turn.usage += usage
            turn.cost += cost
            record = NewMessage(
                role="assistant",
                content=message.content,
                tool_calls=message.tool_calls,
                extra=message.extra,
                flow=turn.flow.name,
                model=completion.model or self._model(turn.flow),
                usage=usage,
                cost_usd=cost,
                latency_ms=latency_ms,
            )
            if not message.tool_calls:
                saved = await self._store(turn, [record], outgoing=turn.reply("answer", turn.text))
                yield TurnFinished(
                    text=turn.text,
                    message_id=saved[0].id,
                    usage=turn.usage,
                    cost_usd=turn.cost,
                    latency_ms=latency_ms,
                )
                return
            if round_ == limits.max_tool_rounds:
                # One round of calls more than the flow allows: none of them runs, a person takes over.
                reason = f"the model was still calling tools after {limits.max_tool_rounds} rounds"
                async for event in self._escalate_to_human(turn, reason, billed=usage):
                    yield event
                return
            # Only the first calls of a response run (confirm-held ones count); the rest get a not-run error.
            runnable = message.tool_calls[: limits.max_tool_calls_per_response]
            # A call that will be refused anyway (a verified-only tool, unverified customer) is not put to the customer.
            held = [c for c in runnable if c.name in turn.flow.confirm and not self._refused_unverified(turn, c)]
            if held:
                record = dataclasses.replace(record, status="pending")
            # Stored before any tool runs: a crash in the middle leaves the calls on record. Calls that
            # change nothing are the exception: stored with what follows them (a crash loses only reads).
            read_only = not held and self._read_only(turn, runnable)
            if read_only:
                turn.unsaved.append(record)
            else:
                await self._store(turn, [record])
            turn.round_text = ""  # stored with the calls; the next round starts afresh
            turn.history.append(message)
            not_run = message.tool_calls[len(runnable) :]
            calls = [c for c in runnable if c not in held]
            async for event in self._run_calls(turn, calls, not_run=not_run, defer=read_only):
                yield event
            if held:
                prompt = confirmation_prompt(held, turn.snapshot.tools)
                delta = self._delta(turn, prompt, starts_block=True)
                saved = await self._store(
                    turn,
                    [NewMessage(role="assistant", content=prompt, kind="confirmation", flow=turn.flow.name)],
                    outgoing=turn.reply("confirmation", turn.text),
                )
                yield delta
                yield TurnFinished(
                    text=turn.text,
                    message_id=saved[0].id,
                    usage=turn.usage,
                    cost_usd=turn.cost,
                    awaiting_confirmation=True,
                )
                return
        raise AssertionError("unreachable")  # pragma: no cover - the last round returns whatever it got

    @staticmethod
    def _delta(turn: _Turn, text: str, *, starts_block: bool = False) -> TextDelta:
        """The next piece of the reply; a new block (another model round, a prompt) is set apart."""
        if starts_block and turn.text and not turn.text[-1].isspace():
            text = "\n\n" + text
        turn.text += text
        turn.seq += 1
        return TextDelta(text=text, seq=turn.seq - 1)

    # -- tools -----------------------------------------------------------------------------------

    async def _run_calls(
        self,
        turn: _Turn,
        calls: Sequence[ToolCall],
        *,
        not_run: Sequence[ToolCall] = (),
        claimed: Collection[str] | None = None,
        defer: bool = False,
    ) -> AsyncIterator[Event]:
        """Run a round's tool calls concurrently, store their results, and apply handoffs and transfers.

        ``not_run`` are the calls past the flow's ``max_tool_calls_per_response``: each gets an
        error result saying so, and no events (every call of a response must have its result, or
        the provider refuses the next request). ``claimed``: the confirm-listed calls were claimed
        already (``Store.approve_tool_calls``), and those not in it may not run; None claims each here.
        ``defer``: the calls are read-only and their message is not stored yet; the results wait with it
        (``_store``), unless one asks for a handoff, which changes the conversation: then both are stored now.
        """
        if not_run:
            limit = turn.flow.limits.max_tool_calls_per_response
            log.warning("the model made %d tool calls in one response in conversation %s; ran only the first %d",
                        limit + len(not_run), turn.conversation.id, limit)  # fmt: skip
        for call in calls:
            yield ToolCallStarted(call_id=call.id, name=call.name, arguments=call.arguments)
        if len(calls) <= 1:
            results = [await self._run_call(turn, c, claimed) for c in calls]
        else:
            results = list(await asyncio.gather(*(self._run_call(turn, c, claimed) for c in calls)))
        records = []
        refused = [_not_run(turn.flow.limits.max_tool_calls_per_response, len(not_run)) for _ in not_run]
        for call, result in zip([*calls, *not_run], [*results, *refused], strict=True):
            records.append(
                NewMessage(
                    role="tool",
                    content=result.content,
                    tool_call_id=call.id,
                    tool_name=call.name,
                    status="error" if result.is_error else "ok",
                    flow=turn.flow.name,
                    latency_ms=result.duration_ms,
                )
            )
            turn.history.append(ChatMessage(role="tool", tool_call_id=call.id, name=call.name, content=result.content))
        if defer and not any(r.handoff is not None for r in results):
            turn.unsaved.extend(records)
        elif records:
            await self._store(turn, records)
        for call, result in zip(calls, results, strict=True):
            yield ToolCallFinished(
                call_id=call.id,
                name=call.name,
                result=result.content,
                is_error=result.is_error,
                duration_ms=result.duration_ms,
            )
            if result.handoff is not None:
                handoff = await self._apply_handoff(turn, call, result)
                if handoff is not None:
                    yield handoff

    @staticmethod
    def _read_only(turn: _Turn, calls: Sequence[ToolCall]) -> bool:
        """Whether every one of ``calls`` is of a tool declared ``read_only`` that this flow offers."""
        tools = turn.snapshot.tools
        for call in calls:
            tool = tools.get(call.name)
            if tool is None or not tool.read_only or call.name not in turn.flow.tools:
                return False
        return True

    async def _store(
        self, turn: _Turn, records: Sequence[NewMessage], *, outgoing: Outgoing | None = None
    ) -> list[StoredMessage]:
        """Store ``records``, after the turn's unsaved read-only round if any, in one transaction.

        Returns ``records`` as stored (without the round's).
        """
        unsaved = turn.unsaved
        if not unsaved:
            return await self.store.add_messages(turn.conversation.id, records, outgoing=outgoing)
        saved = await self.store.add_messages(turn.conversation.id, [*unsaved, *records], outgoing=outgoing)
        turn.unsaved = []
        return saved[len(unsaved) :]

    def _refused_unverified(self, turn: _Turn, call: ToolCall) -> bool:
        """Whether the call is of a ``requires_verified`` tool and the customer is not verified."""
        tool = turn.snapshot.tools.get(call.name)
        return tool is not None and tool.requires_verified and not turn.customer.verified

    async def _run_call(self, turn: _Turn, call: ToolCall, claimed: Collection[str] | None = None) -> ToolResult:
        started = time.perf_counter()
        if call.name.startswith(TRANSFER_PREFIX):
            target = call.name.removeprefix(TRANSFER_PREFIX)
            if target not in turn.flow.handoffs:
                return _error(f"transfer to '{target}' is not possible from this conversation", started)
            return ToolResult(
                content=f"Transferred to {target}. Continue helping the customer.",
                is_error=False,
                handoff=target,
                data={"reason": _argument(call, "reason")},
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        if call.name not in turn.flow.tools:
            return _error(
                f"tool '{call.name}' is not available in this conversation; available: "
                + ", ".join(sorted(turn.flow.tools)),
                started,
            )
        if call.name in turn.flow.confirm:
            if claimed is None:
                fresh = await self.store.claim_tool_run(turn.conversation.id, call.id)
            else:
                fresh = call.id in claimed
            if not fresh:
                return _error("this call was already run once; it is not run again", started)
        context = ToolContext(
            customer=turn.customer,
            conversation=turn.conversation,
            channel=turn.conversation.channel,
            flow=turn.flow.name,
            store=self.store,
            config=self.config,
            http=self.http,
            orders=self.orders,
            tool_call_id=call.id,
            now=self.clock(),
        )
        return await turn.snapshot.tools.call(call, context, timeout=self.config.tools.timeout_s)

    async def _apply_handoff(self, turn: _Turn, call: ToolCall, result: ToolResult) -> Handoff | None:
        target = result.handoff or "human"
        data = result.data if isinstance(result.data, dict) else {}
        if target != "human" and (target not in turn.flow.handoffs or target not in turn.snapshot.flows):
            log.warning("tool %s asked to hand over to %r, which flow %s may not hand over to; ignored",
                        call.name, target, turn.flow.name)  # fmt: skip
            return None
        if target == "human":
            ticket = data.get("ticket_id")
            return Handoff(
                target="human",
                reason=str(data.get("reason", "")),
                ticket_id=ticket if isinstance(ticket, int) else None,
            )
        turn.conversation = await self.store.update_conversation(turn.conversation.id, flow=target)
        turn.flow = turn.snapshot.flows.get(target)
        turn.system = None
        return Handoff(target=target, reason=str(data.get("reason") or ""))

    async def _resolve_pending(
        self, turn: _Turn, stored: Sequence[StoredMessage], at: int, reply: str
    ) -> AsyncIterator[Event]:
        """Run, or decline, the tool calls of ``stored[at]``, which waited for this customer reply.

        Only a yes that answers the confirmation prompt directly counts: if anything else happened
        in between (a person took over and wrote, the customer wrote while they did), the calls
        are declined rather than run on a stale approval.
        """
        pending = stored[at]
        calls = {c.id for c in pending.tool_calls}
        answered = {m.tool_call_id for m in stored if m.role == "tool"}
        waiting = [c for c in pending.tool_calls if c.id not in answered]
        direct = all(m.kind == "confirmation" or m.tool_call_id in calls for m in stored[at + 1 :])
        if direct and is_yes(reply):
            # Approved and claimed in one transaction: a crash leaves both or neither (never runs twice).
            confirmed = [c.id for c in waiting if c.name in turn.flow.confirm]
            claimed = await self.store.approve_tool_calls(pending.id, turn.conversation.id, confirmed)
            async for event in self._run_calls(turn, waiting, claimed=claimed):
                yield event
        else:
            await self.store.set_message_status(pending.id, "declined")
            await self.store.add_messages(
                turn.conversation.id,
                [
                    NewMessage(
                        role="tool",
                        content=DECLINED,
                        tool_call_id=c.id,
                        tool_name=c.name,
                        status="declined",
                        flow=turn.flow.name,
                    )
                    for c in waiting
                ],
            )
            for c in waiting:
                turn.history.append(ChatMessage(role="tool", tool_call_id=c.id, name=c.name, content=DECLINED))
        # The results were appended after the call in ``turn.history``; rebuild so each follows its call.
        turn.history = to_chat_messages(await self.store.list_messages(turn.conversation.id, last=HISTORY_LIMIT))
        if turn.history and turn.history[-1].role == "user":
            turn.history.pop()  # the reply itself; run_turn appends it

    # -- failure paths ---------------------------------------------------------------------------

    async def _fail(self, turn: _Turn, reason: str, billed: Usage | None = None) -> AsyncIterator[Event]:
        """The model could not answer: store what streamed, reply with the fallback, open one escalation ticket.

        ``billed`` is what answers that came back empty cost: recorded on the fallback, so the
        conversation's tokens and cost include what the provider charged for them.
        """
        log.warning("turn failed in conversation %s: %s", turn.conversation.id, reason)
        ticket = await self._escalation_ticket(turn, reason)
        fallback = FALLBACK_TEXT.format(ticket=ticket)
        records = []
        if turn.round_text.strip():  # leading whitespace alone was never shown
            records.append(
                NewMessage(role="assistant", content=turn.round_text, status="interrupted", flow=turn.flow.name)
            )
        usage = billed if billed is not None and (billed.input_tokens or billed.output_tokens) else None
        records.append(
            NewMessage(
                role="assistant", content=fallback, kind="fallback", flow=turn.flow.name, usage=usage,
                cost_usd=cost_usd(usage, self.config.llm.pricing) if usage is not None else 0.0,
            )
        )  # fmt: skip
        saved = await self._store(turn, records, outgoing=turn.reply("fallback", fallback))
        yield TurnFailed(reason=reason, fallback_text=fallback, ticket_id=ticket, message_id=saved[-1].id)

    async def _escalate_to_human(self, turn: _Turn, reason: str, billed: Usage | None = None) -> AsyncIterator[Event]:
        """A flow limit was reached: a ticket, the conversation to a person, and a notice to the customer.

        ``billed`` is what the model's last response cost when it is not kept (calls past
        ``max_tool_rounds``): recorded on the notice, so the conversation's cost includes it.
        """
        log.info("conversation %s handed to a person: %s", turn.conversation.id, reason)
        ticket = await self._escalation_ticket(turn, reason)
        await self.store.update_conversation(turn.conversation.id, status="human")
        text = LIMIT_TEXT.format(ticket=ticket)
        records = []
        if turn.round_text.strip():  # text streamed beside the calls was shown; it is kept
            records.append(NewMessage(role="assistant", content=turn.round_text, flow=turn.flow.name))
        records.append(
            NewMessage(
                role="assistant", content=text, kind="notice", flow=turn.flow.name, usage=billed,
                cost_usd=cost_usd(billed, self.config.llm.pricing) if billed is not None else 0.0,
            )
        )  # fmt: skip
        saved = await self._store(turn, records, outgoing=turn.reply("notice", text))
        yield Handoff(target="human", reason=reason, ticket_id=ticket)
        yield TextDelta(text=text, seq=turn.seq)
        yield TurnFinished(text=text, message_id=saved[-1].id)

    async def _over_daily_cap(self, turn: _Turn) -> str | None:
        """Why no model call may be made now: a daily cost cap in ``limits`` is reached; None when none is.

        Checked before each call and added to after it, so calls already running when a cap is reached
        still count: spending may pass a cap by what those cost.
        """
        limits = self.config.limits
        per_customer, everyone = limits.max_cost_usd_per_customer_per_day, limits.max_cost_usd_per_day
        if not (per_customer or everyone) or self._spending is None:
            return None
        spent = await self._spending.spending(turn.customer.id, day=self.clock().astimezone(UTC).date())
        if everyone and spent.everyone >= everyone:
            return f"today's model cost reached limits.max_cost_usd_per_day (${everyone:.2f})"
        if per_customer and spent.customer >= per_customer:
            limit = f"limits.max_cost_usd_per_customer_per_day (${per_customer:.2f})"
            return f"the customer's model cost today reached {limit}"
        return None

    async def _add_spending(self, turn: _Turn, cost: float) -> None:
        """Count a model call's cost towards the daily caps; recorded only while a cap is set."""
        limits = self.config.limits
        capped = limits.max_cost_usd_per_customer_per_day or limits.max_cost_usd_per_day
        if cost and capped and self._spending is not None:
            await self._spending.add_spending(turn.customer.id, cost, day=self.clock().astimezone(UTC).date())

    async def _escalation_ticket(self, turn: _Turn, reason: str) -> int:
        """The conversation's open escalation ticket, or a new one: an outage makes one ticket, not one per message."""
        for ticket in await self.store.list_tickets(conversation_id=turn.conversation.id, status="open"):
            if ticket.kind == "escalation":
                await self.store.update_ticket(ticket.id, actor="bot", note=f"again: {reason}")
                return ticket.id
        last_user = next((m.content for m in reversed(turn.history) if m.role == "user"), "") or ""
        ticket = await self.store.create_ticket(
            subject=f"Bot could not answer: {reason}"[:200],
            description=f"The customer wrote:\n\n{last_user}",
            kind="escalation",
            priority="high",
            conversation_id=turn.conversation.id,
            customer_id=turn.customer.id,
            channel=turn.conversation.channel,
            flow=turn.flow.name,
            actor="bot",
        )
        return ticket.id

    # -- requests --------------------------------------------------------------------------------

    def _template_context(self, conversation: Conversation, customer: Customer, flow: Flow) -> TemplateContext:
        return TemplateContext(
            company=self.config.company,
            customer=customer,
            channel=conversation.channel,
            now=self.clock().replace(second=0, microsecond=0),  # to the minute: prompts can be reused
            conversation_id=conversation.id,
            flow=flow,
        )

    def _system_prompt(self, turn: _Turn) -> ChatMessage:
        """The flow's rendered system prompt, reused while everything it can depend on is the same.

        A conversation's turns often come within a minute; the sandboxed render is the engine's
        largest fixed cost of a turn.
        """
        context = self._template_context(turn.conversation, turn.customer, turn.flow)
        customer = turn.customer
        # A prompt that does not name the conversation is the same for all of a customer's conversations.
        conversation = context.conversation_id if _names_conversation(turn.flow.system_prompt) else None
        key = (turn.flow.name, conversation, context.channel, context.now,
               customer.id, customer.name, customer.email, customer.verified)  # fmt: skip
        prompts = turn.snapshot.prompts  # a reload starts with an empty cache: the templates may have changed
        prompt = prompts.pop(key, None)
        if prompt is None:
            prompt = ChatMessage(role="system", content=turn.flow.render_system_prompt(context))
            if len(prompts) >= PROMPT_CACHE_SIZE:
                del prompts[next(iter(prompts))]  # the least recently used
        prompts[key] = prompt
        return prompt

    def _request(self, turn: _Turn) -> LLMRequest:
        flow = turn.flow
        llm = self.config.llm
        if turn.system is None:
            turn.system = self._system_prompt(turn)
        overrides = flow.model
        max_tokens = overrides.max_tokens or llm.max_tokens
        tools, tool_tokens = turn.snapshot.tool_schemas(flow, verified=turn.customer.verified)
        budget = llm.context_window - max_tokens - tool_tokens
        return LLMRequest(
            messages=fit(turn.system, turn.history, budget=budget),
            tools=tools,
            model=self._model(flow),
            temperature=overrides.temperature if overrides.temperature is not None else llm.temperature,
            top_p=overrides.top_p if overrides.top_p is not None else llm.top_p,
            max_tokens=max_tokens,
            reasoning_effort=overrides.reasoning_effort or llm.reasoning_effort,
            json_mode=overrides.json_mode,
            hints=flow.demo,
        )

    def _model(self, flow: Flow) -> str:
        return flow.model.model or self.config.llm.model


@functools.lru_cache(maxsize=256)
def _names_conversation(source: str) -> bool:
    """Whether a template reads ``conversation_id`` (the only context variable that differs per conversation)."""
    try:
        return "conversation_id" in meta.find_undeclared_variables(environment().parse(source))
    except TemplateSyntaxError:  # not loaded this way; the render will say what is wrong
        return True


def _transfer_schema(target: Flow) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": TRANSFER_PREFIX + target.name,
            "description": f"Hand the conversation to the '{target.name}' specialist: {target.description}",
            "parameters": {
                "type": "object",
                "properties": {"reason": {"type": "string", "description": "Why the customer needs this."}},
                "required": [],
                "additionalProperties": False,
            },
        },
    }


def _is_empty(completion: Completion) -> bool:
    """An answer the customer would see as nothing: no tool calls and no text but whitespace."""
    message = completion.message
    return not message.tool_calls and not (message.content or "").strip()


def _empty_reason(completion: Completion) -> str:
    """Why an empty answer failed, in the provider's own terms (for the log and the escalation ticket)."""
    if not completion.choices:
        said = "no choices"
    elif completion.raw_finish_reason:
        said = f"finish_reason: {completion.raw_finish_reason}"
    else:
        said = "no finish_reason"
    return f"the model returned an empty answer ({said})"


def _pending_at(stored: Sequence[StoredMessage]) -> int | None:
    """Where the last tool-call message waiting for the customer's yes is, if there is one."""
    return next((i for i in range(len(stored) - 1, -1, -1)
                 if stored[i].role == "assistant" and stored[i].status == "pending"), None)  # fmt: skip


def _argument(call: ToolCall, name: str) -> str:
    try:
        value = json.loads(call.arguments or "{}").get(name, "")
    except (ValueError, AttributeError):
        return ""
    return str(value)


def _not_run(limit: int, over: int) -> ToolResult:
    return ToolResult(
        content=(
            f"not run: at most {limit} tool calls of one response are run, and this response made {limit + over}; "
            "make fewer calls at a time, and call it again in a later response if it is still needed"
        ),
        is_error=True,
        handoff=None,
        data=None,
        duration_ms=0.0,
    )


def _error(message: str, started: float) -> ToolResult:
    return ToolResult(
        content=message, is_error=True, handoff=None, data=None, duration_ms=(time.perf_counter() - started) * 1000
    )
