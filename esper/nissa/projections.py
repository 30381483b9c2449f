"""Projections: folds of the event log into read models kept in DuckDB tables.

A projection is a fold, `apply(state, event) -> state`, dispatched on the event's type, over the events
of one run in `seq` order. Its read model is a few tables whose rows are a pure function of the folded
state (`rows(state)`). The `Projector` keeps, per projection and per run, the last `seq` it folded, that
event's `event_id`, and the folded state (JSON) in `nissa_checkpoints`, all in the same transaction as
the rows. So it catches up incrementally (it reads only the events after each checkpoint), and a
rebuild from zero gives the very same tables: the state round-trips through JSON exactly.

If the log under a checkpoint changed (the event at the checkpointed `seq` has another `event_id` or hash,
or the run is gone from the workspace), that run is folded again from its first event. The events read are
checked against the run's hash chain (esper.store.chain), continuing from the hash the checkpoint saw, so
the check costs what the catch-up reads; `catch_up(check=runs)` also checks those runs' whole chains (what
`esper report` asks for the runs it draws). A run whose check fails is dropped from every read model (its
rows and checkpoints deleted, a note added, the reason kept in `altered`): the projections never serve an
altered log, old values or new. If a projection's
`version` changed, its tables are rebuilt. `blueprint_stats` is not a fold of its own: it aggregates
`seed_lifecycle` across runs and is recomputed whenever that table changes (so its value never depends
on the order in which runs were caught up).

The projection database is `<workspace>/.nissa/projections.duckdb` (never a `*.duckdb` in the workspace
root: those are event stores), or an in-memory database when that file cannot be opened (another
process holds it, or the workspace is read-only).
"""

import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import attrs
import duckdb
import msgspec
import pyarrow as pa

from esper.errors import LogAltered, StoreUnavailable, first_line
from esper.leyline.commands import Advance, Cull, Germinate
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
    decode,
)
from esper.leyline.stages import ACTIVE_STAGES, LIVE_STAGES, SeedStage
from esper.store import Reader, Recorded, Workspace, chain

PROJECTION_DIR = ".nissa"
PROJECTION_FILE = "projections.duckdb"

_ARROW_TYPES = {"VARCHAR": pa.string(), "BIGINT": pa.int64(), "INTEGER": pa.int32(), "DOUBLE": pa.float64()}
_LIVE = {s.value for s in LIVE_STAGES}
_ACTIVE = {s.value for s in ACTIVE_STAGES}
FOSSILIZED = SeedStage.FOSSILIZED.value
CULLED = SeedStage.CULLED.value
DORMANT = SeedStage.DORMANT.value


@attrs.frozen
class Table:
    """One read-model table: its name, columns (name, DuckDB type) and the order rows are read in."""

    name: str
    columns: tuple[tuple[str, str], ...]
    order: tuple[str, ...]

    @property
    def ddl(self) -> str:
        cols = ", ".join(f"{name} {kind}" for name, kind in self.columns)
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({cols})"

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in self.columns])


class Projection:
    """A fold over one run's events into rows of `tables`.

    Subclasses map event types to handler names in `handlers()`. `apply` gets a `Recorded` (the event
    with its `seq`, which some read models keep) and dispatches on the type of `recorded.event`. The state
    is a msgspec Struct per run: `encode`/`decode` store it as JSON in the checkpoint.
    """

    name: ClassVar[str]
    version: ClassVar[int]
    tables: ClassVar[tuple[Table, ...]]
    state_type: ClassVar[type]

    def __init__(self) -> None:
        self._handlers: dict[type, Callable[[Any, Recorded], Any]] = {
            event_type: getattr(self, method) for event_type, method in self.handlers().items()
        }

    def handlers(self) -> dict[type, str]:
        raise NotImplementedError

    def initial(self, run_id: str) -> Any:
        return self.state_type(run_id=run_id)

    def apply(self, state: Any, recorded: Recorded) -> Any:
        """Fold one event, dispatched on its type (the state is updated in place and returned)."""
        handler = self._handlers.get(type(recorded.event))
        return self.otherwise(state, recorded) if handler is None else handler(state, recorded)

    def otherwise(self, state: Any, recorded: Recorded) -> Any:
        """An event this projection has no handler for: by default it changes nothing."""
        return state

    def rows(self, state: Any) -> dict[str, list[dict[str, Any]]]:
        raise NotImplementedError

    def encode(self, state: Any) -> str:
        return msgspec.json.encode(state).decode()

    def decode(self, text: str) -> Any:
        return msgspec.json.decode(text, type=self.state_type)


