"""A run's events as TensorBoard event files: one more projection of the log.

Per epoch (the step): training and validation loss, validation accuracy (and bits per character, on the text
task), parameters, and each live seed's α and contribution; each lifecycle transition and rejected command as
text, and how the run started, stopped and resumed; the final test accuracy (and bits per character); for a
learner's stream (PPO, IQL), each `PolicyUpdated`'s statistics at its update. The same writer serves a run
as it trains (`esper run --tensorboard DIR`: batches as they are appended) and any logged run afterwards
(`esper export RUN --format tensorboard`), so the two give the same files' contents.

TensorBoard is an optional extra (`pip install -e '.[tensorboard]'`); torch's `SummaryWriter` needs it.
"""

from collections.abc import Iterable
from pathlib import Path

from esper.errors import BadInput
from esper.nissa.files import why_unwritable
from esper.leyline.events import (
    CommandRejected,
    EpochEnded,
    Event,
    PolicyUpdated,
    RunFailed,
    RunFinished,
    RunResumed,
    RunStarted,
    SeedTransitioned,
)

INSTALL_HINT = "TensorBoard files need the tensorboard package: pip install -e '.[tensorboard]'"


def summary_writer(log_dir: Path):
    """torch's `SummaryWriter` for `log_dir`, or one line saying how to install what it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise BadInput(INSTALL_HINT) from None
    try:
        return SummaryWriter(log_dir=str(log_dir))
    except OSError as exc:
        raise BadInput(f"cannot write TensorBoard files to {log_dir}: {why_unwritable(log_dir, exc)}") from None


class TensorBoardWriter:
    """Writes one run's events, in order, under `<root>/<run_id>`."""

    def __init__(self, root: Path, run_id: str):
        self.writer = summary_writer(root / run_id)

    def write(self, events: Iterable[Event]) -> None:
        for event in events:
            self._write(event)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def _write(self, event: Event) -> None:
        w = self.writer
        if isinstance(event, EpochEnded):
            step = event.epoch
            w.add_scalar("loss/train", event.train_loss, step)
            w.add_scalar("loss/val", event.val_loss, step)
            w.add_scalar("accuracy/val", event.val_accuracy, step)
            if event.val_bits_per_char is not None:  # the text task's measure
                w.add_scalar("bits_per_char/val", event.val_bits_per_char, step)
            w.add_scalar("params", event.params, step)
            for seed in event.seeds:
                w.add_scalar(f"seed/{seed.seed_id}/alpha", seed.alpha, step)
                if seed.contribution is not None:
                    w.add_scalar(f"seed/{seed.seed_id}/contribution", seed.contribution, step)
        elif isinstance(event, SeedTransitioned):
            w.add_text("lifecycle", f"{event.seed_id} in {event.slot}: {event.from_stage} → {event.to_stage} "
                                    f"({event.trigger})", event.epoch)
        elif isinstance(event, CommandRejected):
            w.add_text("rejected", event.reason, event.epoch)
        elif isinstance(event, RunFinished):
            if event.test_accuracy is not None:
                w.add_scalar("accuracy/test", event.test_accuracy, event.epoch)
            if event.test_bits_per_char is not None:
                w.add_scalar("bits_per_char/test", event.test_bits_per_char, event.epoch)
        elif isinstance(event, RunFailed):  # stopped from outside, a run may be resumed: not a failure of its own
            w.add_text("run", event.error if event.interrupted else f"failed: {event.error}", event.epoch)
        elif isinstance(event, RunResumed):
            w.add_text("run", f"resumed from its checkpoint of epoch {event.checkpoint_epoch}", event.epoch)
        elif isinstance(event, RunStarted):
            c = event.config
            w.add_text("run", f"{c.task}, controller {c.controller}, seed {c.seed}, {c.epochs} epochs", 0)
        elif isinstance(event, PolicyUpdated):
            for name, value in event.stats.items():
                if value is not None:
                    w.add_scalar(f"learner/{name}", value, event.update)


def export_tensorboard(runs: dict[str, Iterable[Event]], root: Path) -> int:
    """Write each run's events under `root/<run_id>`; returns how many events were read."""
    n = 0
    for run_id, events in runs.items():
        writer = TensorBoardWriter(root, run_id)
        try:
            events = list(events)
            writer.write(events)
            n += len(events)
        finally:
            writer.close()
    return n
