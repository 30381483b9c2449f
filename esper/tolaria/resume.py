"""`esper run --resume`: an interrupted run goes on from its latest usable checkpoint, in its own stream and store
file, and ends with the events it would have written uninterrupted (DESIGN.md, Replay).

Resumable: a run cut off (SIGKILL, a crash, a store that failed: no end in its log) or interrupted from outside
(its `RunFailed` says `interrupted` or `terminated`). Refused, before anything is written: a finished run, a run
that failed by itself (diverged: it would again), a run not in a store file of its own (imported: an export
carries no checkpoint files) and a run a live process is still writing.

The log is read with its chain checked and folded; its checkpoints are tried latest first, passing over a file
that is missing, changed or does not fit the log. The run is rebuilt at the checkpoint (`Session.resumed`).
Epochs the log holds past the checkpoint are trained again and compared with the log as `esper replay --verify`
compares (`ResumingSink`), not appended again; then `RunResumed` and the rest of the run follow the log's last
event.
"""

from collections import deque
from typing import Any

import attrs

from esper.errors import BadInput, StoreFailed
from esper.leyline.events import CheckpointSaved, Event, RunFailed, RunResumed, RunStarted
from esper.nissa.runstate import RunState, as_one_run
from esper.store import Recorded, Recorder, Workspace
from esper.store.recorder import StoreHeld
from esper.tamiyo.controllers import Controller, make_controller
from esper.tolaria import checkpoint
from esper.tolaria.checkpoint import Checkpoints, UnusableCheckpoint
from esper.tolaria.data import TaskData, recorded_data
from esper.leyline.config import SNAPSHOT_EVERY, VERIFY_TOLERANCE, every_problem
from esper.tolaria.resumable import FINISHED, not_resumable
from esper.tolaria.loop import Batches, Progress, RunResult, Session, StoreSink, train
from esper.tolaria.trainer import check_recorded_device
from esper.tolaria.verify import Comparison, VerificationFailed


@attrs.define
class ResumingSink:
    """Between a resumed session and its store. The batches of epochs the log already holds (its checkpoint was
    older than the log's end) are compared with the logged events, as `--verify` compares, and dropped; the first
    batch past them is appended after `resumed` (`RunResumed`), in its transaction, and every later one as it
    comes. A run stopped while it trains logged epochs again (`RunFailed`) leaves the log as it was."""

    run_id: str
    logged: deque[Recorded]
    resumed: RunResumed | None
    sink: Any
    comparison: Comparison = attrs.Factory(lambda: Comparison(exact=False, tolerance=VERIFY_TOLERANCE))

    def append(self, batch: list[Event]) -> None:
        if self.logged:
            self._compare([event for event in batch if not isinstance(event, CheckpointSaved)])
            return
        if self.resumed is not None:
            self.sink.append([self.resumed, *batch])
            self.resumed = None
            return
        self.sink.append(batch)

    def held(self) -> str:
        """What the store holds of the run, for a failure's message."""
        held = getattr(self.sink, "held", None)
        return held() if held else ""

    def _compare(self, events: list[Event]) -> None:
        if len(events) == 1 and isinstance(events[0], RunFailed):
            return
        for event in events:
            if not self.logged:
                self._fail(f"it writes {type(event).__name__} at epoch {event.epoch} where the log's epochs end")
            try:
                self.comparison.compare(self.logged.popleft(), event)
            except VerificationFailed as exc:
                self._fail(str(exc))

    def _fail(self, why: str) -> None:
        raise VerificationFailed(f"run {self.run_id} does not resume as it was logged: trained again from its "
                                 f"checkpoint, {why}")