# ---- run summary --------------------------------------------------------------------------------


class RunSummaryState(msgspec.Struct):
    run_id: str
    task: str | None = None
    controller: str | None = None
    seed: int | None = None
    epochs_planned: int | None = None
    host_params: int | None = None
    slots: str | None = None
    status: str = "incomplete"
    epochs: int = 0
    last_epoch: int | None = None
    val_accuracy: float | None = None
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    test_accuracy: float | None = None
    params: int | None = None
    germinated: int = 0
    fossilized: int = 0
    culled: int = 0
    commands: int = 0
    rejected: int = 0
    events: int = 0
    error: str | None = None


class RunSummary(Projection):
    """One row per run: its config, status, latest and final numbers, and how its seeds ended."""

    name = "run_summary"
    version = 1
    state_type = RunSummaryState
    tables = (
        Table("run_summary", (
            ("run_id", "VARCHAR"), ("task", "VARCHAR"), ("controller", "VARCHAR"), ("seed", "BIGINT"),
            ("epochs_planned", "INTEGER"), ("host_params", "BIGINT"), ("slots", "VARCHAR"), ("status", "VARCHAR"),
            ("epochs", "INTEGER"), ("last_epoch", "INTEGER"), ("val_accuracy", "DOUBLE"),
            ("best_val_accuracy", "DOUBLE"), ("best_epoch", "INTEGER"), ("test_accuracy", "DOUBLE"),
            ("params", "BIGINT"), ("germinated", "INTEGER"), ("fossilized", "INTEGER"), ("culled", "INTEGER"),
            ("commands", "INTEGER"), ("rejected", "INTEGER"), ("events", "BIGINT"), ("error", "VARCHAR"),
        ), ("run_id",)),
    )

    def handlers(self) -> dict[type, str]:
        return {
            RunStarted: "_started", EpochEnded: "_epoch", SeedGerminated: "_germinated",
            SeedTransitioned: "_transitioned", CommandIssued: "_issued", CommandRejected: "_rejected",
            RunFinished: "_finished", RunFailed: "_failed", RunResumed: "_resumed",
        }

    def apply(self, state: RunSummaryState, recorded: Recorded) -> RunSummaryState:
        state.events = recorded.seq
        return super().apply(state, recorded)

    def _started(self, s: RunSummaryState, r: Recorded) -> RunSummaryState:
        e: RunStarted = r.event
        s.task, s.controller, s.seed = e.config.task, e.config.controller, e.config.seed
        s.epochs_planned, s.host_params, s.slots = e.config.epochs, e.host_params, ",".join(e.slots)
        s.params = e.host_params
        return s

    def _epoch(self, s: RunSummaryState, r: Recorded) -> RunSummaryState:
        e: EpochEnded = r.event
        s.epochs += 1
        s.last_epoch, s.val_accuracy, s.params = e.epoch, e.val_accuracy, e.params
        if s.best_val_accuracy is None or e.val_accuracy > s.best_val_accuracy:
            s.best_val_accuracy, s.best_epoch = e.val_accuracy, e.epoch
        return s

    def _germinated(self, s: RunSummaryState, r: Recorded) -> RunSummaryState:
        s.germinated += 1
        return s

    def _transitioned(self, s: RunSummaryState, r: Recorded) -> RunSummaryState:
        if r.event.to_stage == FOSSILIZED:
            s.fossilized += 1
        elif r.event.to_stage == CULLED:
            s.culled += 1
        return s

    def _issued(self, s: RunSummaryState, r: Recorded) -> RunSummaryState:
        s.commands += 1
        return s

    def _rejected(self, s: RunSummaryState, r: Recorded) -> RunSummaryState:
        s.rejected += 1
        return s

    def _finished(self, s: RunSummaryState, r: Recorded) -> RunSummaryState:
        e: RunFinished = r.event
        s.status, s.val_accuracy, s.test_accuracy, s.params = "finished", e.val_accuracy, e.test_accuracy, e.params
        return s

    def _failed(self, s: RunSummaryState, r: Recorded) -> RunSummaryState:
        s.status, s.error = "failed", r.event.error
        return s

    def _resumed(self, s: RunSummaryState, r: Recorded) -> RunSummaryState:
        s.status, s.error = "incomplete", None  # the interruption no longer ends the run
        return s

    def rows(self, state: RunSummaryState) -> dict[str, list[dict[str, Any]]]:
        return {"run_summary": [msgspec.structs.asdict(state)]}


