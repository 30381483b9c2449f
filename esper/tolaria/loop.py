"""One morphogenetic training run, written as events.

Per epoch, in this order (replay and `--verify` rely on it):
1. `begin_epoch`: the lifecycle's automatic transitions (`Garden.tick`) are carried out;
2. the model trains one epoch and is measured: `end_epoch` emits `EpochEnded` and returns the observation;
3. `decide`: the controller's command, as `CommandIssued`, then what it led to (`SeedGerminated`,
   `SeedTransitioned`, or `CommandRejected`); up to `RunConfig.commands_per_epoch` times, until it waits or a
   command is refused;
4. `settle`: the epoch's events are appended in one transaction, by a writer thread while the next epoch trains
   (`esper.tolaria.writebehind`); a run's end waits for it.
`Session` exposes these steps so Simic can drive many runs in lock-step; `execute` runs one to the end. With
`checkpoints`, a due epoch's batch also carries the run's state, written to a file before the batch is appended
(`esper.tolaria.checkpoint`); `Session.resumed` rebuilds a logged run at one of its checkpoints. With `ranks`, the
run trains data-parallel (`esper.tolaria.ranks`): rank 0's session decides and sends each epoch's events to the
other ranks, which `follow` it.
"""

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import attrs
import msgspec
import numpy as np
import torch

from esper._kernels import cpu_kernels, cpu_model
from esper.errors import (BadInput, EsperError, IllegalEvent, RankStopped, RunFailed, StoreFailed, first_line,
                          out_of_memory)
from esper.kasmina import GrowableModel, preset_host
from esper.leyline.commands import Command, Wait
from esper.leyline.config import SNAPSHOT_EVERY, RunConfig
from esper.leyline.events import (CommandIssued, CommandRejected, EpochEnded, Event, RunFinished, RunStarted, decode,
                                  encode)
from esper.leyline.events import RunFailed as RunFailedEvent
from esper.nissa import snapshot
from esper.nissa.runstate import RunState
from esper.tamiyo.controllers import POLICY_CONTROLLERS, Controller
from esper.tamiyo.observation import Observation, ObservationProjection
from esper.tolaria import checkpoint, crashpoints
from esper.tolaria.checkpoint import Checkpoints
from esper.tolaria.data import TaskData, bits_per_char, load_task_data
from esper.tolaria.ranks import Message, Ranks
from esper.tolaria.tasks import TaskPreset, get_task
from esper.tolaria.trainer import PRECISIONS, Computed, EpochStats, Trainer, default_precision
from esper.tolaria.userdata import UserData
from esper.tolaria.writebehind import WriteBehind


class Sink(Protocol):
    def append(self, batch: list[Event]) -> None: ...


@attrs.define
class ListSink:
    """Keeps the events in memory (re-execution for `--verify`, tests)."""

    events: list[Event] = attrs.Factory(list)
    batches: int = 0

    def append(self, batch: list[Event]) -> None:
        self.events.extend(batch)
        self.batches += 1


class Discard:
    """Keeps nothing: the sink of a follower rank, whose events rank 0 writes."""

    def append(self, batch: list[Event]) -> None:
        pass




