"""The writer thread behind a run: order kept, nothing written past a failure, the failure reaches the run."""

import threading

import attrs
import msgspec
import pytest

from esper.errors import StoreUnavailable as StoreError
from esper.leyline import EpochEnded, RunConfig
from esper.store import Recorder
from esper.tamiyo.controllers import make_controller
from esper.tolaria.loop import ListSink, StoreSink, execute
from esper.tolaria.verify import VerificationFailed, verify_run
from esper.tolaria.writebehind import WriteBehind


class SlowSink:
    """Records batches in order; `gate` holds every write until the test opens it."""

    def __init__(self, fail_on: int | None = None):
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.fail_on = fail_on

    def append(self, batch: list[int]) -> None:
        self.gate.wait()
        if batch[0] == self.fail_on:
            raise StoreError(f"disk full at {batch[0]}")
        self.batches.append(batch)


def test_batches_are_written_in_order_and_wait_returns_when_all_are():
    sink = SlowSink()
    writer = WriteBehind(sink)
    for i in range(20):
        writer.submit([i])
    assert sink.batches == []  # handed over, not written yet: submit does not block on the sink
    sink.gate.set()
    writer.wait()
    assert sink.batches == [[i] for i in range(20)]
    writer.close()


def test_a_failed_write_stops_later_writes_and_is_raised_to_the_run():
    sink = SlowSink(fail_on=3)
    writer = WriteBehind(sink)
    for i in range(6):
        writer.submit([i])
    sink.gate.set()
    with pytest.raises(StoreError, match="disk full at 3"):
        writer.wait()
    assert sink.batches == [[0], [1], [2]]  # no hole: nothing after the failed batch was written
    with pytest.raises(StoreError, match="disk full at 3"):
        writer.submit([6])
    writer.close()
    assert sink.batches == [[0], [1], [2]]


def test_a_finished_run_is_on_disk_when_execute_returns(tmp_path):
    config = RunConfig(controller="heuristic", epochs=4)
    with Recorder(tmp_path / "w.duckdb") as recorder:
        execute(config, make_controller("heuristic", 0), StoreSink(recorder, "r"))
        stored = [r.event for r in recorder.read("r")]
    in_memory = ListSink()
    execute(config, make_controller("heuristic", 0), in_memory)
    assert [type(e).__name__ for e in stored] == [type(e).__name__ for e in in_memory.events]
    assert type(stored[-1]).__name__ == "RunFinished"
    assert not any(t.name.startswith("esper-writer") for t in threading.enumerate())  # threads stopped


class InterruptAt:
    """A controller that waits, then is interrupted (Ctrl-C) while deciding at `epoch`."""

    name = "static"

    def __init__(self, epoch: int):
        self.epoch = epoch

    def decide(self, obs):
        if obs.epoch == self.epoch:
            raise KeyboardInterrupt
        return make_controller("static", 0).decide(obs)


def test_an_interrupted_run_keeps_every_whole_epoch_and_ends_with_run_failed(tmp_path):
    with Recorder(tmp_path / "w.duckdb") as recorder:
        with pytest.raises(KeyboardInterrupt):
            execute(RunConfig(controller="static", epochs=6), InterruptAt(4), StoreSink(recorder, "r"))
        events = [r.event for r in recorder.read("r")]
    types = [type(e).__name__ for e in events]
    assert types[0] == "RunStarted" and types[-1] == "RunFailed"
    assert events[-1].error == "interrupted"
    assert [e.epoch for e in events if type(e).__name__ == "CommandIssued"] == [1, 2, 3]
    assert types.count("EpochEnded") == 3  # epoch 4 never reached its decision: dropped whole


def test_an_interrupted_run_verifies_up_to_where_it_was_stopped(tmp_path):
    """Ctrl-C has no cause to re-execute: replay --verify compares what the run logged before its RunFailed."""
    with Recorder(tmp_path / "w.duckdb") as recorder:
        with pytest.raises(KeyboardInterrupt):
            execute(RunConfig(controller="static", epochs=6), InterruptAt(4), StoreSink(recorder, "r"))
        recorded = recorder.read("r")
    checked = verify_run(recorded)
    assert checked.events == len(recorded) - 1
    assert f"stopped from outside (interrupted) at seq {recorded[-1].seq}" in " ".join(checked.notes)
    i = max(k for k, r in enumerate(recorded) if isinstance(r.event, EpochEnded))  # the last epoch before the stop
    changed = attrs.evolve(recorded[i], event=msgspec.structs.replace(recorded[i].event, val_loss=9.0))
    with pytest.raises(VerificationFailed, match="val_loss"):
        verify_run(recorded[:i] + [changed] + recorded[i + 1:])
