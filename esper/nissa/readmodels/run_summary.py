"""`run_summary`: one row per run, its config, status, latest and final numbers, and how its seeds ended."""

import msgspec

from esper.leyline.events import (
    CommandIssued,
    CommandRejected,
    EpochEnded,
    RunFailed,
    RunFinished,
    RunResumed,
    RunStarted,
    SeedGerminated,
    SeedTransitioned,
)
from esper.leyline.status import INCOMPLETE, status_after
from esper.nissa.projection import Projection
from esper.nissa.readmodels.stages import CULLED, FOSSILIZED
from esper.nissa.tables import Table
from esper.store import Recorded


class RunSummaryRow(msgspec.Struct):
    """The fold's state is the row itself."""

    task: str | None = None
    controller: str | None = None
    seed: int | None = None
    epochs_planned: int | None = None
    host_params: int | None = None
    slots: str | None = None
    status: str = INCOMPLETE
    """`esper.leyline.status`: finished, failed or incomplete (a report shows a live incomplete run as running)."""
    epochs: int = 0
    last_epoch: int | None = None
    val_accuracy: float | None = None
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    test_accuracy: float | None = None
    val_bits_per_char: float | None = None
    """Text task: the validation loss in bits per character, latest or final (None for other tasks)."""
    test_bits_per_char: float | None = None
    params: int | None = None
    germinated: int = 0
    fossilized: int = 0
    built: int = 0
    """Seeds built into the host before the first epoch (a scratch run's architecture): not germinated, not judged."""
    culled: int = 0
    commands: int = 0
    rejected: int = 0
    events: int = 0
    error: str | None = None


class RunSummary(Projection):
    """One row per run: its config, status, latest and final numbers, and how its seeds ended."""

    name = "run_summary"
    version = 4
    state_type = RunSummaryRow
    tables = (Table("run_summary", RunSummaryRow, ("run_id",)),)

    HANDLERS = {
        RunStarted: "_started", EpochEnded: "_epoch", SeedGerminated: "_germinated",
        SeedTransitioned: "_transitioned", CommandIssued: "_issued", CommandRejected: "_rejected",
        RunFinished: "_finished", RunFailed: "_failed", RunResumed: "_resumed",
    }

    def apply(self, state: RunSummaryRow, recorded: Recorded) -> RunSummaryRow:
        state.events = recorded.seq
        state.status = status_after(state.status, recorded.event)
        return super().apply(state, recorded)

    def _started(self, s: RunSummaryRow, r: Recorded) -> RunSummaryRow:
        e: RunStarted = r.event
        s.task, s.controller, s.seed = e.config.task, e.config.controller, e.config.seed
        s.epochs_planned, s.host_params, s.slots = e.config.epochs, e.host_params, ",".join(e.slots)
        s.params = e.host_params
        return s

    def _epoch(self, s: RunSummaryRow, r: Recorded) -> RunSummaryRow:
        e: EpochEnded = r.event
        s.epochs += 1
        s.last_epoch, s.val_accuracy, s.params = e.epoch, e.val_accuracy, e.params
        s.val_bits_per_char = e.val_bits_per_char
        if s.best_val_accuracy is None or e.val_accuracy > s.best_val_accuracy:
            s.best_val_accuracy, s.best_epoch = e.val_accuracy, e.epoch
        return s

    def _germinated(self, s: RunSummaryRow, r: Recorded) -> RunSummaryRow:
        s.germinated += 1
        return s

    def _transitioned(self, s: RunSummaryRow, r: Recorded) -> RunSummaryRow:
        if r.event.trigger == "build":  # its SeedGerminated announced it: a build, not a germination
            s.germinated, s.built = s.germinated - 1, s.built + 1
        elif r.event.to_stage == FOSSILIZED:
            s.fossilized += 1
        elif r.event.to_stage == CULLED:
            s.culled += 1
        return s

    def _issued(self, s: RunSummaryRow, r: Recorded) -> RunSummaryRow:
        s.commands += 1
        return s

    def _rejected(self, s: RunSummaryRow, r: Recorded) -> RunSummaryRow:
        s.rejected += 1
        return s

    def _finished(self, s: RunSummaryRow, r: Recorded) -> RunSummaryRow:
        e: RunFinished = r.event
        s.val_accuracy, s.test_accuracy, s.params = e.val_accuracy, e.test_accuracy, e.params
        s.val_bits_per_char, s.test_bits_per_char = e.val_bits_per_char, e.test_bits_per_char
        return s

    def _failed(self, s: RunSummaryRow, r: Recorded) -> RunSummaryRow:
        s.error = r.event.error
        return s

    def _resumed(self, s: RunSummaryRow, r: Recorded) -> RunSummaryRow:
        s.error = None  # the interruption no longer ends the run
        return s

    def rows(self, state: RunSummaryRow) -> dict[str, list[RunSummaryRow]]:
        return {"run_summary": [state]}
