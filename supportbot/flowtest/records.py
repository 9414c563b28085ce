"""What a flow test saw: the record of each turn and case, and the failures the assertions found.

The runner builds these from the engine's events and the store; the assertions read ``Outcome``s
(one per turn, one for the whole case); the report renders the transcript from ``TurnRecord``s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

EntryKind = Literal["bot", "call", "result", "error", "ticket", "handoff", "transfer", "confirm", "failed", "note"]


@dataclass(frozen=True, kw_only=True, slots=True)
class CallRecord:
    """One tool call the engine ran.

    Attributes:
        name: the tool.
        arguments: the arguments as the model sent them, decoded (a str when they were not JSON).
        result: what the tool answered (the text the model read).
        is_error: whether the result was an error.
    """

    name: str
    arguments: dict[str, Any] | str
    result: str = ""
    is_error: bool = False

    def shown(self) -> str:
        """``lookup_order {"order_id": "A1001"}``."""
        return f"{self.name} {show_value(self.arguments)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class TicketRecord:
    """A ticket opened in the conversation, as the store has it."""

    id: int
    subject: str
    description: str
    priority: str
    status: str
    kind: str

    def shown(self) -> str:
        return f"ticket #{self.id} {self.subject!r} (kind {self.kind}, priority {self.priority}, status {self.status})"


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What the assertions check: of one turn, or of a whole case.

    Attributes:
        reply: the text the customer got (a confirmation question and a fallback too); of a case, its last turn's.
        calls: the tool calls run.
        tickets: the tickets opened.
        handoff: whether the conversation was handed to a person.
        transfers: the flows the conversation was transferred to, in order.
        flow: the flow the conversation is in afterwards.
        confirmations: the tools whose calls the customer was asked to approve.
        asked: whether the turn ended asking for approval (of a case: whether any turn did).
        failure: why the model failed (the customer got the fallback), or None.
        tokens: input plus output tokens.
        cost_usd: what the model responses cost.
        system_prompt: the system prompt the model was sent (or would have been).
    """

    reply: str
    calls: tuple[CallRecord, ...] = ()
    tickets: tuple[TicketRecord, ...] = ()
    handoff: bool = False
    transfers: tuple[str, ...] = ()
    flow: str = ""
    confirmations: tuple[str, ...] = ()
    asked: bool = False
    failure: str | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    system_prompt: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    """One line of a turn's transcript besides the customer's message and the reply."""

    kind: EntryKind
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class TurnRecord:
    """One turn: the customer's message, what happened in order, and its outcome."""

    number: int
    customer: str
    entries: tuple[Entry, ...]
    outcome: Outcome
    scripted: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class Failure:
    """An assertion that did not hold, or a problem of the case itself (a script too short, a crash).

    Attributes:
        where: ``file:line`` of the assertion (or of what failed).
        what: which check, e.g. ``turn 1: reply_contains``.
        message: what went wrong, in a sentence.
        expected: lines shown as ``- expected``.
        actual: lines shown as ``+ actual``.
    """

    where: str
    what: str
    message: str
    expected: tuple[str, ...] = ()
    actual: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class CaseRecord:
    """Everything one run of a case did, for the transcript."""

    greeting: str | None
    customer: str
    flow: str
    channel: str
    mode: str
    turns: tuple[TurnRecord, ...]
    logs: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class CaseRun:
    """One run of one case."""

    failures: tuple[Failure, ...]
    record: CaseRecord
    duration_ms: float

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True, kw_only=True, slots=True)
class CaseResult:
    """A case over all its runs (``--repeat``).

    Attributes:
        file: the test file's name as shown in progress lines (``SpecFile.name``).
        path: the test file relative to the working directory (``SpecFile.shown``): what results are keyed by.
        name: the case's name.
        where: ``file:line`` of the case.
        runs: each run, in order.
        min_pass_rate: the share of runs that must pass.
    """

    file: str
    path: str
    name: str
    where: str
    runs: tuple[CaseRun, ...]
    min_pass_rate: float = 1.0

    @property
    def passes(self) -> int:
        return sum(run.passed for run in self.runs)

    @property
    def rate(self) -> float:
        return self.passes / len(self.runs) if self.runs else 0.0

    @property
    def passed(self) -> bool:
        return bool(self.runs) and self.rate >= self.min_pass_rate

    @property
    def duration_ms(self) -> float:
        return sum(run.duration_ms for run in self.runs)

    @property
    def shown_run(self) -> CaseRun | None:
        """The run to report: the first that failed, else the last."""
        return next((run for run in self.runs if not run.passed), self.runs[-1] if self.runs else None)


def show_value(value: Any) -> str:
    """A value as compact JSON (keys in the order given), or the text itself."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)