@attrs.define
class StoreSink:
    """Appends each batch to one run of a store, with the optimistic-concurrency check on `seq`.

    It also folds what it appends into a `RunState` and, with the batch of every `snapshot_every`-th epoch (by
    `EpochEnded.epoch`; 0: never), stores a snapshot of it in the same transaction (`esper.nissa.snapshot`).
    A writer setting, not part of `RunConfig`: snapshots change no event. Only a stream this sink starts with
    `RunStarted` (or continues from a given `state`) is folded; a learner's stream of updates is not a run.
    After a failed append or a fold the lifecycle refuses, the sink takes no more snapshots (events it still
    writes; the live loop is their judge)."""

    recorder: Any
    run_id: str
    seq: int = 0
    snapshot_every: int = SNAPSHOT_EVERY
    state: RunState | None = None
    """The fold of the stream up to `seq`; None until a `RunStarted` is appended."""
    last_epoch: int | None = None
    """The last epoch whose `EpochEnded` the store holds (0: none yet; None: not a training run, as far as this
    sink has seen): what a failed store's message says the log holds."""

    def append(self, batch: list[Event]) -> None:
        snapshot = self._fold(batch)
        try:
            self.seq = self.recorder.append(self.run_id, batch, self.seq, snapshot=snapshot)
        except StoreFailed as exc:
            self.state, self.snapshot_every = None, 0
            raise exc.adding(held=self.held()) from exc
        except BaseException:
            self.state, self.snapshot_every = None, 0  # the store may or may not hold the batch: stop folding
            raise
        for event in batch:
            if isinstance(event, RunStarted):
                self.last_epoch = 0
            elif isinstance(event, EpochEnded):
                self.last_epoch = event.epoch

    def held(self) -> str:
        """What the store holds of the run, in words for a failure's message."""
        if self.last_epoch is None:
            return ""
        epochs = {0: "no epoch yet", 1: "epoch 1"}.get(self.last_epoch, f"epochs 1–{self.last_epoch}")
        return f"the log holds {epochs}"

    def _fold(self, batch: list[Event]) -> str | None:
        """Fold the batch; the snapshot JSON to store with it when one is due."""
        if self.snapshot_every <= 0 or not batch:
            return None
        if self.state is None:
            if self.seq != 0 or not isinstance(batch[0], RunStarted):
                self.snapshot_every = 0
                return None
            self.state = RunState(run_id=self.run_id)
        due = False
        try:
            for event in batch:
                self.state.apply(event)
                due = due or (isinstance(event, EpochEnded) and event.epoch % self.snapshot_every == 0)
        except IllegalEvent:
            self.state, self.snapshot_every = None, 0
            return None
        self.state.last_seq = self.seq + len(batch)
        return snapshot.encode(self.state) if due else None


@attrs.frozen
class RunResult:
    val_accuracy: float
    test_accuracy: float | None
    """None for a user's run (`esper.fit`) given no test batches."""
    params: int
    seeds: dict[str, int]
    """How many seeds ended in each stage."""
    val_bits_per_char: float | None = None
    test_bits_per_char: float | None = None
    """Text task only."""


Progress = Callable[[int, EpochStats, ObservationProjection, CommandIssued], None]
Batches = Callable[[int, Iterable, int], Iterable]
"""Wraps an epoch's training batches (epoch, batches, how many there are) and yields them unchanged: where the
command shows its bar within long epochs (`esper.cli.progress`)."""


MAX_SEED = 10**12


def check_seed(seed: int) -> None:
    """A seed as a user gives it (`esper run --seed`, `esper.fit(seed=...)`): from 0 to `MAX_SEED` - 1."""
    if not 0 <= seed < MAX_SEED:
        raise BadInput(f"seed must be between 0 and {MAX_SEED - 1:,}, got {seed}")


def software_versions() -> dict[str, str]:
    """The software that computes a run (`esper --version`): Esper, torch and numpy, which makes mnist1d's signals
    (and standardised them, before exact moments)."""
    try:
        esper_version = importlib.metadata.version("esper")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        esper_version = "unknown"
    return {"esper": esper_version, "torch": str(torch.__version__), "numpy": np.__version__}


def versions() -> dict[str, str]:
    """What computes a run, as `RunStarted.versions` records it: the software and the CPU's side of it."""
    return software_versions() | {"cpu": torch.backends.cpu.get_cpu_capability(), "cpu_kernels": cpu_kernels(),
                                  "cpu_model": cpu_model()}


def resolve_config(config: RunConfig, preset: TaskPreset | None = None, host_params: int | None = None) -> RunConfig:
    """The config as the run will use it, stored whole in `RunStarted`: the preset's epochs and anneal filled in
    (`preset`: the task's own, unless a recorded one is given; `host_params`: the size of the model the run
    grows when it is not the preset's host, a user's model)."""
    preset = preset or get_task(config.task)
    if config.epochs < 0:
        raise BadInput(f"epochs must be positive, got {config.epochs}")
    if abs(config.seed) >= MAX_SEED:  # derived seeds (e.g. the sharpness probe's) must still fit 64 bits
        raise BadInput(f"seed must lie strictly between -{MAX_SEED:,} and {MAX_SEED:,}, got {config.seed}")
    if config.anneal_epochs is not None and config.anneal_epochs < 0:
        raise BadInput(f"anneal_epochs must not be negative, got {config.anneal_epochs}")
    if config.precision not in (None, *PRECISIONS):
        raise BadInput(f"unknown precision {config.precision!r}: use {', '.join(PRECISIONS)}")
    _check_cap(config.lifecycle.max_params, config.task, preset, host_params)
    epochs = config.epochs or preset.epochs
    # The preset's anneal, in a run shorter than it, is the whole run: longer, the run would start part-way down
    # the cosine (a 1-epoch run at 7 % of its rate). A recorded config holds its anneal and keeps it.
    anneal = min(preset.anneal_epochs, epochs) if config.anneal_epochs is None else config.anneal_epochs
    return msgspec.structs.replace(config, epochs=epochs, anneal_epochs=anneal,
                                   policy_sha256=policy_file_sha256(config),
                                   precision=config.precision or default_precision(config.device))


