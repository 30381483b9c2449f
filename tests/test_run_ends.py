"""Every run ends: a bug, a divergence or a lost stderr never leaves a run cut off without its closing event."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import torch
from cli_runner import ESPER, environment, invoke, start
from torch import nn

import esper.cli  # noqa: F401 - `esper.cli.app` is the typer app there; the module is what this test needs
from esper.errors import RunFailed, StoreFailed
from esper.leyline import Advance, Cull, EpochEnded, Germinate, RunConfig, RunFinished, RunStarted, SeedTransitioned, Wait
from esper.leyline.config import LifecycleConfig
from esper.leyline.events import RunFailed as RunFailedEvent
from esper.simic.env import VecEnv, configs_round_robin, play
from esper.simic.features import spec_for_task
from esper.simic.policy import PolicyNet
from esper.simic.rollout import collect, episode_generators
from esper.store import Recorder, Workspace
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import ListSink, Session, StoreSink, execute, resolve_config, train
from esper.tolaria.telemetry import LayerGradients
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import Trainer, divergence

pytestmark = pytest.mark.slow  # real training runs and subprocesses of the CLI



class Faulty:
    """A controller with a bug: it raises at epoch `at` (and waits before)."""

    name = "faulty"

    def __init__(self, at: int):
        self.at = at

    def decide(self, obs):
        if obs.epoch == self.at:
            raise ZeroDivisionError("a bug of ours")
        return Wait()


class Waiting:
    name = "waiting"

    def decide(self, obs):
        return Wait()


@pytest.fixture(scope="module")
def data():
    return load_task_data("mnist1d", RunConfig().data_seed)


class CullsAtTheEnd:
    """Grows one seed, blends it in, and culls it after the run's last epoch."""

    name = "culls-at-the-end"

    def __init__(self, epochs: int):
        self.epochs = epochs

    def decide(self, obs):
        live = [s for s in obs.garden.seeds.values() if s.stage.value in ("TRAINING", "BLENDING")]
        if obs.epoch == 1:
            return Germinate(slot="mid", blueprint="conv_heavy")
        if obs.epoch == self.epochs:
            return Cull(seed_id=live[0].seed_id)
        if live and live[0].stage.value == "TRAINING":
            return Advance(seed_id=live[0].seed_id)
        return Wait()


def test_a_run_ends_measuring_validation_on_the_model_its_last_commands_left(data):
    """`RunFinished` describes one model: its validation accuracy, like its test accuracy and size, is of the model
    after the last epoch's commands, not the last epoch's (a policy could otherwise cull a seed at the end and keep
    the accuracy it gave)."""
    lifecycle = LifecycleConfig(min_training_epochs=1, gradient_health_threshold=0.5, blend_epochs=2,
                                stability_window=1, regression_tolerance=0.05, embargo_epochs=2)
    sink = ListSink()
    session = Session(resolve_config(RunConfig(epochs=5, seed=0, lifecycle=lifecycle)), sink, data=data)
    train(session, CullsAtTheEnd(5))
    *_, last_epoch = (e for e in sink.events if isinstance(e, EpochEnded))
    culled = [e for e in sink.events if isinstance(e, SeedTransitioned) and e.to_stage == "CULLED"]
    finished = sink.events[-1]
    assert [(e.epoch, e.from_stage) for e in culled] == [(5, "BLENDING")]
    assert finished.params < last_epoch.params and finished.val_accuracy != last_epoch.val_accuracy
    assert finished.val_accuracy == session.trainer.evaluate("val")[1]
    # where the last command changes nothing, the end's validation is the last epoch's, bit for bit
    waited = ListSink()
    execute(resolve_config(RunConfig(epochs=2, seed=0)), Waiting(), waited, data=data)
    assert waited.events[-1].val_accuracy == [e for e in waited.events if isinstance(e, EpochEnded)][-1].val_accuracy


def config(epochs: int) -> RunConfig:
    return resolve_config(RunConfig(epochs=epochs, controller="static", seed=4))


