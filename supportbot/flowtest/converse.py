"""One test case's conversation: runs its turns through the engine and records what each did.

A turn's record is read from the engine's events (text, tool calls and results, handoffs,
transfers, the end of the turn) and from the store (the tickets opened, the flow after the turn,
the tokens and cost it added, the calls waiting for the customer's yes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from supportbot.engine import Engine
from supportbot.events import Event, Handoff, TextDelta, ToolCallFinished, ToolCallStarted, TurnFailed, TurnFinished
from supportbot.flows import TemplateContext
from supportbot.flowtest.records import CallRecord, CaseRecord, Entry, EntryKind, Outcome, TicketRecord, TurnRecord
from supportbot.flowtest.scripted import CaseModel
from supportbot.flowtest.spec import ModelStep
from supportbot.store.base import Conversation as StoredConversation
from supportbot.store.base import Customer, Store, Ticket

RESULT_SHOWN = 300
"""Characters of a tool result shown in a transcript."""


class _Events:
    """Collects one turn's events."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.reply = ""
        self.calls: list[CallRecord] = []
        self.started: dict[str, ToolCallStarted] = {}
        self.handoff = False
        self.transfers: list[str] = []
        self.asked = False
        self.failure: str | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self.reply += event.text
            last = self.entries[-1] if self.entries else None
            if last is not None and last.kind == "bot":
                self.entries[-1] = Entry(kind="bot", text=last.text + event.text)
            else:
                self._entry("bot", event.text.lstrip("\n"))
        elif isinstance(event, ToolCallStarted):
            self.started[event.call_id] = event
            self._entry("call", f"{event.name} {_shorten(event.arguments)}")
        elif isinstance(event, ToolCallFinished):
            started = self.started.get(event.call_id)
            arguments = _decode(started.arguments) if started is not None else {}
            self.calls.append(CallRecord(name=event.name, arguments=arguments, result=event.result,
                                         is_error=event.is_error))  # fmt: skip
            self._entry("error" if event.is_error else "result", f"{event.name}: {_shorten(event.result)}")
        elif isinstance(event, Handoff):
            if event.target == "human":
                self.handoff = True
                ticket = f" (ticket #{event.ticket_id})" if event.ticket_id else ""
                self._entry("handoff", f"handed to a person{ticket}: {event.reason}")
            else:
                self.transfers.append(event.target)
                self._entry("transfer", f"transferred to flow {event.target}")
        elif isinstance(event, TurnFinished):
            self.asked = event.awaiting_confirmation
            if not event.text:
                self._entry("note", "a person has this conversation: the bot stayed silent")
        elif isinstance(event, TurnFailed):
            self.failure = event.reason
            self.reply += ("\n\n" if self.reply else "") + event.fallback_text
            self._entry("failed", f"the model failed ({event.reason}); the customer got: {event.fallback_text}")

    def _entry(self, kind: EntryKind, text: str) -> None:
        self.entries.append(Entry(kind=kind, text=text))


