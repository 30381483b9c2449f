"""One morphogenetic training run, written as events.

Per epoch, in this order (replay and `--verify` rely on it):
1. the lifecycle's automatic transitions (`Garden.tick`) are carried out;
2. the model trains one epoch and is measured: `EpochEnded`;
3. the controller decides on the observation folded from the events so far: `CommandIssued`, then what
   the command led to (`SeedGerminated`/`SeedTransitioned`, or `CommandRejected`);
4. the epoch's events are appended in one transaction.
"""

from typing import Any, Callable, Protocol

import attrs
import msgspec

from esper.errors import BadInput, RunFailed
from esper.leyline.config import RunConfig
from esper.leyline.events import (
    CommandIssued,
    EpochEnded,
    Event,
    RunFailed as RunFailedEvent,
    RunFinished,
    RunStarted,
)
from esper.tamiyo.controllers import Controller
from esper.tamiyo.observation import ObservationProjection
from esper.tolaria.data import load_task_data
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import EpochStats, Trainer


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


@attrs.define
class StoreSink:
    """Appends each batch to a store, with the optimistic-concurrency check on `seq`."""

    recorder: Any
    run_id: str
    seq: int = 0

    def append(self, batch: list[Event]) -> None:
        self.seq = self.recorder.append(self.run_id, batch, self.seq)


@attrs.frozen
class RunResult:
    val_accuracy: float
    test_accuracy: float
    params: int
    seeds: dict[str, int]
    """How many seeds ended in each stage."""


Progress = Callable[[int, EpochStats, ObservationProjection, CommandIssued], None]


def resolve_config(config: RunConfig) -> RunConfig:
    """The config as the run will use it, stored whole in `RunStarted`: preset epochs filled in."""
    preset = get_task(config.task)
    if config.epochs < 0:
        raise BadInput(f"--epochs must be positive, got {config.epochs}")
    return msgspec.structs.replace(config, epochs=config.epochs or preset.epochs)


def execute(
    config: RunConfig, controller: Controller, sink: Sink, progress: Progress | None = None, download: bool = False
) -> RunResult:
    """Train one run from `RunStarted` to `RunFinished`; a failure appends `RunFailed` and raises `RunFailed`."""
    preset = get_task(config.task)
    data = load_task_data(config.task, config.data_seed, config.data_dir, download=download)
    trainer = Trainer(config, preset, data)
    projection = ObservationProjection()
    pending: list[Event] = []

    def emit(events: list[Event]) -> None:
        for event in events:
            event = trainer.realize(event)
            projection.apply(event)
            pending.append(event)

    def flush() -> None:
        sink.append(list(pending))
        pending.clear()

    emit([RunStarted(config=config, host_params=trainer.model.param_count(), slots=trainer.model.slot_names,
                     blueprints=list(preset.blueprints))])
    flush()
    epoch = 0
    try:
        for epoch in range(1, config.epochs + 1):
            emit(projection.garden.tick(epoch))
            stats = trainer.train_epoch(epoch)
            emit([EpochEnded(epoch=epoch, train_loss=stats.train_loss, val_loss=stats.val_loss,
                             val_accuracy=stats.val_accuracy, params=stats.params, seeds=stats.seeds)])
            command = controller.decide(projection.observe())
            issued = CommandIssued(epoch=epoch, command=command, controller=controller.name,
                                   **getattr(controller, "decision_info", {}))
            emit([issued, *projection.garden.handle(command, epoch)])
            flush()
            if progress is not None:
                progress(epoch, stats, projection, issued)
        _, test_accuracy, _ = trainer.evaluate("test")
    except (RunFailed, KeyboardInterrupt) as exc:
        pending.clear()  # the unfinished epoch is dropped whole; the log keeps whole epochs only
        emit([RunFailedEvent(epoch=epoch, error=str(exc) or "interrupted")])
        flush()
        raise
    counts: dict[str, int] = {}
    for seed in projection.garden.seeds.values():
        counts[seed.stage.value] = counts.get(seed.stage.value, 0) + 1
    last = projection.observe()
    finished = RunFinished(epoch=config.epochs, val_accuracy=last.val_accuracy, test_accuracy=test_accuracy,
                           params=trainer.model.param_count(), seeds=counts)
    emit([finished])
    flush()
    return RunResult(finished.val_accuracy, finished.test_accuracy, finished.params, counts)