def policy_file_sha256(config: RunConfig) -> str | None:
    """The hash of the policy file a policy-driven run plays, checked against the one it recorded (if any): a run
    is never re-executed or resumed with a different file. A recorded run whose file is gone keeps its hash."""
    if config.controller not in POLICY_CONTROLLERS or config.policy is None:
        return config.policy_sha256
    try:
        now = hashlib.sha256(Path(config.policy).read_bytes()).hexdigest()
    except OSError:
        return config.policy_sha256
    if config.policy_sha256 is not None and now != config.policy_sha256:
        raise BadInput(f"policy file {config.policy} is not the one the run played (sha256 {now[:12]}..., the run "
                       f"recorded {config.policy_sha256[:12]}...): put that file back to re-execute or resume it")
    return now


def _check_cap(cap: int, task: str, preset: TaskPreset, host: int | None) -> None:
    if cap < 0:
        raise BadInput(f"max_params must be 0 (no cap) or a parameter count, got {cap}")
    if cap:
        whose = f"the {task} host's" if host is None else "the model's"  # a user's model (esper.fit) is no task's host
        if host is None:
            with torch.device("meta"):  # the host's size without memory or a draw from the RNG
                host = preset_host(preset).param_count()
        if cap < host:
            raise BadInput(f"max_params {cap:,} is below {whose} own {host:,} parameters")


