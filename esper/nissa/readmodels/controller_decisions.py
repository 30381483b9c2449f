"""`controller_decisions`: one row per command a controller issued, and what became of it."""

from typing import Any

import msgspec

from esper.leyline.commands import Advance, Cull, Germinate
from esper.leyline.events import CommandIssued, CommandRejected, SeedGerminated, SeedTransitioned
from esper.nissa.projection import Projection
from esper.nissa.tables import Table
from esper.store import Recorded


class DecisionRow(msgspec.Struct):
    seq: int
    epoch: int | None
    controller: str
    command: str
    seed_id: str | None = None
    slot: str | None = None
    blueprint: str | None = None
    cull_reason: str | None = None
    outcome: str = "applied"
    reason: str | None = None
    evidence: str | None = None
    """A rejection's evidence as JSON (`CommandRejected.evidence`: the rule and its numbers)."""
    effect: str | None = None
    log_prob: float | None = None
    value: float | None = None


class DecisionsState(msgspec.Struct):
    rows: list[DecisionRow] = []
    open: bool = False
    """Whether the last row may still receive its result (the events that directly follow it)."""


_COMMAND_TRIGGER = {"Germinate": "germinate", "Advance": "advance", "Cull": "cull"}


class ControllerDecisions(Projection):
    """One row per `CommandIssued`: who decided what, and whether the garden applied or rejected it.

    A command's result is the events right after it: a `CommandRejected` (outcome `rejected`, with the
    reason), or the germination/transition it caused (outcome `applied`, `effect` says which). `Wait`
    is always `applied`. Any other event closes the decision.
    """

    name = "controller_decisions"
    version = 3
    state_type = DecisionsState
    tables = (Table("controller_decisions", DecisionRow, ("run_id", "seq")),)

    HANDLERS = {
        CommandIssued: "_issued", CommandRejected: "_rejected", SeedGerminated: "_germinated",
        SeedTransitioned: "_transitioned",
    }

    def otherwise(self, state: DecisionsState, recorded: Recorded) -> DecisionsState:
        state.open = False
        return state

    def _open(self, state: DecisionsState) -> DecisionRow | None:
        return state.rows[-1] if state.rows and state.open else None

    def _issued(self, state: DecisionsState, r: Recorded) -> DecisionsState:
        e: CommandIssued = r.event
        cmd = e.command
        row = DecisionRow(seq=r.seq, epoch=e.epoch, controller=e.controller, command=_command_name(cmd),
                          log_prob=e.log_prob, value=e.value)
        if isinstance(cmd, Germinate):
            row.slot, row.blueprint = cmd.slot, cmd.blueprint
        elif isinstance(cmd, (Advance, Cull)):
            row.seed_id = cmd.seed_id
            if isinstance(cmd, Cull):
                row.cull_reason = cmd.reason
        state.rows.append(row)
        state.open = row.command in _COMMAND_TRIGGER
        return state

    def _rejected(self, state: DecisionsState, r: Recorded) -> DecisionsState:
        last = self._open(state)
        if last is not None:
            last.outcome, last.reason = "rejected", r.event.reason
            last.evidence = msgspec.json.encode(r.event.evidence).decode() if r.event.evidence else None
            last.slot = last.slot or r.event.slot
        state.open = False
        return state

    def _germinated(self, state: DecisionsState, r: Recorded) -> DecisionsState:
        last = self._open(state)
        if last is not None and r.event.slot == last.slot:
            last.seed_id = r.event.seed_id
        else:
            state.open = False
        return state

    def _transitioned(self, state: DecisionsState, r: Recorded) -> DecisionsState:
        e: SeedTransitioned = r.event
        last = self._open(state)
        if last is not None and _caused_by(last, e):
            last.seed_id, last.slot = e.seed_id, e.slot
            last.effect = f"{e.seed_id} {e.from_stage} → {e.to_stage}"
        state.open = False
        return state

    def rows(self, state: DecisionsState) -> dict[str, list[DecisionRow]]:
        return {"controller_decisions": state.rows}


def _command_name(command: Any) -> str:
    return type(command).__struct_config__.tag


def _caused_by(decision: DecisionRow, e: SeedTransitioned) -> bool:
    if e.trigger != _COMMAND_TRIGGER.get(decision.command):
        return False
    if decision.command == "Germinate":
        return e.slot == decision.slot
    return e.seed_id == decision.seed_id