# ---- epoch metrics ------------------------------------------------------------------------------


class EpochRow(msgspec.Struct):
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    params: int
    live_seeds: int
    active_seeds: int
    fossilized_seeds: int


class EpochMetricsState(msgspec.Struct):
    run_id: str
    stages: dict[str, str] = {}
    rows: list[EpochRow] = []


class EpochMetrics(Projection):
    """One row per `EpochEnded`: losses, accuracy, parameter count, and how many seeds were where.

    `live_seeds` counts seeds occupying a slot (leyline's LIVE_STAGES: germinated, training, blending,
    culled, embargoed); `active_seeds` those computing in the forward pass (germinated, training, blending).
    """

    name = "epoch_metrics"
    version = 1
    state_type = EpochMetricsState
    tables = (
        Table("epoch_metrics", (
            ("run_id", "VARCHAR"), ("epoch", "INTEGER"), ("train_loss", "DOUBLE"), ("val_loss", "DOUBLE"),
            ("val_accuracy", "DOUBLE"), ("params", "BIGINT"), ("live_seeds", "INTEGER"),
            ("active_seeds", "INTEGER"), ("fossilized_seeds", "INTEGER"),
        ), ("run_id", "epoch")),
    )

    def handlers(self) -> dict[type, str]:
        return {EpochEnded: "_epoch", SeedTransitioned: "_transitioned"}

    def _transitioned(self, s: EpochMetricsState, r: Recorded) -> EpochMetricsState:
        s.stages[r.event.seed_id] = r.event.to_stage
        return s

    def _epoch(self, s: EpochMetricsState, r: Recorded) -> EpochMetricsState:
        e: EpochEnded = r.event
        stages = list(s.stages.values())
        s.rows.append(EpochRow(
            epoch=e.epoch, train_loss=e.train_loss, val_loss=e.val_loss, val_accuracy=e.val_accuracy,
            params=e.params, live_seeds=sum(x in _LIVE for x in stages),
            active_seeds=sum(x in _ACTIVE for x in stages), fossilized_seeds=stages.count(FOSSILIZED),
        ))
        return s

    def rows(self, state: EpochMetricsState) -> dict[str, list[dict[str, Any]]]:
        return {"epoch_metrics": [{"run_id": state.run_id, **msgspec.structs.asdict(row)} for row in state.rows]}


# ---- seed lifecycle -----------------------------------------------------------------------------


class SeedRow(msgspec.Struct):
    seed_id: str
    slot: str
    blueprint: str
    params: int
    germinated_epoch: int | None
    stage: str = DORMANT
    epochs: dict[str, int] = {}
    ended_epoch: int | None = None
    contribution: float | None = None
    last_contribution: float | None = None
    culled_by: str | None = None
    cull_reason: str | None = None


class StageRow(msgspec.Struct):
    seed_id: str
    slot: str
    stage: str
    entered_epoch: int | None
    entered_after: int
    left_epoch: int | None = None
    left_after: int | None = None
    epochs: int = 0


class SeedLifecycleState(msgspec.Struct):
    run_id: str
    completed: int = 0
    """Epochs completed so far (the last `EpochEnded.epoch`)."""
    seeds: dict[str, SeedRow] = {}
    stages: list[StageRow] = []