class Conversation:
    """The conversation of one run of a case."""

    def __init__(self, *, engine: Engine, model: CaseModel, store: Store, customer: Customer,
                 conversation: StoredConversation, greeting: str | None, mode: str) -> None:  # fmt: skip
        self.engine = engine
        self.model = model
        self.store = store
        self.customer = customer
        self.started = conversation
        self.greeting = greeting
        self.mode = mode
        self.turns: list[TurnRecord] = []
        self._first_prompt: str | None = None
        self._last = conversation  # as the last turn left it: the next turn's tokens and cost start here
        self._seen: set[int] = set()  # the tickets opened so far

    @property
    def id(self) -> str:
        return self.started.id

    async def turn(self, number: int, text: str, script: Sequence[ModelStep] | None) -> TurnRecord:
        """Run turn ``number`` (1-based): the customer writes ``text``; ``script`` answers for the model if given."""
        scripted = self.model.begin_turn(number, script)
        before = self._last
        events = _Events()
        async for event in self.engine.run_turn(self.id, text):
            events.add(event)
        after = self._last = await self._conversation()
        tickets = tuple(_ticket(t) for t in await self._tickets() if t.id not in self._seen)
        self._seen.update(ticket.id for ticket in tickets)
        for ticket in tickets:
            events.entries.append(Entry(kind="ticket", text=f"opened {ticket.shown()}"))
        held = await self._held() if events.asked else ()
        if held:
            events.entries.append(Entry(kind="confirm", text="asked the customer to approve " + ", ".join(held)))
        prompt = self._prompt() or self._render(after)
        if self._first_prompt is None and self.model.requests:
            self._first_prompt = prompt
        outcome = Outcome(
            reply=events.reply,
            calls=tuple(events.calls),
            tickets=tickets,
            handoff=events.handoff,
            transfers=tuple(events.transfers),
            flow=after.flow,
            confirmations=held,
            asked=events.asked,
            failure=events.failure,
            tokens=after.input_tokens + after.output_tokens - before.input_tokens - before.output_tokens,
            cost_usd=max(after.cost_usd - before.cost_usd, 0.0),
            system_prompt=prompt,
        )
        record = TurnRecord(number=number, customer=text, entries=tuple(events.entries), outcome=outcome,
                            scripted=scripted)  # fmt: skip
        self.turns.append(record)
        return record

    async def outcome(self) -> Outcome:
        """What the whole conversation did (the reply: its last turn's)."""
        now = await self._conversation()
        outcomes = [turn.outcome for turn in self.turns]
        return Outcome(
            reply=outcomes[-1].reply if outcomes else "",
            calls=tuple(call for o in outcomes for call in o.calls),
            tickets=tuple(_ticket(t) for t in await self._tickets()),
            handoff=any(o.handoff for o in outcomes),
            transfers=tuple(flow for o in outcomes for flow in o.transfers),
            flow=now.flow,
            confirmations=tuple(dict.fromkeys(name for o in outcomes for name in o.confirmations)),
            asked=any(o.asked for o in outcomes),
            failure=next((o.failure for o in outcomes if o.failure is not None), None),
            tokens=now.input_tokens + now.output_tokens,
            cost_usd=now.cost_usd,
            system_prompt=self._first_prompt or self._render(self.started),
        )

    def record(self, *, logs: tuple[str, ...] = ()) -> CaseRecord:
        """The transcript of what ran so far."""
        customer = self.customer
        who = " ".join(part for part in (customer.name, f"<{customer.email}>" if customer.email else None) if part)
        who = (who or "an anonymous visitor") + (" (verified)" if customer.verified else " (not verified)")
        return CaseRecord(greeting=self.greeting, customer=who, flow=self.started.flow, channel=self.started.channel,
                          mode=self.mode, turns=tuple(self.turns), logs=logs)  # fmt: skip

    async def _conversation(self) -> StoredConversation:
        found = await self.store.get_conversation(self.id)
        if found is None:  # pragma: no cover - conversations are never deleted
            raise LookupError(f"conversation {self.id} vanished")
        return found

    async def _tickets(self) -> list[Ticket]:
        return sorted(await self.store.list_tickets(conversation_id=self.id), key=lambda t: t.id)

    async def _held(self) -> tuple[str, ...]:
        """The tools of the calls waiting for the customer's yes."""
        messages = await self.store.list_messages(self.id, last=50)
        answered = {m.tool_call_id for m in messages if m.role == "tool"}
        pending = next((m for m in reversed(messages) if m.role == "assistant" and m.status == "pending"), None)
        return tuple(c.name for c in pending.tool_calls if c.id not in answered) if pending is not None else ()

    def _prompt(self) -> str | None:
        """The system prompt of this turn's first model request, if the engine asked the model."""
        for request in self.model.requests:
            first = request.messages[0] if request.messages else None
            if first is not None and first.role == "system":
                return first.content or ""
        return None

    def _render(self, conversation: StoredConversation) -> str:
        """The system prompt the engine would send in ``conversation``'s flow now."""
        engine = self.engine
        context = TemplateContext(
            company=engine.config.company,
            customer=self.customer,
            channel=conversation.channel,
            now=engine.clock().replace(second=0, microsecond=0),
            conversation_id=conversation.id,
        )
        return engine.flows.get(conversation.flow).render_system_prompt(context)


def _ticket(ticket: Ticket) -> TicketRecord:
    return TicketRecord(id=ticket.id, subject=ticket.subject, description=ticket.description,
                        priority=ticket.priority, status=ticket.status, kind=ticket.kind)  # fmt: skip


def _decode(arguments: str) -> dict[str, Any] | str:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return arguments
    return value if isinstance(value, dict) else arguments


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= RESULT_SHOWN else flat[: RESULT_SHOWN - 1] + "…"
