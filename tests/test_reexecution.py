"""A log holds everything re-execution needs, and `--verify` judges decisions exactly, numbers within a tolerance."""

import json
import re
from pathlib import Path

import attrs
import msgspec
import pytest
import torch
from fake_runs import SameSlotEveryEpoch, as_recorded

from esper._kernels import cpu_model, has_avx2
from esper.leyline import HeuristicConfig, RunConfig, RunStarted, decode
from esper.leyline.events import PRESETS_BEFORE_V3, CheckpointSaved, CommandRejected, EpochEnded, SeedGerminated
from esper.nissa.runstate import RunState, as_one_run
from esper.nissa.transfer import recorded_runs
from esper.store import Recorded
from esper.tamiyo.controllers import make_controller
from esper.tolaria import tasks
from esper.tolaria.data import MNIST1D_VAL_FRACTION, _mnist1d_arrays, load_task_data, recorded_data
from esper.tolaria.loop import ListSink, execute
from esper.tolaria.verify import VerificationFailed, verify_run

pytestmark = pytest.mark.slow  # real training runs or subprocesses of the CLI

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "replays" / "mnist1d-heuristic.jsonl"
V2_LOG = ROOT / "tests" / "data" / "mnist1d-heuristic-v2.jsonl"
V3_LOG = ROOT / "tests" / "data" / "mnist1d-heuristic-v3.jsonl"
KNOBS = HeuristicConfig(warmup_epochs=1, min_gain=1.0, finish_epochs=0)


def _record(config: RunConfig, controller=None) -> list[Recorded]:
    sink = ListSink()
    execute(config, controller or make_controller(config.controller, config.seed, heuristic=config.heuristic), sink)
    return as_recorded(sink.events, "r")


@pytest.fixture(scope="module")
def grown() -> list[Recorded]:
    """A short run that germinates early (so it holds decisions to compare)."""
    return _record(RunConfig(seed=3, epochs=6, heuristic=KNOBS))


def _replace(recorded: list[Recorded], i: int, event) -> list[Recorded]:
    out = list(recorded)
    out[i] = Recorded(recorded[i].position, recorded[i].run_id, recorded[i].seq, None, None, event)
    return out


def test_a_run_records_its_preset_and_versions(grown):
    started = grown[0].event
    assert started.preset == tasks.get_task("mnist1d")
    assert set(started.versions) == {"esper", "torch", "cpu", "cpu_kernels", "cpu_model", "numpy"} and all(started.versions.values())


def test_an_old_log_is_read_with_the_presets_of_its_time(monkeypatch):
    """Never with today's: a preset changed in code does not change what an old log means."""
    monkeypatch.setitem(tasks.TASKS, "mnist1d", msgspec.structs.replace(tasks.TASKS["mnist1d"], lr=0.5, batch_size=7))
    first = json.loads(V2_LOG.read_text().splitlines()[0])
    assert first["payload"]["schema_version"] == 2 and "preset" not in first["payload"]
    started = decode(json.dumps(first["payload"]))
    # what v5, v6 and v7 added, as runs then trained
    as_then = {**PRESETS_BEFORE_V3["mnist1d"], "fossils_keep_state": False, "divergence_epochs": 1,
               "validates_at_end": False}
    assert started.preset == msgspec.convert(as_then, type(started.preset))
    assert (started.preset.lr, started.preset.batch_size) == (3e-3, 128)


def test_a_v5_log_reads_as_failing_at_the_first_epoch_over_the_divergence_bound(grown):
    payload = msgspec.to_builtins(grown[0].event)
    assert payload["schema_version"] == 7 and payload["preset"]["divergence_epochs"] == 3
    del payload["preset"]["divergence_epochs"], payload["preset"]["validates_at_end"]
    started = decode(json.dumps({**payload, "schema_version": 5}))
    assert started.preset == msgspec.structs.replace(grown[0].event.preset, divergence_epochs=1, validates_at_end=False)


def test_a_v6_log_reads_as_ending_with_its_last_epochs_validation(grown):
    payload = msgspec.to_builtins(grown[0].event)
    assert payload["preset"]["validates_at_end"] is True
    del payload["preset"]["validates_at_end"]
    started = decode(json.dumps({**payload, "schema_version": 6}))
    assert started.preset == msgspec.structs.replace(grown[0].event.preset, validates_at_end=False)


def test_verify_trains_with_the_recorded_preset_not_todays(grown, monkeypatch):
    patched = msgspec.structs.replace(tasks.TASKS["mnist1d"], lr=3e-2)
    monkeypatch.setitem(tasks.TASKS, "mnist1d", patched)
    today = _record(RunConfig(seed=3, epochs=2))  # the patch does change what a new run computes ...
    assert today[0].event.preset.lr == 3e-2
    assert today[1].event.train_loss != grown[1].event.train_loss
    assert verify_run(grown, exact=True).events == len(grown)  # ... not what the old log re-executes to