class Session:
    """One run, step by step. Every event goes through `emit`: judged and folded by the lifecycle (the
    observation's garden), then carried out on the model, and kept for the epoch's batch.

    A config that names an `architecture` (the scratch baseline) has it built before epoch 1 as events
    (`SeedGerminated` + `SeedTransitioned` trigger `build`); `build_events=False` builds it inside the
    trainer without events instead, as logs written before `build` existed were (`--verify` of such a log)."""

    def __init__(self, config: RunConfig, sink: Sink, data: TaskData | UserData | None = None, download: bool = False,
                 preset: TaskPreset | None = None, build_events: bool = True, model: GrowableModel | None = None,
                 checkpoints: Checkpoints | None = None, ranks: Ranks | None = None,
                 computed: Computed = Computed()):
        """`preset`: the task preset to train with; the task's current one by default, a recorded one to
        re-execute a run. `model`: a grown model from user code (`esper.fit`, with its `preset` and `data`)
        instead of the preset's host; `RunStarted` then says the run came from user code. `ranks`: this process
        is rank 0 of a data-parallel run (the others `follow`). `computed`: re-execute a recorded run here as it
        was computed (`Trainer`)."""
        self._prepare(config, sink, data, download, preset, not build_events, checkpoints, model, ranks, computed)
        config, host_params, trainer, model = self.config, self.host_params, self.trainer, self.trainer.model
        self._emit([RunStarted(config=config, preset=self.preset, versions=versions(),
                               host_params=model.param_count(), slots=model.slot_names,
                               blueprints=list(self.preset.blueprints),
                               seed_sizes=model.seed_sizes(self.preset.blueprints),
                               user_code=host_params is not None, ranks=ranks.world if ranks else 1,
                               threads=torch.get_num_threads() if trainer.device.type == "cpu" else 0,
                               channels_last=trainer.channels_last, corpus=getattr(trainer.data, "corpus", None))])
        try:
            if build_events:
                self._build(len(config.architecture))
            self._checkpoint()
            self._flush()
            self._writer.wait()  # a store that cannot take the run fails it before any training
        except BaseException:
            self._writer.close()
            raise

    def _prepare(self, config: RunConfig, sink: Sink, data: TaskData | UserData | None, download: bool,
                 preset: TaskPreset | None, build_up_front: bool, checkpoints: Checkpoints | None,
                 model: GrowableModel | None = None, ranks: Ranks | None = None,
                 computed: Computed = Computed()) -> None:
        self.preset = preset or get_task(config.task)
        self.host_params = None if model is None else model.param_count()
        config = self.config = resolve_config(config, self.preset, self.host_params)  # idempotent: `RunStarted` and the trainer see the values used
        if data is None:
            data = load_task_data(config.task, config.data_seed, config.data_dir, download=download, preset=self.preset)
        self.trainer = Trainer(config, self.preset, data, build_up_front=build_up_front, model=model, ranks=ranks,
                               computed=computed)
        self.ranks = ranks
        self._outbox: list[Event] = []
        """Rank 0: the events carried out since the last message to the other ranks."""
        self._outbox_rng = b""
        self.projection = ObservationProjection()
        self.sink = sink
        self.checkpoints = checkpoints
        writes = sink if checkpoints is None else checkpoint.CheckpointWriter(sink, checkpoints.folder)
        self._writer = WriteBehind(writes)
        self.epoch = 0
        self.stats: EpochStats | None = None
        self._pending: list[Any] = []
        """The events of the batch being gathered (and, last, the checkpoint it carries)."""
        self._ending = False

    @classmethod
    def resumed(cls, started: RunStarted, history: list[Event], state: dict[str, Any], sink: Sink,
                data: TaskData | None = None, checkpoints: Checkpoints | None = None) -> "Session":
        """The session of a logged run as it stood at a checkpoint, to train on from there: `history`, the run's
        events up to the checkpoint (its bookkeeping left out), is judged by the lifecycle and carried out on a
        fresh model as it was live, then the checkpoint's `state` (`checkpoint.read`) sets the weights,
        optimizers and RNGs. `checkpoint.UnusableCheckpoint` if the state does not fit. A run that several ranks
        trained goes on here as they trained it (`Computed`)."""
        session = cls.__new__(cls)
        session._prepare(started.config, sink, data, False, started.preset, False, checkpoints,
                         computed=Computed.of(started))
        try:
            for event in history:
                session.projection.apply(event)
                session.trainer.realize(event)
            controller = checkpoints.controller if checkpoints is not None else None
            checkpoint.restore(state, session.trainer, controller, session.projection.garden)
        except BaseException:
            session.close()
            raise
        session.epoch = state["epoch"]
        return session

    @classmethod
    def following(cls, started: RunStarted, ranks: Ranks, data: TaskData | None = None) -> "Session":
        """A follower rank's session of the run rank 0 started (`follow`): the same model, optimizers and lifecycle
        fold, no writer of its own. It carries out what rank 0 decided (`adopt`), never decides."""
        session = cls.__new__(cls)
        session._prepare(started.config, Discard(), data, False, started.preset, False, None, ranks=ranks)
        return session

    def adopt(self, message: Message) -> list[Event]:
        """A follower: carry out the events of rank 0's `message`, from rank 0's RNG state (a germination draws
        the seed's weights from it), through the same fold; returns them."""
        if message.rng:
            torch.set_rng_state(torch.frombuffer(bytearray(message.rng), dtype=torch.uint8))
        events = [decode(e) for e in message.events]
        for event in events:
            self.projection.apply(event)
            self.trainer.realize(event)
        return events

    def _build(self, n: int) -> None:
        for i in range(n):
            try:
                events = self.projection.garden.build(i, epoch=0)
            except IllegalEvent as exc:
                raise BadInput(f"the architecture to copy (like) cannot be built here: {exc}") from None
            self._emit(events)

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs

    def begin_epoch(self) -> None:
        self.epoch += 1
        self._emit(self.projection.garden.tick(self.epoch))
        self.trainer.begin_epoch(self.epoch)
        self._send("epoch")

    def end_epoch(self) -> Observation:
        stats = self.stats = self.trainer.end_epoch(self.epoch, [e.train_loss for e in self.projection.history])
        self._emit([EpochEnded(epoch=self.epoch, train_loss=stats.train_loss, val_loss=stats.val_loss,
                               val_accuracy=stats.val_accuracy, params=stats.params, seeds=stats.seeds,
                               diagnostics=stats.diagnostics,
                               val_bits_per_char=bits_per_char(self.trainer.data, "val", stats.val_loss))])
        return self.projection.observe()

    def decide(self, command: Command, controller: str, **info: Any) -> list[Event]:
        """The command, as `CommandIssued`, and what it led to: those events, carried out (stored by `settle`)."""
        events = [CommandIssued(epoch=self.epoch, command=command, controller=controller, **info),
                  *self.projection.garden.handle(command, self.epoch)]
        self._emit(events)
        return events

    def settle(self) -> None:
        """The epoch is decided: its events (with the run's state, at a checkpoint's epoch) go to the writer."""
        self._checkpoint()
        crashpoints.reach("trained", self.epoch)
        self._flush()

    def finish(self) -> RunResult:
        crashpoints.reach("finishing", self.epoch)
        self._send("finish")  # the other ranks' part ends here; the test split is measured here alone
        data = self.trainer.data
        measured = not isinstance(data, UserData) or data.test is not None
        test_loss, test_accuracy, _ = self.trainer.evaluate("test") if measured else (None, None, {})
        if self.preset.validates_at_end:  # the last epoch's commands may have changed the model validated then
            val_loss, val_accuracy, _ = self.trainer.evaluate("val")
        else:
            last = self.projection.observe()
            val_loss, val_accuracy = last.val_loss, last.val_accuracy
        counts: dict[str, int] = {}
        for seed in self.projection.garden.seeds.values():
            counts[seed.stage.value] = counts.get(seed.stage.value, 0) + 1
        finished = RunFinished(epoch=self.epoch, val_accuracy=val_accuracy, test_accuracy=test_accuracy,
                               params=self.trainer.model.param_count(), seeds=counts,
                               val_bits_per_char=bits_per_char(data, "val", val_loss),
                               test_bits_per_char=bits_per_char(data, "test", test_loss))
        self._emit([finished])
        self._end_writing()
        return RunResult(finished.val_accuracy, finished.test_accuracy, finished.params, counts,
                         finished.val_bits_per_char, finished.test_bits_per_char)

    def fail(self, error: str) -> None:
        """Close the log with `RunFailed`; the unfinished epoch is dropped whole (the log keeps whole epochs).
        A run whose store is what failed cannot take it (its log ends at its last stored epoch), nor a run whose
        end is already handed to the writer: for those it only stops the writer."""
        if self._writer.failed or self._ending:
            self._writer.close()
            return
        self._pending.clear()
        self._emit([RunFailedEvent(epoch=self.epoch, error=error)])
        self._end_writing()

    def close(self) -> None:
        """Stop the writer thread after what it holds is written; for a run ended by an unexpected error
        (`finish` and `fail` close it themselves)."""
        self._writer.close()

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            self.projection.apply(event)  # the machine judges (and folds) first ...
            if self.ranks is not None:  # ... the other ranks will carry it out from the same RNG state ...
                if not self._outbox:
                    self._outbox_rng = torch.get_rng_state().numpy().tobytes()
                self._outbox.append(event)
            self.trainer.realize(event)  # ... the model carries out only what it accepted
            self._pending.append(event)

    def _send(self, kind: str) -> None:
        """Rank 0: the events carried out since the last message, to the other ranks (`follow`)."""
        if self.ranks is None:
            return
        events, self._outbox = [encode(e) for e in self._outbox], []
        self.ranks.send(Message(kind, self.epoch, events, self._outbox_rng))

    def _checkpoint(self) -> None:
        """At a due epoch, the run's state (copied now) goes last into the epoch's batch: the writer saves it
        before it appends the batch (`checkpoint.CheckpointWriter`)."""
        if self.checkpoints is not None and self.checkpoints.due(self.epoch):
            self._pending.append(checkpoint.capture(self.epoch, self.trainer, self.checkpoints.controller,
                                                    self.projection.garden, self.checkpoints.every))

    def _flush(self) -> None:
        """Hand the events so far to the writer thread as one batch (one transaction)."""
        self._writer.submit(list(self._pending))
        self._pending.clear()

    def _end_writing(self) -> None:
        """Write what is pending and wait until every batch is stored: the run's end is acknowledged."""
        self._ending = True
        try:
            self._flush()
            self._writer.wait()
        finally:
            self._writer.close()