class SeedLifecycle(Projection):
    """Per seed: where and what it was, epochs in each stage, how it ended and what it contributed then.

    `seed_stages` holds one row per stage a seed entered (DORMANT after an embargo excluded), with the
    epoch of the transition event and the number of epochs completed when it happened (`entered_after`,
    `left_after`): a transition of the automatic tick before epoch e trains has `*_after` = e - 1, one
    caused by the command issued after epoch e has `*_after` = e. Charts draw stage bands from these.
    `contribution` is the seed's last measured contribution when it fossilized or was culled (the cull
    evidence's value when an automatic cull compared one).
    """

    name = "seed_lifecycle"
    version = 1
    state_type = SeedLifecycleState
    tables = (
        Table("seed_lifecycle", (
            ("run_id", "VARCHAR"), ("seed_id", "VARCHAR"), ("slot", "VARCHAR"), ("blueprint", "VARCHAR"),
            ("params", "BIGINT"), ("germinated_epoch", "INTEGER"), ("epochs_germinated", "INTEGER"),
            ("epochs_training", "INTEGER"), ("epochs_blending", "INTEGER"), ("epochs_culled", "INTEGER"),
            ("epochs_embargoed", "INTEGER"), ("final_stage", "VARCHAR"), ("ended_epoch", "INTEGER"),
            ("contribution", "DOUBLE"), ("culled_by", "VARCHAR"), ("cull_reason", "VARCHAR"),
        ), ("run_id", "germinated_epoch", "seed_id")),
        Table("seed_stages", (
            ("run_id", "VARCHAR"), ("seed_id", "VARCHAR"), ("slot", "VARCHAR"), ("stage", "VARCHAR"),
            ("entered_epoch", "INTEGER"), ("entered_after", "INTEGER"), ("left_epoch", "INTEGER"),
            ("left_after", "INTEGER"), ("epochs", "INTEGER"),
        ), ("run_id", "seed_id", "entered_after", "left_after")),
    )

    def handlers(self) -> dict[type, str]:
        return {SeedGerminated: "_germinated", SeedTransitioned: "_transitioned", EpochEnded: "_epoch"}

    def _germinated(self, s: SeedLifecycleState, r: Recorded) -> SeedLifecycleState:
        e: SeedGerminated = r.event
        s.seeds[e.seed_id] = SeedRow(e.seed_id, e.slot, e.blueprint, e.params, e.epoch)
        return s

    def _transitioned(self, s: SeedLifecycleState, r: Recorded) -> SeedLifecycleState:
        e: SeedTransitioned = r.event
        seed = s.seeds.get(e.seed_id)
        if seed is None:  # a transition without its germination: nothing to attach it to
            return s
        for row in s.stages:
            if row.seed_id == e.seed_id and row.left_after is None:
                row.left_epoch, row.left_after = e.epoch, s.completed
        seed.stage = e.to_stage
        if e.to_stage != DORMANT:
            s.stages.append(StageRow(e.seed_id, e.slot, e.to_stage, e.epoch, s.completed))
        if e.to_stage == FOSSILIZED:
            seed.ended_epoch, seed.contribution = e.epoch, seed.last_contribution
        elif e.to_stage == CULLED:
            evidence = e.evidence or {}
            measured = evidence.get("contribution")
            seed.ended_epoch = e.epoch
            seed.contribution = measured if isinstance(measured, (int, float)) else seed.last_contribution
            seed.culled_by = "automatic" if evidence.get("automatic") else "controller"
            why = evidence.get("reason") or evidence.get("why")
            seed.cull_reason = None if why is None else str(why)
        return s

    def _epoch(self, s: SeedLifecycleState, r: Recorded) -> SeedLifecycleState:
        e: EpochEnded = r.event
        s.completed = e.epoch
        for seed in s.seeds.values():
            if seed.stage in _LIVE:
                seed.epochs[seed.stage] = seed.epochs.get(seed.stage, 0) + 1
        for row in s.stages:
            if row.left_after is None and row.stage in _LIVE:
                row.epochs += 1
        for t in e.seeds:
            seed = s.seeds.get(t.seed_id)
            if seed is not None and t.contribution is not None:
                seed.last_contribution = t.contribution
        return s

    def rows(self, state: SeedLifecycleState) -> dict[str, list[dict[str, Any]]]:
        seeds = []
        for seed in state.seeds.values():
            seeds.append({
                "run_id": state.run_id, "seed_id": seed.seed_id, "slot": seed.slot, "blueprint": seed.blueprint,
                "params": seed.params, "germinated_epoch": seed.germinated_epoch,
                **{f"epochs_{stage.lower()}": seed.epochs.get(stage, 0)
                   for stage in ("GERMINATED", "TRAINING", "BLENDING", "CULLED", "EMBARGOED")},
                "final_stage": seed.stage, "ended_epoch": seed.ended_epoch, "contribution": seed.contribution,
                "culled_by": seed.culled_by, "cull_reason": seed.cull_reason,
            })
        stages = [{"run_id": state.run_id, **msgspec.structs.asdict(row)} for row in state.stages]
        return {"seed_lifecycle": seeds, "seed_stages": stages}


