"""Progress of a training run, for a person watching: a line per epoch, and a bar within long epochs.

`esper run` and `esper replay --verify` (re-executing) print one line per epoch; a cifar10 or text epoch can take
minutes, so on a terminal a bar (batches done, rate, time left) shows how the current epoch goes and vanishes when it
ends, leaving the epoch's line. On a pipe or in a log nothing changes: no bar, no control characters.
"""

from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from esper.cli.app import say
from esper.leyline.stages import SeedStage
from esper.nissa.narrative import describe_command

if TYPE_CHECKING:
    from esper.tamiyo.observation import ObservationProjection
    from esper.tolaria.trainer import EpochStats

Batch = TypeVar("Batch")

LONG_EPOCH = 100
"""Batches from which an epoch gets a bar (mnist1d's 40 pass in a blink; cifar10 has 391)."""


class EpochBars:
    """Wraps each epoch's batches (`esper.tolaria.loop.StepProgress`): a transient bar on a terminal."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)

    def __call__(self, epoch: int, batches: Iterable[Batch], total: int | None) -> Iterator[Batch]:
        if not self.console.is_terminal or total is None or total < LONG_EPOCH:
            yield from batches
            return
        columns = (TextColumn(f"epoch {epoch}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                   TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task("train", total=total, rate="")
            for batch in batches:
                yield batch
                speed = bar.tasks[0].speed  # None until rich has seen a few steps
                bar.update(task, advance=1, rate=f"{speed:.1f} batches/s" if speed else "")


def epoch_lines(total: int) -> Callable[..., None]:
    """A line per epoch on stderr (of `total`): the epoch's numbers (its size before the command), the command the
    controller then issued, and the live seeds as the epoch's commands left them (an advanced seed already in its
    new stage). Each further command of the epoch (`--commands-per-epoch`) gets a line of its own under it."""
    reported = {"epoch": None}

    def report(epoch: int, stats: "EpochStats", projection: "ObservationProjection", issued) -> None:
        live = [s for s in projection.garden.seeds.values() if s.stage.value in ("GERMINATED", "TRAINING", "BLENDING")]
        seeds = ", ".join(
            f"{s.seed_id}:{s.blueprint} {s.stage.value.lower()}"
            + (f" α={s.telemetry.alpha:.2f}" if s.stage is SeedStage.BLENDING and s.telemetry else "")
            for s in live
        ) or "-"
        numbers = f"[{epoch:>3}/{total}] val {stats.val_accuracy * 100:5.1f}%  loss {stats.train_loss:.3f}  " \
                  f"params {stats.params:>7,}"
        again = reported["epoch"] == epoch
        reported["epoch"] = epoch
        said = f"{' ' * len(numbers)}  → {describe_command(issued.command)}" if again else \
            f"{numbers}  → {describe_command(issued.command)}  seeds {seeds}"
        say(said)

    return report
