"""The bar within long epochs: on a terminal it shows batches done, rate and time left, then vanishes; on a pipe
nothing is written; either way every batch passes through unchanged."""

import io

import pytest
from rich.console import Console

from esper.cli.progress import LONG_EPOCH, EpochBars
from esper.leyline import EpochEnded, RunConfig
from esper.tamiyo.controllers import make_controller
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import ListSink, execute, resolve_config
from esper.tolaria.tasks import get_task


def _bars(terminal: bool) -> tuple[EpochBars, io.StringIO]:
    out = io.StringIO()
    return EpochBars(Console(file=out, force_terminal=terminal, width=100)), out


def test_a_long_epoch_on_a_terminal_shows_a_bar_that_vanishes():
    bars, out = _bars(terminal=True)
    assert list(bars(7, iter(range(LONG_EPOCH)), LONG_EPOCH)) == list(range(LONG_EPOCH))
    shown = out.getvalue()
    assert "epoch 7" in shown and f"{LONG_EPOCH}/{LONG_EPOCH}" in shown and "batches/s" in shown
    assert shown.endswith("\x1b[2K"), "the finished bar is erased: the epoch's own line follows"


def test_pipes_and_short_epochs_get_no_bar():
    piped, out = _bars(terminal=False)
    assert list(piped(1, iter(range(LONG_EPOCH)), LONG_EPOCH)) == list(range(LONG_EPOCH))
    short, short_out = _bars(terminal=True)
    assert list(short(1, iter(range(5)), 5)) == list(range(5))
    unknown, unknown_out = _bars(terminal=True)
    assert list(unknown(1, iter(range(LONG_EPOCH)), None)) == list(range(LONG_EPOCH))
    assert out.getvalue() == short_out.getvalue() == unknown_out.getvalue() == ""


@pytest.mark.slow  # trains a short run
def test_a_run_hands_each_epochs_batches_to_the_bar_and_trains_on_them_unchanged():
    seen = []

    def watch(epoch, batches, total):
        n = 0
        for batch in batches:
            n += 1
            yield batch
        seen.append((epoch, n, total))

    config = resolve_config(RunConfig(epochs=2, telemetry="minimal"))
    watched, plain = ListSink(), ListSink()
    execute(config, make_controller("heuristic", seed=0), watched, batches=watch)
    execute(config, make_controller("heuristic", seed=0), plain)
    steps = load_task_data("mnist1d", seed=0).steps(get_task("mnist1d").batch_size)
    assert seen == [(1, steps, steps), (2, steps, steps)]
    assert [type(e).__name__ for e in watched.events] == [type(e).__name__ for e in plain.events]
    assert [e.train_loss for e in watched.events if isinstance(e, EpochEnded)] == \
        [e.train_loss for e in plain.events if isinstance(e, EpochEnded)]