def _nudged_val_loss(recorded: list[Recorded]) -> list[Recorded]:
    """The run with its first epoch's `val_loss` 3e-7 (relative) off: a last-digits difference."""
    i = next(i for i, r in enumerate(recorded) if isinstance(r.event, EpochEnded))
    epoch = recorded[i].event
    return _replace(recorded, i, msgspec.structs.replace(epoch, val_loss=epoch.val_loss * (1 + 3e-7)))


def test_numbers_within_the_tolerance_pass_and_are_reported(grown):
    nudged = _nudged_val_loss(grown)
    verification = verify_run(nudged)
    assert 1e-7 < verification.deviations["EpochEnded.val_loss"] < 1e-6
    assert "EpochEnded.val_loss" in verification.describe()
    assert verification.notes == []  # recorded here, by this software: nothing to explain
    with pytest.raises(VerificationFailed, match=r"in val_loss: recorded .* over the tolerance 1e-08"):
        verify_run(nudged, tolerance=1e-8)
    with pytest.raises(VerificationFailed, match=r"differs at seq \d+ .*EpochEnded.*in val_loss"):
        verify_run(nudged, exact=True)


def _first_seeds_epoch(recorded: list[Recorded]) -> int:
    return next(i for i, r in enumerate(recorded) if isinstance(r.event, EpochEnded)
                and any(s.contribution is not None for s in r.event.seeds))


def _seed_left_out(epoch: EpochEnded) -> EpochEnded:
    return msgspec.structs.replace(epoch, seeds=epoch.seeds[:-1])


def _contribution_unmeasured(epoch: EpochEnded) -> EpochEnded:
    measured = next(i for i, s in enumerate(epoch.seeds) if s.contribution is not None)
    seeds = list(epoch.seeds)
    seeds[measured] = msgspec.structs.replace(seeds[measured], contribution=None)
    return msgspec.structs.replace(epoch, seeds=seeds)


@pytest.mark.parametrize("forge", [_seed_left_out, _contribution_unmeasured])
def test_a_logged_number_is_compared_only_where_the_shapes_agree(grown, forge):
    """Within the tolerance means a number beside its re-executed twin: a seed's telemetry left out of an epoch, or a
    measured contribution logged as unmeasured (null), is a difference, however close the numbers left are."""
    i = _first_seeds_epoch(grown)
    with pytest.raises(VerificationFailed, match=rf"differs at seq {grown[i].seq} .*EpochEnded\), in seeds"):
        verify_run(_replace(grown, i, forge(grown[i].event)))


@pytest.fixture(scope="module")
def refused() -> list[Recorded]:
    recorded = _record(RunConfig(seed=1, epochs=3), SameSlotEveryEpoch())
    assert [r.event.evidence["rule"] for r in recorded if isinstance(r.event, CommandRejected)] == ["slot_occupied"] * 2
    return recorded


def test_a_refused_command_re_executes_to_the_same_refusal_and_evidence(refused):
    assert verify_run(refused, exact=True).events == len(refused)
    i = next(i for i, r in enumerate(refused) if isinstance(r.event, CommandRejected))
    rejection = refused[i].event
    forged = msgspec.structs.replace(rejection, evidence={**rejection.evidence, "rule": "unknown_slot"})
    with pytest.raises(VerificationFailed, match=rf"decision differs at epoch {rejection.epoch}: .*rejected"):
        verify_run(_replace(refused, i, forged))


def test_a_runs_summary_counts_its_commands_and_refusals(refused):
    summary = RunState.fold(refused).summary()
    assert (summary["commands"], summary["rejected"]) == (3, 2)


def test_a_refusal_logged_before_refusals_carried_evidence_still_verifies(refused):
    old = [_replace(refused, i, msgspec.structs.replace(r.event, evidence={}))[i]
           if isinstance(r.event, CommandRejected) else r for i, r in enumerate(refused)]
    assert verify_run(old).events == len(refused)


def test_a_killed_run_re_executes_what_it_logged(grown):
    """A run whose process was killed (SIGKILL, a crash) ends without RunFinished or RunFailed: its log up to there
    is re-executed and compared, though the re-execution asks for decisions the log never recorded."""
    killed = [r for r in grown if r.event.epoch is None or r.event.epoch <= 3]
    assert not any(type(r.event).__name__ in ("RunFinished", "RunFailed") for r in killed)
    verification = verify_run(killed, exact=True)
    assert verification.events == len(killed)
    assert any("without RunFinished or RunFailed (its process was killed)" in note for note in verification.notes)
    running = verify_run(killed, exact=True, running=True)
    assert any("without RunFinished or RunFailed (it is still being written)" in n for n in running.notes)
    last = killed[-1]  # a checkpoint is the last event its process wrote: the note names where the log ends
    saved = attrs.evolve(last, seq=last.seq + 1, event=CheckpointSaved(epoch=3, sha256="0" * 64, size=1))
    noted = verify_run([*killed, saved], exact=True).notes
    assert any(f"the run's log ends at seq {last.seq + 1} without" in note for note in noted), noted
    with pytest.raises(VerificationFailed, match="in val_loss"):
        verify_run(_nudged_val_loss(killed), exact=True)