# ---- controller decisions -----------------------------------------------------------------------


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
    run_id: str
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
    version = 2
    state_type = DecisionsState
    tables = (
        Table("controller_decisions", (
            ("run_id", "VARCHAR"), ("seq", "BIGINT"), ("epoch", "INTEGER"), ("controller", "VARCHAR"),
            ("command", "VARCHAR"), ("seed_id", "VARCHAR"), ("slot", "VARCHAR"), ("blueprint", "VARCHAR"),
            ("cull_reason", "VARCHAR"), ("outcome", "VARCHAR"), ("reason", "VARCHAR"), ("evidence", "VARCHAR"),
            ("effect", "VARCHAR"),
            ("log_prob", "DOUBLE"), ("value", "DOUBLE"),
        ), ("run_id", "seq")),
    )

    def handlers(self) -> dict[type, str]:
        return {
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

    def rows(self, state: DecisionsState) -> dict[str, list[dict[str, Any]]]:
        return {"controller_decisions": [{"run_id": state.run_id, **msgspec.structs.asdict(r)} for r in state.rows]}


def _command_name(command: Any) -> str:
    return type(command).__struct_config__.tag


def _caused_by(decision: DecisionRow, e: SeedTransitioned) -> bool:
    if e.trigger != _COMMAND_TRIGGER.get(decision.command):
        return False
    if decision.command == "Germinate":
        return e.slot == decision.slot
    return e.seed_id == decision.seed_id


# ---- blueprint analytics (derived) --------------------------------------------------------------

BLUEPRINT_STATS = Table("blueprint_stats", (
    ("blueprint", "VARCHAR"), ("runs", "INTEGER"), ("germinations", "INTEGER"), ("fossilized", "INTEGER"),
    ("culled", "INTEGER"), ("in_progress", "INTEGER"), ("fossilization_rate", "DOUBLE"),
    ("mean_contribution", "DOUBLE"), ("mean_contribution_fossilized", "DOUBLE"), ("params_added", "BIGINT"),
), ("blueprint",))


def blueprint_rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Per blueprint across every run: `fossilization_rate` = fossilized / (fossilized + culled), `mean_contribution`
    over seeds that fossilized or were culled with a measured contribution, `params_added` = params of fossilized seeds."""
    seeds = con.execute(
        "SELECT blueprint, run_id, params, final_stage, contribution, culled_by FROM seed_lifecycle"
        " ORDER BY blueprint, run_id, seed_id"
    ).fetchall()
    groups: dict[str, list[tuple]] = {}
    for row in seeds:
        groups.setdefault(row[0], []).append(row)
    out = []
    for blueprint, rows in sorted(groups.items()):
        fossil = [r for r in rows if r[3] == FOSSILIZED]
        culled = [r for r in rows if r[5] is not None]
        decided = fossil + culled
        contributions = [r[4] for r in decided if r[4] is not None]
        fossil_contributions = [r[4] for r in fossil if r[4] is not None]
        out.append({
            "blueprint": blueprint, "runs": len({r[1] for r in rows}), "germinations": len(rows),
            "fossilized": len(fossil), "culled": len(culled), "in_progress": len(rows) - len(decided),
            "fossilization_rate": len(fossil) / len(decided) if decided else None,
            "mean_contribution": _mean(contributions), "mean_contribution_fossilized": _mean(fossil_contributions),
            "params_added": sum(r[2] for r in fossil),
        })
    return out


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None  # fsum: exact, so independent of order


def default_projections() -> list[Projection]:
    return [RunSummary(), EpochMetrics(), SeedLifecycle(), ControllerDecisions()]


# ---- the projector ------------------------------------------------------------------------------

_META_DDL = [
    "CREATE TABLE IF NOT EXISTS nissa_versions (projection VARCHAR, version INTEGER)",
    "CREATE TABLE IF NOT EXISTS nissa_checkpoints"
    " (projection VARCHAR, run_id VARCHAR, last_seq BIGINT, last_event_id VARCHAR, state JSON, last_hash VARCHAR)",
    "ALTER TABLE nissa_checkpoints ADD COLUMN IF NOT EXISTS last_hash VARCHAR",  # a file written before the chain
]


class Projector:
    """Keeps every projection's read model caught up with a workspace's event log.

    `catch_up(reader)` folds only the events after each checkpoint; `rebuild(reader)` starts from zero.
    Both write each group of runs in one transaction (rows and checkpoints together).
    """

    RUNS_PER_TRANSACTION = 256

    def __init__(self, con: duckdb.DuckDBPyConnection, projections: Sequence[Projection] | None = None,
                 path: Path | None = None):
        self.con = con
        self.path = path
        self.notes: list[str] = []
        self.altered: dict[str, str] = {}
        """Runs whose log failed its hash-chain check in a catch-up → why; they are in no read model."""
        self._hashes: dict[str, str | None] = {}  # run → hash of the last event `_fetch` checked
        self.projections = list(projections) if projections is not None else default_projections()
        self._ensure_schema()

    @classmethod
    def memory(cls, projections: Sequence[Projection] | None = None) -> "Projector":
        return cls(duckdb.connect(":memory:"), projections)

    @classmethod
    def open(cls, path: str | Path, projections: Sequence[Projection] | None = None) -> "Projector":
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(str(path))
        except (OSError, duckdb.Error) as exc:
            raise StoreUnavailable(f"cannot open projections {path}: {first_line(exc)}") from None
        try:
            return cls(con, projections, path)
        except duckdb.Error as exc:
            con.close()
            raise StoreUnavailable(f"cannot use projections {path}: {first_line(exc)}") from None

    @classmethod
    def for_workspace(cls, workspace: Workspace, projections: Sequence[Projection] | None = None) -> "Projector":
        """The workspace's persistent projections, or in-memory ones (with a note) when the file is unavailable."""
        path = workspace.root / PROJECTION_DIR / PROJECTION_FILE
        if workspace.root.is_dir():
            try:
                return cls.open(path, projections)
            except StoreUnavailable as exc:
                projector = cls.memory(projections)
                projector.notes.append(f"{exc}; projecting in memory")
                return projector
        return cls.memory(projections)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Projector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- schema ---------------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        for ddl in _META_DDL:
            self.con.execute(ddl)
        versions = dict(self.con.execute("SELECT projection, version FROM nissa_versions").fetchall())
        for p in self.projections:
            if versions.get(p.name) != p.version:
                self._reset_projection(p)
            for table in p.tables:
                self.con.execute(table.ddl)
        self.con.execute(BLUEPRINT_STATS.ddl)

    def _reset_projection(self, p: Projection) -> None:
        self.con.begin()
        for table in p.tables:
            self.con.execute(f"DROP TABLE IF EXISTS {table.name}")
            self.con.execute(table.ddl)
        self.con.execute("DELETE FROM nissa_checkpoints WHERE projection = ?", [p.name])
        self.con.execute("DELETE FROM nissa_versions WHERE projection = ?", [p.name])
        self.con.execute("INSERT INTO nissa_versions VALUES (?, ?)", [p.name, p.version])
        self.con.commit()

    def rebuild(self, reader: Reader) -> int:
        """Drop every read model and fold the whole log again; returns the number of events folded."""
        for p in self.projections:
            self._reset_projection(p)
        self.con.execute(f"DELETE FROM {BLUEPRINT_STATS.name}")
        return self.catch_up(reader)

    # ---- catching up ----------------------------------------------------------------------------

    def catch_up(self, reader: Reader, max_events: int | None = None, check: Sequence[str] = ()) -> int:
        """Fold the events stored after each checkpoint (at most `max_events`); returns how many were read.
        The runs in `check` have their whole hash chain checked first (cost linear in those runs)."""
        heads = dict(reader.con.execute("SELECT run_id, max(seq) FROM events GROUP BY run_id").fetchall())
        for run in check:
            try:
                note = reader.check_run(run)
            except LogAltered as exc:
                self._drop_altered(run, str(exc))
                continue
            if note:
                self.notes.append(note)
        heads = {run: head for run, head in heads.items() if run not in self.altered}
        checkpoints = self._checkpoints()
        stale = self._stale_runs(reader, checkpoints, heads)
        if stale:
            self._write(stale, {}, [])
            checkpoints = {key: value for key, value in checkpoints.items() if key[1] not in stale}
        start: dict[str, tuple[int, str | None]] = {}  # run → the checkpoint every projection has passed (seq, hash)
        for run in heads:
            marks = [checkpoints.get((p.name, run), (0, "", None)) for p in self.projections]
            seq, _, hash_ = min(marks, key=lambda m: m[0])
            start[run] = (seq, hash_)
        todo = sorted(run for run, head in heads.items() if head > start[run][0])
        folded = 0
        for i in range(0, len(todo), self.RUNS_PER_TRANSACTION):
            budget = None if max_events is None else max_events - folded
            if budget is not None and budget <= 0:
                break
            group = todo[i:i + self.RUNS_PER_TRANSACTION]
            events = self._fetch(reader, group, start, budget)
            folded += sum(len(v) for v in events.values())
            self._fold_group(events, checkpoints)
        return folded

    def _drop_altered(self, run: str, why: str) -> None:
        """A run whose log does not hold its chain: out of every read model, with a note."""
        self.altered[run] = why
        self.notes.append(f"{why}; its projections are dropped")
        self._write({run}, {}, [])

    def _checkpoints(self) -> dict[tuple[str, str], tuple[int, str, str | None]]:
        rows = self.con.execute(
            "SELECT projection, run_id, last_seq, last_event_id, last_hash FROM nissa_checkpoints").fetchall()
        return {(p, run): (int(seq), eid, hash_) for p, run, seq, eid, hash_ in rows}

    def _stale_runs(self, reader: Reader, checkpoints: dict, heads: dict[str, int]) -> set[str]:
        """Runs whose log no longer holds the event a checkpoint ended on (changed, shortened or gone)."""
        if not checkpoints:
            return set()
        keys = sorted({(run, seq, eid, hash_ or "") for (_, run), (seq, eid, hash_) in checkpoints.items()})
        rows = reader.con.execute(
            "SELECT c.run_id, c.eid, e.event_id::VARCHAR, c.hash, coalesce(e.hash, '') FROM"
            " (SELECT unnest($runs::VARCHAR[]) AS run_id, unnest($seqs::BIGINT[]) AS seq,"
            "  unnest($eids::VARCHAR[]) AS eid, unnest($hashes::VARCHAR[]) AS hash) c"
            " LEFT JOIN events e ON e.run_id = c.run_id AND e.seq = c.seq",
            {"runs": [k[0] for k in keys], "seqs": [k[1] for k in keys], "eids": [k[2] for k in keys],
             "hashes": [k[3] for k in keys]},
        ).fetchall()
        return {run for run, expected, found, hash_, found_hash in rows
                if found != expected or hash_ != found_hash} | {run for (_, run) in checkpoints if run not in heads}

    def _fetch(self, reader: Reader, runs: list[str], start: dict[str, tuple[int, str | None]],
               limit: int | None) -> dict[str, list[Recorded]]:
        """The runs' events after `start`, each run's checked to continue the hash its checkpoint saw; a run
        whose check fails is dropped (`_drop_altered`) and left out."""
        sql = (
            "SELECT e.position, e.run_id, e.seq, e.event_id, e.ts, e.type, e.payload, e.hash FROM events e"
            " JOIN (SELECT unnest($runs::VARCHAR[]) AS run_id, unnest($seqs::BIGINT[]) AS after) c"
            " ON e.run_id = c.run_id AND e.seq > c.after ORDER BY e.run_id, e.seq"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = reader.con.execute(sql, {"runs": runs, "seqs": [start[r][0] for r in runs]}).fetchall()
        out: dict[str, list[Recorded]] = {}
        verifiers = {run: chain.Verifier(run, *start[run]) for run in runs}
        altered: set[str] = set()
        for position, run, seq, event_id, ts, type_, payload, hash_ in rows:
            if run in altered:
                continue
            try:
                verifiers[run].feed(seq, type_, payload, hash_)
            except LogAltered as exc:
                altered.add(run)
                out.pop(run, None)
                self._drop_altered(run, str(exc))
                continue
            out.setdefault(run, []).append(Recorded(position, run, seq, event_id, ts, decode(payload)))
        self._hashes = {run: v.hash for run, v in verifiers.items()}
        return out

    def _fold_group(self, events: dict[str, list[Recorded]], checkpoints: dict) -> None:
        rows: dict[str, list[dict[str, Any]]] = {}
        marks: list[tuple[str, str, int, str, str]] = []
        states = self._load_states(list(events))
        for p in self.projections:
            for run, recorded in events.items():
                done = checkpoints.get((p.name, run), (0, ""))[0]
                fresh = [r for r in recorded if r.seq > done]
                state = states.get((p.name, run)) or p.initial(run)
                for r in fresh:
                    state = p.apply(state, r)
                last = fresh[-1] if fresh else None
                if last is None:  # this projection was ahead of the others for this run
                    last_seq, last_eid, last_hash = checkpoints[(p.name, run)]
                else:
                    last_seq, last_eid, last_hash = last.seq, str(last.event_id), self._hashes[run]
                marks.append((p.name, run, last_seq, last_eid, p.encode(state), last_hash))
                for table, table_rows in p.rows(state).items():
                    rows.setdefault(table, []).extend(table_rows)
        self._write(set(events), rows, marks)

    def _load_states(self, runs: list[str]) -> dict[tuple[str, str], Any]:
        by_name = {p.name: p for p in self.projections}
        found = self.con.execute(
            "SELECT projection, run_id, state FROM nissa_checkpoints WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
            [runs],
        ).fetchall()
        return {(name, run): by_name[name].decode(state) for name, run, state in found if name in by_name}

    def _write(self, runs: set[str], rows: dict[str, list[dict[str, Any]]], marks: list[tuple]) -> None:
        """Replace the rows and checkpoints of `runs`, and refresh `blueprint_stats`, in one transaction."""
        run_list = sorted(runs)
        self.con.begin()
        try:
            for p in self.projections:
                for table in p.tables:
                    self.con.execute(f"DELETE FROM {table.name} WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [run_list])
                    if rows.get(table.name):
                        self._insert(table, rows[table.name])
            self.con.execute(
                "DELETE FROM nissa_checkpoints WHERE run_id IN (SELECT unnest(?::VARCHAR[]))"
                " AND projection IN (SELECT unnest(?::VARCHAR[]))",
                [run_list, [p.name for p in self.projections]],
            )
            if marks:
                cols = list(zip(*marks))
                batch = pa.table({
                    "projection": pa.array(cols[0], pa.string()), "run_id": pa.array(cols[1], pa.string()),
                    "last_seq": pa.array(cols[2], pa.int64()), "last_event_id": pa.array(cols[3], pa.string()),
                    "state": pa.array(cols[4], pa.string()), "last_hash": pa.array(cols[5], pa.string()),
                })
                self._insert_arrow("nissa_checkpoints (projection, run_id, last_seq, last_event_id, state, last_hash)",
                                   batch, "projection, run_id, last_seq, last_event_id, state::JSON, last_hash")
            self.con.execute(f"DELETE FROM {BLUEPRINT_STATS.name}")
            stats = blueprint_rows(self.con)
            if stats:
                self._insert(BLUEPRINT_STATS, stats)
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    def _insert(self, table: Table, rows: list[dict[str, Any]]) -> None:
        batch = pa.Table.from_pylist(rows, schema=table.schema)
        self._insert_arrow(table.name, batch, "*")

    def _insert_arrow(self, name: str, batch: pa.Table, select: str) -> None:
        self.con.register("nissa_batch", batch)
        try:
            self.con.execute(f"INSERT INTO {name} SELECT {select} FROM nissa_batch")
        finally:
            self.con.unregister("nissa_batch")

    # ---- reading --------------------------------------------------------------------------------

    def fetch(self, table: str, run_id: str | None = None) -> list[dict[str, Any]]:
        """Rows of a read-model table (of one run, or all), in the table's natural order."""
        known = {t.name: t for p in self.projections for t in p.tables}
        known[BLUEPRINT_STATS.name] = BLUEPRINT_STATS
        spec = known[table]
        sql = f"SELECT * FROM {spec.name}"
        params: list[Any] = []
        if run_id is not None:
            sql += " WHERE run_id = ?"
            params.append(run_id)
        sql += " ORDER BY " + ", ".join(f"{c} NULLS LAST" for c in spec.order)
        cursor = self.con.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def table_names(self) -> list[str]:
        return [t.name for p in self.projections for t in p.tables] + [BLUEPRINT_STATS.name, "nissa_checkpoints"]


def caught_up(workspace: Workspace, reader: Reader, check: Sequence[str] = ()) -> Projector:
    """The workspace's projector, caught up with `reader`, the whole chains of the runs in `check` checked.

    If the projection file is unusable (written by other code, damaged), the read models are rebuilt in
    memory instead, with a note: projections are disposable, the log is the truth.
    """
    projector = Projector.for_workspace(workspace)
    try:
        projector.catch_up(reader, check=check)
    except duckdb.Error as exc:
        if projector.path is None:
            raise
        projector.close()
        fallback = Projector.memory()
        fallback.notes.append(f"projections {projector.path} unusable ({first_line(exc)}); rebuilt in memory")
        fallback.catch_up(reader, check=check)
        return fallback
    return projector


__all__ = [
    "BLUEPRINT_STATS", "ControllerDecisions", "EpochMetrics", "Projection", "Projector", "RunSummary",
    "SeedLifecycle", "Table", "blueprint_rows", "caught_up", "default_projections",
]