@attrs.define
class Resumption:
    """A run rebuilt at a checkpoint, its store file open for the rest: `train`, then `close` (or use `with`)."""

    run_id: str
    checkpoint_epoch: int
    last_epoch: int
    """The log's last whole epoch: the epochs after the checkpoint up to it are trained again and compared."""
    passed_over: list[str]
    """The later checkpoints that could not be used, and why."""
    session: Session
    controller: Controller
    recorder: Recorder

    def describe(self) -> str:
        again = self.last_epoch - self.checkpoint_epoch
        compared = (f"; epoch{'s' if again > 1 else ''} {_span(self.checkpoint_epoch + 1, self.last_epoch)} "
                    f"trained again and compared with the log") if again else ""
        return (f"run {self.run_id}: resuming from its checkpoint of epoch {self.checkpoint_epoch} of "
                f"{self.session.config.epochs}{compared}")

    def train(self, progress: Progress | None = None, batches: Batches | None = None) -> RunResult:
        try:
            return train(self.session, self.controller, progress, batches)
        except StoreFailed as exc:  # what was stored stays: the run resumes again from its checkpoints
            raise exc.adding(then=f"run esper run --resume {self.run_id}") from None

    def close(self) -> None:
        self.recorder.close()

    def __enter__(self) -> "Resumption":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_resumption(ws: Workspace, run: str, checkpoint_every: int | None = None,
                    snapshot_every: int = SNAPSHOT_EVERY) -> Resumption:
    """Rebuild RUN at its latest usable checkpoint; it writes checkpoints every `checkpoint_every` epochs from
    there on (None: as the run did, by its last `CheckpointSaved`; 1 where that does not say). `BadInput` (nothing
    written) when the run cannot be resumed."""
    for name, every in (("checkpoint_every", checkpoint_every or 0), ("snapshot_every", snapshot_every)):
        if problem := every_problem(name, every):
            raise BadInput(problem)
    if checkpoint_every != 0:  # None: the run's interval, never 0 (a run without checkpoints is not resumed)
        checkpoint.check_folder(ws.root)
    run_id, recorded = _read(ws, run)
    if why := not_resumable(run_id, [r.event for r in recorded]):
        raise BadInput(why)
    check_recorded_device(run_id, recorded[0].event.config.device)
    state = RunState.fold(recorded)
    saved = [r.event for r in recorded if isinstance(r.event, CheckpointSaved)]
    if checkpoint_every is None:
        checkpoint_every = saved[-1].every or 1
    config = state.config
    data = recorded_data(recorded[0].event)
    controller = make_controller(config.controller, config.seed, config.policy, config.heuristic)
    checkpoints = Checkpoints(checkpoint.folder_of(ws.root), checkpoint_every, controller)
    last_epoch = state.epochs[-1].epoch if state.epochs else 0
    recorder = Recorder(ws.store_path(run_id))
    try:
        store = StoreSink(recorder, run_id, seq=state.last_seq, snapshot_every=snapshot_every, state=state,
                          last_epoch=last_epoch)
        session, mark, passed_over = _latest_usable(run_id, recorded, last_epoch, store, data, checkpoints)
    except BaseException:
        recorder.close()
        raise
    return Resumption(run_id, mark.epoch, last_epoch, passed_over, session, controller, recorder)


def _read(ws: Workspace, run: str) -> tuple[str, list[Recorded]]:
    """The run's id and events, from its own store file, its chain checked."""
    with ws.reader() as reader:
        run_id = reader.resolve_run(run)
        if not reader.in_own_store(run_id):
            if reader.con.execute("SELECT count(*) FROM events WHERE run_id = ? AND type = 'RunFinished'",
                                  [run_id]).fetchall()[0][0]:
                raise BadInput(FINISHED.format(run_id=run_id))
            files = ", ".join(reader.files_of(run_id))
            if reader.con.execute("SELECT any_value(payload->>'$.config.controller') FROM events WHERE run_id = ? AND "
                                  "type = 'RunStarted'", [run_id]).fetchall()[0][0] == "ppo":
                raise BadInput(f"run {run_id} is an episode of a PPO job ({files}): `esper ppo --resume --out POLICY` "
                               "continues the job, which plays its interrupted update again")
            raise BadInput(f"run {run_id} is not in a store file of its own ({files}): an imported run cannot resume "
                           "(an export carries no checkpoint files), only one `esper run` recorded here")
        if reader.is_live(run_id):
            raise StoreHeld(ws.store_path(run_id))
        return run_id, reader.read_checked(run_id).recorded


def _latest_usable(run_id: str, recorded: list[Recorded], last_epoch: int, store: StoreSink, data: TaskData,
                   checkpoints: Checkpoints) -> tuple[Session, CheckpointSaved, list[str]]:
    """The session at the latest checkpoint that reads and fits the log, the checkpoint, and why the later ones
    were passed over."""
    started: RunStarted = recorded[0].event
    one_run = as_one_run(recorded)
    unusable: dict[str, list[int]] = {}
    for at in reversed([r for r in recorded if isinstance(r.event, CheckpointSaved)]):
        mark: CheckpointSaved = at.event
        logged = deque(r for r in one_run if r.seq > at.seq and not isinstance(r.event, RunFailed))
        resumed = RunResumed(epoch=last_epoch, sha256=mark.sha256, checkpoint_epoch=mark.epoch)
        try:
            state = checkpoint.read(checkpoints.folder, mark)
            session = Session.resumed(started, [r.event for r in one_run if r.seq < at.seq], state,
                                      ResumingSink(run_id, logged, resumed, store), data, checkpoints)
        except UnusableCheckpoint as exc:
            unusable.setdefault(str(exc), []).append(mark.epoch)
            continue
        return session, mark, [f"{_epochs(e)}: {why}" for why, e in unusable.items()]
    reasons = "; ".join(f"{_epochs(e)} {why}" for why, e in unusable.items())
    raise BadInput(f"run {run_id} has no usable checkpoint in {checkpoints.folder} (the checkpoints of {reasons}); "
                   f"nothing was appended")


def _epochs(epochs: list[int]) -> str:
    """Epochs as ranges: `epoch 3`, `epochs 0-4, 7`."""
    return f"epoch{'s' if len(epochs) > 1 else ''} {_ranges(epochs)}"


def _ranges(epochs: list[int]) -> str:
    ordered, spans = sorted(epochs), []
    start = prev = ordered[0]
    for e in ordered[1:] + [None]:
        if e is not None and e == prev + 1:
            prev = e
            continue
        spans.append(_span(start, prev))
        if e is not None:
            start = prev = e
    return ", ".join(spans)


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"