def test_a_run_recorded_on_another_cpu_model_that_differs_names_both_cpus(grown):
    started = grown[0].event
    elsewhere = msgspec.structs.replace(started, versions=started.versions | {"cpu_model": "Some Other CPU"})
    with pytest.raises(VerificationFailed, match=rf"in val_loss: .*recorded with .*cpu_model Some Other CPU.*; "
                                                 rf"re-executed with .*cpu_model {re.escape(cpu_model())}"):
        verify_run(_nudged_val_loss(_replace(grown, 0, elsewhere)), exact=True)


def test_a_different_decision_is_named_with_its_epoch(grown):
    i = next(i for i, r in enumerate(grown) if isinstance(r.event, SeedGerminated))
    event = grown[i].event
    other = "norm" if event.blueprint != "norm" else "conv_light"
    with pytest.raises(VerificationFailed, match=rf"decision differs at epoch {event.epoch}: recorded .*{other} in "
                                                 rf"{event.slot}; now .*{event.blueprint} in {event.slot}"):
        verify_run(_replace(grown, i, msgspec.structs.replace(event, blueprint=other)))


@pytest.mark.skipif(not has_avx2(), reason="the portable kernel set is AVX2's, which this CPU lacks")
def test_the_shipped_sample_reexecutes_bit_for_bit_on_any_cpu():
    """With any numpy: its data is standardised with exact moments (CheckpointSaved events are not re-executed). On
    any x86-64 CPU with AVX2, whichever maker's: it was computed with the portable kernel set (esper/_kernels.py),
    recorded on one CPU model and, wherever this suite runs on another, re-executed across the two."""
    (run_id, recorded), = recorded_runs(SAMPLE).items()
    started = recorded[0].event
    assert isinstance(started, RunStarted) and started.preset.standardise == "exact"
    assert started.versions["cpu_kernels"] == "portable"
    assert verify_run(recorded, exact=True).events == len(as_one_run(recorded))


def test_a_log_from_before_exact_moments_re_executes_with_numpys_float32_ones():
    """Its logged preset has no `standardise`: it trains again on data standardised as it was, with numpy's float32
    moments, whose last bits are the numpy's that computes them. So it re-executes as recorded with the numpy it was
    recorded with (2.x), and its kernel set (`ESPER_CPU_KERNELS=fast`, see test_kernels.py); with another numpy
    (1.26), contributions measured on a few examples move past the tolerance."""
    (run_id, recorded), = recorded_runs(V3_LOG).items()
    started = recorded[0].event
    assert json.loads(V3_LOG.read_text().splitlines()[0])["payload"]["schema_version"] == 3
    assert started.preset.standardise == "float32"
    seed = started.config.data_seed
    x, y, _, _ = _mnist1d_arrays(seed)
    fit = x[:len(y) - int(len(y) * MNIST1D_VAL_FRACTION)]
    data = recorded_data(started)
    assert torch.equal(data.train.x[:, 0], (torch.tensor(fit) - float(fit.mean())) / float(fit.std()))
    assert not torch.equal(data.train.x, load_task_data("mnist1d", seed).train.x)  # today's runs: exact moments


def test_an_old_log_naming_a_task_without_a_frozen_preset_is_one_clear_error():
    from esper.errors import IllegalEvent

    first = json.loads(V2_LOG.read_text().splitlines()[0])["payload"]
    first["config"]["task"] = "mnist2d"
    with pytest.raises(IllegalEvent, match="RunStarted v2 cannot be upcast: KeyError 'mnist2d'"):
        decode(json.dumps(first))


def test_a_run_that_trained_on_its_machines_threads_re_executes_on_as_many(monkeypatch):
    """A preset that fixes no thread count (cifar10's) trains on torch's; re-execution must use as many, because a
    reduction split over other threads rounds otherwise (a run of N ranks had one thread each under torchrun)."""
    monkeypatch.setitem(tasks.TASKS, "mnist1d", msgspec.structs.replace(tasks.TASKS["mnist1d"], cpu_threads=0))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        recorded = _record(RunConfig(seed=3, epochs=4, heuristic=KNOBS))
        assert recorded[0].event.threads == 1
        torch.set_num_threads(2)  # this machine's default, here: the recorded count must win
        assert verify_run(recorded, exact=True).exact
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