def execute(
    config: RunConfig, controller: Controller, sink: Sink, progress: Progress | None = None,
    data: TaskData | UserData | None = None, preset: TaskPreset | None = None, build_events: bool = True,
    model: GrowableModel | None = None, checkpoint_folder: Path | None = None, checkpoint_every: int = 0,
    ranks: Ranks | None = None, batches: Batches | None = None, computed: Computed = Computed(),
) -> RunResult:
    """Train one run from `RunStarted` to `RunFinished`; a failure (a bug included) appends `RunFailed` and raises,
    unless the store is what failed (`Session.fail`). With a `checkpoint_folder`, every `checkpoint_every`-th
    epoch's state is saved there (`CheckpointSaved`). With `ranks`, as rank 0 of a data-parallel run; with
    `computed`, here alone as a recorded run was computed (re-execution)."""
    checkpoints = None if checkpoint_folder is None else Checkpoints(checkpoint_folder, checkpoint_every, controller)
    session = Session(config, sink, data=data, preset=preset, build_events=build_events, model=model,
                      checkpoints=checkpoints, ranks=ranks, computed=computed)
    return train(session, controller, progress, batches)


def train(session: Session, controller: Controller, progress: Progress | None = None,
          batches: Batches | None = None) -> RunResult:
    """Train a started (or resumed) session to `RunFinished`; a failure (a bug included) appends `RunFailed` and
    raises, unless the store is what failed (`Session.fail`)."""
    try:
        while not session.done:
            session.begin_epoch()
            train_epoch(session, batches)
            issued = decide_epoch(session, controller, session.end_epoch())
            session.settle()
            if progress is not None:  # said once the epoch is with the writer: a run stopped now keeps it
                for command in issued:
                    progress(session.epoch, session.stats, session.projection, command)
        return session.finish()
    except BaseException as exc:
        error = failure_of(exc, user_code=session.host_params is not None)
        if error is not None:
            session.fail(error)
        raise
    finally:
        session.close()


