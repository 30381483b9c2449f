"""The bar within long epochs: on a terminal it shows batches done, rate and time left, then vanishes; on a pipe
nothing is written; either way every batch passes through unchanged."""

import io

from rich.console import Console

from esper.cli.progress import LONG_EPOCH, EpochBars


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