def error_line(result, code: int) -> str:
    """The one `esper: ...` line a command that trained (progress lines first) ended with."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    said = [line for line in result.stderr.splitlines() if line.startswith("esper")]
    assert len(said) == 1 and said[0] == result.stderr.splitlines()[-1], result.stderr
    return said[0]


def closing(events: list) -> list:
    return [e for e in events if isinstance(e, (RunFinished, RunFailedEvent))]


def epochs_of(events: list) -> list[int]:
    return [e.epoch for e in events if isinstance(e, EpochEnded)]


def stored_events(workspace: Path) -> dict[str, list]:
    with Workspace.at(workspace).reader() as reader:
        runs = [r[0] for r in reader.con.execute("SELECT DISTINCT run_id FROM events").fetchall()]
        return {run: [r.event for r in reader.read_checked(run).recorded] for run in runs}


# ---- a bug ---------------------------------------------------------------------------------------


def test_a_bug_inside_a_run_ends_it_with_run_failed_and_keeps_its_whole_epochs(data):
    sink = ListSink()
    with pytest.raises(ZeroDivisionError):
        execute(config(4), Faulty(at=2), sink, data=data)
    assert epochs_of(sink.events) == [1]  # epoch 2 was not whole: dropped
    assert closing(sink.events) == [RunFailedEvent(epoch=2, error="internal error: ZeroDivisionError: a bug of ours")]


def test_esper_run_reports_a_bug_as_an_internal_error_and_the_run_as_failed(tmp_path, monkeypatch):
    monkeypatch.delenv("ESPER_DEBUG", raising=False)
    monkeypatch.setattr("esper.app.runs.make_controller", lambda *args, **kwargs: Faulty(at=2))
    error = error_line(invoke("run", "--epochs", "3", workspace=tmp_path), code=1)
    assert error.startswith("esper: internal error: ZeroDivisionError: a bug of ours"), error
    [events] = stored_events(tmp_path).values()
    assert epochs_of(events) == [1]
    assert [type(e).__name__ for e in closing(events)] == ["RunFailed"]
    assert closing(events)[0].error.startswith("internal error: ZeroDivisionError")
    runs = invoke("runs", "--json", workspace=tmp_path)
    assert [r["status"] for r in json.loads(runs.stdout)] == ["failed"]


def test_a_run_out_of_memory_says_so_in_one_line_and_ends_failed(tmp_path, monkeypatch):
    """A model or batch too big for the machine is no bug of Esper's: the run ends with `RunFailed` saying what
    could not be allocated, and the command says the same in one line (exit 1)."""
    monkeypatch.delenv("ESPER_DEBUG", raising=False)
    original = Trainer.train_step

    def step(self, x, y):
        if self._seen >= 3 * len(y):  # the fourth step of the first epoch
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity")
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", step)
    error = error_line(invoke("run", "--epochs", "3", workspace=tmp_path), code=1)
    assert error == "esper: out of memory: 20.00 GiB could not be allocated (a smaller model or batch needs less)"
    [events] = stored_events(tmp_path).values()
    assert epochs_of(events) == [] and closing(events)[0].error == error.removeprefix("esper: ")


def test_a_policy_too_big_for_the_machine_is_refused_in_one_line(tmp_path):
    result = invoke("ppo", "--hidden", "1000000000", "--episodes", "1", "--epochs", "2",
                    "--out", str(tmp_path / "p.pt"), workspace=tmp_path / "ws")
    assert error_line(result, code=1).startswith("esper: out of memory: ") and "GiB could not be allocated" in result.stderr
    assert not (tmp_path / "p.pt").exists() and not list((tmp_path / "ws").glob("*.duckdb"))


def test_a_bug_in_one_lock_step_run_ends_every_run_it_was_playing(data):
    sinks = [ListSink() for _ in range(3)]
    vec = VecEnv(configs_round_robin(config(3), 3, ["cpu"]), sinks, data)
    with pytest.raises(ZeroDivisionError):
        play(vec, [Waiting(), Faulty(at=2), Waiting()])
    for sink in sinks:
        assert epochs_of(sink.events) == [1]
        assert [e.error for e in closing(sink.events)] == ["internal error: ZeroDivisionError: a bug of ours"]


def test_a_bug_in_a_ppo_rollout_ends_every_episode(data, monkeypatch):
    calls = []

    def act(self, x, mask, generator=None):
        calls.append(1)
        if len(calls) > 2:  # both episodes decided epoch 1; the bug strikes at epoch 2
            raise RuntimeError("policy bug\nsecond line")
        return original(self, x, mask, generator=generator)

    original = PolicyNet.act
    monkeypatch.setattr(PolicyNet, "act", act)
    sinks = [ListSink(), ListSink()]
    base = resolve_config(RunConfig(epochs=3, controller="ppo", seed=5))
    vec = VecEnv(configs_round_robin(base, 2, ["cpu"]), sinks, data)
    with pytest.raises(RuntimeError):
        collect(vec, PolicyNet(spec_for_task("mnist1d")), episode_generators(0, 0, range(2)))
    for sink in sinks:
        assert [e.error for e in closing(sink.events)] == ["internal error: RuntimeError: policy bug"]


class BrokenStoreSink(ListSink):
    """Takes `RunStarted`, then the store refuses every write."""

    def append(self, batch):
        if self.events:
            raise StoreFailed("no space left on device writing /ws/a.duckdb", "free space")
        super().append(batch)


def test_the_run_whose_store_failed_takes_no_run_failed_and_the_others_still_end(data):
    sinks = [BrokenStoreSink(), ListSink()]
    vec = VecEnv(configs_round_robin(config(3), 2, ["cpu"]), sinks, data)
    with pytest.raises(StoreFailed):
        play(vec, [Waiting(), Waiting()])
    assert [type(e) for e in sinks[0].events] == [RunStarted]
    assert [e.error for e in closing(sinks[1].events)] == ["no space left on device writing /ws/a.duckdb"]


# ---- divergence ----------------------------------------------------------------------------------


def test_divergence_is_a_non_finite_loss_or_ten_times_the_median_after_the_third_epoch():
    assert divergence(2, math.nan, [1.0]) == "training diverged at epoch 2: train loss nan"
    assert divergence(3, 50.0, [1.0, 1.0]) is None  # not before the fourth epoch
    assert divergence(4, 9.9, [2.0, 1.0, 0.5]) is None  # median 1.0
    assert divergence(4, 10.5, [2.0, 1.0, 0.5]) == (
        "training diverged at epoch 4: train loss 10.5 is over 10× the median 1 of epochs 1–3")
    assert divergence(6, 5.0, [9.0, 0.4, 0.4, 0.45, 0.5]) == (
        "training diverged at epoch 6: train loss 5 is over 10× the median 0.45 of epochs 1–5")


def test_a_finite_loss_diverges_only_after_the_epochs_in_a_row_the_preset_asks_for():
    calm = [2.0, 1.0, 0.5, 0.1, 0.1]  # epochs 1-5; epoch 6 is over 10x their median 0.5
    assert divergence(6, 6.0, calm, in_a_row=3) is None
    assert divergence(7, 8.0, [*calm, 6.0], in_a_row=3) is None  # two epochs over
    assert divergence(8, 12.0, [*calm, 6.0, 8.0], in_a_row=3) == (
        "training diverged at epoch 8: train loss 12 is over 10× the median 1 of epochs 1–7, and has been over 10× "
        "the median of the epochs before it for 3 epochs in a row")
    assert divergence(8, 12.0, [*calm, 6.0, 0.2], in_a_row=3) is None  # the spike ended: the count starts again
    assert divergence(8, 9.0, [*calm, 6.0, 8.0], in_a_row=3) is None  # the median rose with the spike: 9 is under 10
    assert divergence(6, math.inf, calm, in_a_row=3) == "training diverged at epoch 6: train loss inf"  # at once
    assert divergence(4, 60.0, [2.0, 1.0, 0.5], in_a_row=0) == divergence(4, 60.0, [2.0, 1.0, 0.5]) is not None


def spike_at(epochs: int | tuple[int, ...], factor: float, monkeypatch) -> None:
    """The training loss of `epochs` comes out `factor` times what it was."""
    original = Trainer.end_epoch
    spiked = {epochs} if isinstance(epochs, int) else set(epochs)

    def end_epoch(self, e, earlier_losses=()):
        if e in spiked:
            self._loss_sum *= factor
        return original(self, e, earlier_losses)

    monkeypatch.setattr(Trainer, "end_epoch", end_epoch)


def test_a_loss_ten_times_the_median_for_three_epochs_ends_esper_run_with_the_evidence(tmp_path, monkeypatch):
    spike_at((4, 5, 6), 100.0, monkeypatch)
    error = error_line(invoke("run", "--epochs", "7", "--controller", "static", workspace=tmp_path), code=1)
    assert error.startswith("esper: training diverged at epoch 6: train loss ") and "for 3 epochs in a row" in error
    [events] = stored_events(tmp_path).values()
    assert epochs_of(events) == [1, 2, 3, 4, 5]  # the spike's first two epochs are logged: they might have passed
    [failed] = closing(events)
    assert failed.error == error.removeprefix("esper: ")
    median = sorted(e.train_loss for e in events if isinstance(e, EpochEnded))[2]
    assert f"the median {median:.6g} of epochs 1–5" in failed.error


def test_a_one_epoch_spike_ends_a_run_only_under_a_preset_of_one_epoch_in_a_row(data, monkeypatch):
    """As every run logged before `divergence_epochs` (RunStarted v5 and older) was judged, and re-executes."""
    spike_at(4, 100.0, monkeypatch)
    sink = ListSink()
    execute(config(6), Waiting(), sink, data=data)
    assert epochs_of(sink.events) == [1, 2, 3, 4, 5, 6] and isinstance(closing(sink.events)[0], RunFinished)
    losses = [e.train_loss for e in sink.events if isinstance(e, EpochEnded)]
    assert losses[3] > 10 * sorted(losses[:3])[1]  # the spike was there, over the bound
    strict = msgspec.structs.replace(get_task("mnist1d"), divergence_epochs=1)
    sink = ListSink()
    with pytest.raises(RunFailed, match="training diverged at epoch 4: train loss .* is over 10× the median"):
        execute(config(6), Waiting(), sink, data=data, preset=strict)
    assert epochs_of(sink.events) == [1, 2, 3]


def test_a_non_finite_loss_ends_the_run_and_no_nan_reaches_the_log(data, monkeypatch):
    spike_at(2, math.nan, monkeypatch)
    sink = ListSink()
    with pytest.raises(RunFailed, match="training diverged at epoch 2: train loss nan"):
        execute(config(3), Waiting(), sink, data=data)
    assert epochs_of(sink.events) == [1]
    assert closing(sink.events)[0].error == "training diverged at epoch 2: train loss nan"
    for event in sink.events:  # JSON has no NaN: msgspec would have written null
        if isinstance(event, EpochEnded):
            assert all(math.isfinite(x) for x in (event.train_loss, event.val_loss, event.val_accuracy)), event


def test_a_layer_whose_gradient_is_not_finite_is_exploding_and_has_no_norm_to_log_as_null():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model(torch.randn(4, 2)).sum().backward()
    model[0].weight.grad[0, 0] = math.inf
    meter = LayerGradients(model.named_parameters())
    meter.add()
    report = meter.report()
    assert list(report["grad_norms"]) == ["1"] and report["exploding"] == ["0"]
    assert "null" not in msgspec.json.encode(report).decode()


# ---- progress on a closed stream ---------------------------------------------------------------------


class BrokenStream:
    writes = 0

    def write(self, text):
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise OSError("no descriptor")


def test_a_progress_line_stderr_cannot_take_silences_progress_and_raises_nothing(monkeypatch):
    broken = BrokenStream()
    app = sys.modules["esper.cli.app"]
    monkeypatch.setattr(sys, "stderr", broken)
    monkeypatch.setattr(app, "_stderr_gone", False)
    app.say("first")
    app.say("second")
    assert broken.writes == 1 and app._stderr_gone


def run_in_shell(script: str, workspace: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=environment(workspace, ESPER=" ".join(ESPER)))


def finished_runs(workspace: Path) -> list[str]:
    return [run for run, events in stored_events(workspace).items() if closing(events) and
            isinstance(closing(events)[0], RunFinished)]


def test_a_run_whose_stderr_reader_left_trains_on_and_finishes(tmp_path):
    """`esper run --json 2>&1 >result.json | head -1`: progress stops, the run does not."""
    result = run_in_shell('$ESPER run --epochs 3 --json 2>&1 >result.json | head -1; echo "${PIPESTATUS[0]}" > rc',
                          tmp_path / "ws", tmp_path)
    assert (tmp_path / "rc").read_text().strip() == "0", result.stdout
    assert result.stdout.startswith("run ") and len(result.stdout.splitlines()) == 1
    printed = json.loads((tmp_path / "result.json").read_text())
    assert finished_runs(tmp_path / "ws") == [printed["run_id"]]


def test_a_run_with_stderr_closed_finishes_and_stdout_holds_only_its_result(tmp_path):
    result = run_in_shell("$ESPER run --epochs 2 --json 2>&-", tmp_path / "ws", tmp_path)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()  # no progress line went to stdout instead
    assert finished_runs(tmp_path / "ws") == [json.loads(line)["run_id"]]


def test_a_stderr_pipe_closed_from_the_start_stops_nothing(tmp_path):
    process = start("run", "--epochs", "2", "--json", workspace=tmp_path)
    process.stderr.close()
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0
    assert finished_runs(tmp_path) == [json.loads(out)["run_id"]]


# ---- an interrupted iql -------------------------------------------------------------------------------


def _ctrl_c_as_at_a_terminal() -> None:
    """A suite started in the background by a non-interactive shell (`pytest &`) ignores SIGINT, and so would the
    command it starts (Python then installs no Ctrl-C handler): give the command the default a terminal gives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_iql_leaves_no_empty_store(tmp_path, data):
    with Recorder(tmp_path / "a-run.duckdb") as recorder:  # a real run: the learner's dataset
        execute(config(2), Waiting(), StoreSink(recorder, "a-run"), data=data)
    before = sorted(p.name for p in tmp_path.glob("*.duckdb"))
    # Steps slow enough that the first update (500 steps) is far off when the interrupt comes.
    process = start("iql", "--steps", "100000", "--batch-size", "8192", "--hidden", "256", "--out", tmp_path / "iql.pt",
                    workspace=tmp_path, preexec_fn=_ctrl_c_as_at_a_terminal)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("iql-*.duckdb")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    assert list(tmp_path.glob("iql-*.duckdb")), "the learner's store was opened"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "step 500/" not in stderr  # no update was logged: the store was empty
    assert sorted(p.name for p in tmp_path.glob("*.duckdb*")) == before


def test_a_signal_after_the_command_has_ended_is_ignored(monkeypatch):
    """A Ctrl-C as the interpreter exits broke torch's exit hooks: a traceback after `esper: interrupted`."""
    import esper.cli as cli

    monkeypatch.setattr(cli, "_run", lambda: 130)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as ended:
            cli.main()
        assert ended.value.code == 130
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_ctrl_c_while_the_command_loads_is_one_line_and_exit_130(monkeypatch, capsys):
    """Loading `esper` imports torch, seconds in which Ctrl-C must not print a traceback."""
    import types

    import esper.__main__ as entry

    class Loading(types.ModuleType):
        def __getattr__(self, name):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "esper.cli", Loading("esper.cli"))
    with pytest.raises(SystemExit) as stopped:
        entry.main()
    assert stopped.value.code == 130 and capsys.readouterr().err == "esper: interrupted\n"