def decide_epoch(session: Session, controller: Controller, obs: Observation) -> list[CommandIssued]:
    """The controller's commands after an epoch: one, or up to `commands_per_epoch`, each on the observation the
    last left, until it waits or the lifecycle refuses one (a refused command would only be asked for again)."""
    issued = []
    for _ in range(session.config.commands_per_epoch):
        command = controller.decide(obs)
        decided, *effects = session.decide(command, controller.name, **getattr(controller, "decision_info", {}))
        issued.append(decided)
        if isinstance(command, Wait) or any(isinstance(e, CommandRejected) for e in effects):
            break
        obs = session.projection.observe()
    return issued


def train_epoch(session: Session, batches: Batches | None = None) -> None:
    """The training steps of the epoch `begin_epoch` began, over the epoch's shuffled batches."""
    trainer = session.trainer
    size = trainer.preset.batch_size
    epoch = trainer.data.batches("train", size, trainer.generator)
    if batches is not None:
        epoch = batches(session.epoch, epoch, trainer.data.steps(size))
    steps = 0
    for x, y in epoch:
        trainer.train_step(x, y)
        steps += 1
        crashpoints.reach("mid-epoch", session.epoch)
    if steps == 0:  # a user's training data that ran out (esper.fit): an epoch of nothing would pass for one
        raise RunFailed(f"epoch {session.epoch} drew no training batch: train gave none this time (a function that "
                        "returns the same iterator each epoch gives it once)")


def follow(ranks: Ranks, data: TaskData | None = None) -> None:
    """A follower rank's part of a data-parallel run (`esper.tolaria.ranks`): carry out what rank 0 sends and train
    each epoch on this rank's shards, until rank 0 finishes the run. `RankStopped` if rank 0 failed."""
    session: Session | None = None
    try:
        while True:
            message = ranks.receive()
            if message.kind == "stop":
                raise RankStopped(message.error, message.code)
            if session is None:
                if not message.events:  # rank 0 ended before it started a run
                    return
                session = Session.following(decode(message.events[0]), ranks, data)
            session.adopt(message)
            if message.kind == "finish":
                return
            session.epoch = message.number
            session.trainer.begin_epoch(session.epoch)
            train_epoch(session)
            session.trainer.epoch_totals()
    finally:
        if session is not None:
            session.close()


def failure_of(exc: BaseException, user_code: bool = False) -> str | None:
    """The `RunFailed.error` a run ends with when `exc` stops it: a failure of its own (diverged), an interruption,
    a failure Esper names (another run's store refused a write), or a bug (an internal error). In a run of the
    user's own model, data and loss (`user_code`) an exception may as well be theirs: it is not called Esper's.
    None for what does not end a run (`SystemExit` and the like)."""
    if isinstance(exc, KeyboardInterrupt):
        return str(exc) or "interrupted"
    if isinstance(exc, StoreFailed):  # what failed, not what the other run's log holds
        return exc.what
    if isinstance(exc, EsperError):
        return str(exc)
    if (memory := out_of_memory(exc)) is not None:
        return memory
    if isinstance(exc, Exception):
        return f"{'error' if user_code else 'internal error'}: {type(exc).__name__}: {first_line(exc)}"
    return None
