"""A progress bar within long epochs, for a person at a terminal.

`esper run` prints one line per epoch; a cifar10 or text epoch can take minutes, so on a terminal a bar
(batches done, rate, time left) shows how the current epoch goes and vanishes when it ends, leaving the
epoch's line. On a pipe or in a log nothing changes: no bar, no control characters.
"""

from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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
