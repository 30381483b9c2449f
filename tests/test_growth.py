"""Real runs of the default task: seeds grow through every stage, logs replay and re-execute exactly."""

import json
import re
import signal

import msgspec
import pytest
from cli_runner import esper, invoke, one_line_error, start

from esper.app import runs
from esper.app.runs import FinalArchitecture, RunRequest, _as_grown, final_architecture
from esper.errors import BadInput
from esper.leyline import (CheckpointSaved, CommandRejected, HeuristicConfig, LifecycleConfig, RunConfig, RunFailed, RunFinished, SeedStage,
                           SeedTransitioned, encode)
from esper.nissa.runstate import RunState
from esper.store import Recorder, Workspace
from esper.tamiyo.controllers import make_controller
from esper.tolaria.loop import ListSink, StoreSink, execute, resolve_config
from esper.tolaria.tasks import TASKS
from esper.tolaria.verify import VerificationFailed, verify_run

pytestmark = pytest.mark.slow  # real training runs or subprocesses of the CLI


def run_into(ws: Workspace, run_id: str, **config) -> RunState:
    cfg = resolve_config(RunConfig(**config))
    with Recorder(ws.store_path(run_id)) as rec:
        execute(cfg, make_controller(cfg.controller, cfg.seed), StoreSink(rec, run_id))
        return RunState.fold(rec.read(run_id))


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """One heuristic run that grows, and one whose gates never open so its seeds are culled."""
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    grows = run_into(ws, "grows", epochs=12, seed=1)
    culls = run_into(ws, "culls", epochs=14, seed=1, lifecycle=LifecycleConfig(gradient_health_threshold=2.0))
    return ws, grows, culls


def test_every_stage_is_reached_in_real_runs(grown):
    _, grows, culls = grown
    reached = {stage for state in (grows, culls) for seed in state.garden.seeds.values() for _, stage in seed.history}
    assert reached == set(SeedStage)
    assert grows.stage_counts().get("FOSSILIZED", 0) >= 1
    assert culls.stage_counts().get("FOSSILIZED", 0) == 0


def test_growth_adds_parameters_and_accuracy_is_a_fraction(grown):
    _, grows, _ = grown
    first, last = grows.epochs[0], grows.epochs[-1]
    assert last.params > first.params
    assert 0.0 <= grows.finished.val_accuracy <= 1.0 and 0.0 <= grows.finished.test_accuracy <= 1.0
    assert grows.finished.params == last.params


def test_gate_evidence_is_in_the_log(grown):
    ws, _, _ = grown
    with ws.reader() as reader:
        events = [r.event for r in reader.read_run("grows")]
    blends = [e for e in events if isinstance(e, SeedTransitioned) and e.to_stage == "BLENDING"]
    assert blends and all(e.evidence["gradient_health"] >= e.evidence["gradient_health_threshold"] for e in blends)
    fossils = [e for e in events if isinstance(e, SeedTransitioned) and e.to_stage == "FOSSILIZED"]
    assert fossils and all(e.evidence["alpha"] >= 1.0 for e in fossils)


def test_verify_reexecutes_exactly_and_catches_a_changed_log(grown):
    ws, _, _ = grown
    with ws.reader() as reader:
        recorded = reader.read_run("grows")
    assert verify_run(recorded).events == len(recorded)
    i = next(i for i, r in enumerate(recorded) if type(r.event).__name__ == "EpochEnded")
    forged = msgspec.structs.replace(recorded[i].event, val_accuracy=0.123)
    tampered = list(recorded)
    tampered[i] = type(recorded[i])(*(getattr(recorded[i], f) for f in ("position", "run_id", "seq", "event_id", "ts")), forged)
    with pytest.raises(VerificationFailed, match=r"differs at seq \d+ .*EpochEnded.*in val_accuracy: recorded 0.123, now 0\.\d+ \(relative deviation .*, over the tolerance 1e-04\)$"):
        verify_run(tampered)


def test_same_seed_same_events():
    cfg = resolve_config(RunConfig(epochs=4, seed=5))
    a, b = ListSink(), ListSink()
    execute(cfg, make_controller("heuristic", 5), a)
    execute(cfg, make_controller("heuristic", 5), b)
    assert [encode(e) for e in a.events] == [encode(e) for e in b.events]
    assert a.batches == 1 + 4 + 1  # RunStarted, one batch per epoch, RunFinished


def test_scratch_builds_the_final_architecture_up_front(grown):
    ws, grows, _ = grown
    grew = final_architecture(ws, "grows", "mnist1d")
    like, architecture = grew.run_id, grew.architecture
    assert like == "grows" and grew.config.epochs == 12 and grew.unsealed is None
    assert len(architecture) == grows.stage_counts()["FOSSILIZED"]
    sink = ListSink()
    cfg = resolve_config(RunConfig(controller="scratch", like=like, architecture=architecture, epochs=2))
    result = execute(cfg, make_controller("scratch", 0), sink)
    assert result.params == grows.finished.params  # same modules, trained from initialisation
    assert result.seeds == {"FOSSILIZED": len(architecture)}  # built before epoch 1, as events
    built = [e for e in sink.events if getattr(e, "trigger", None) == "build"]
    assert [(e.slot, e.epoch) for e in built] == [(slot, 0) for slot, _ in architecture]


@pytest.mark.parametrize("ending, checkpoints, said", [
    (None, True, "incomplete after epoch 11 of 12; scratch builds the architecture of a finished run: finish it first "
                 "(esper run --resume cut)"),
    (RunFailed(error="interrupted"), True, "failed after epoch 11 of 12; scratch builds the architecture of a finished "
                                           "run: finish it first"),
    (RunFailed(error="training diverged"), True, "failed after epoch 11 of 12; scratch builds the architecture of a "
                                                 "finished run$"),
    (RunFailed(error="interrupted"), False, "failed after epoch 11 of 12; scratch builds the architecture of a finished "
                                            "run$"),  # nothing to resume from: --resume would refuse it
])
def test_scratch_refuses_to_build_like_a_run_that_did_not_finish(grown, tmp_path, ending, checkpoints, said):
    """What had fossilized when a run stopped would pass for the architecture it grew."""
    ws, _, _ = grown
    with ws.reader() as reader:
        events = [r.event for r in reader.read_run("grows")]
    cut = [e for e in events if not isinstance(e, RunFinished) and (e.epoch is None or e.epoch <= 11)]
    saved = [CheckpointSaved(epoch=11, sha256="0" * 64, size=1)] if checkpoints else []
    with Recorder(tmp_path / "cut.duckdb") as recorder:
        recorder.append("cut", cut + saved + ([ending] if ending else []), 0)
    with pytest.raises(BadInput, match=re.escape(f"like cut: the run is {said}").replace(r"\$", "$")):
        final_architecture(Workspace(tmp_path), "cut", "mnist1d")


def test_scratch_sends_no_one_to_resume_a_cut_run_that_cannot_resume(grown, tmp_path):
    """An imported run (in another run's store) cannot resume: the refusal does not say to."""
    ws, _, _ = grown
    with ws.reader() as reader:
        cut = [r.event for r in reader.read_run("grows") if not isinstance(r.event, RunFinished)]
    with Recorder(tmp_path / "imported.duckdb") as recorder:
        recorder.append("cut", cut, 0)
    with pytest.raises(BadInput) as refused:
        final_architecture(Workspace(tmp_path), "cut", "mnist1d")
    assert str(refused.value).endswith("scratch builds the architecture of a finished run")


def test_cli_run_json_then_replay_verify(tmp_path):
    out = esper("run", "--epochs", "3", "--seed", "2", "--json", workspace=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) == {"run_id", "val_accuracy", "test_accuracy", "params", "seeds"}
    assert "[  3/3]" in out.stderr
    assert "note: the heuristic germinates from epoch 2 until 7 epochs before the end, so a run of 3 epochs grows nothing" \
        in out.stderr
    replay = esper("replay", result["run_id"], "--verify", "--json", workspace=tmp_path)
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["status"] == "finished"
    # the re-execution shows its epochs as the run showed them: the same lines, on stderr
    ran_lines = [line for line in out.stderr.splitlines() if line.startswith("[")]
    assert len(ran_lines) == 3 and [line for line in replay.stderr.splitlines() if line.startswith("[")] == ran_lines


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path):
    """`kill` or a scheduler's stop: one line, exit 143, and the log keeps every whole epoch then `RunFailed`."""
    proc = start("run", "--epochs", "60", "--seed", "2", workspace=tmp_path, stdout=None)
    try:
        for line in proc.stderr:
            if line.startswith("[  2/60]"):
                break
        proc.send_signal(signal.SIGTERM)
        rest, code = proc.stderr.read(), proc.wait(timeout=120)
    finally:
        proc.kill()
    assert code == 143, rest
    (store,) = tmp_path.glob("*.duckdb")
    with Recorder(store) as rec:
        (run_id,) = rec.run_ids()
    assert rest.strip().splitlines()[-2:] == [f"note: esper run --resume {run_id} continues the run",
                                              "esper: terminated"] and "Traceback" not in rest, rest
    with Recorder(store) as rec:
        recorded = rec.read(run_id)
    state, events = RunState.fold(recorded), [r.event for r in recorded]  # folds: a whole, legal log
    assert state.status == "failed" and state.failed.error == "terminated" and events[-1] == state.failed
    epochs = [e.epoch for e in events if type(e).__name__ == "EpochEnded"]
    assert epochs == list(range(1, len(epochs) + 1)) and 2 <= len(epochs) < 60


@pytest.mark.parametrize(
    "args, message",
    [
        (("--task", "imagenet"), "unknown task"),
        (("--controller", "oracle"), "unknown controller"),
        (("--controller", "Policy", "--policy", "p.pt"), "unknown controller 'Policy'"),  # not "--policy is for..."
        (("--controller", "scratch"), "needs --like RUN"),
        (("--like", "some-run"), "--like RUN (like = RUN in a --config file) is for --controller scratch"),
        (("--controller", "policy"), "needs a policy file"),
        (("--epochs", "-1"), "must be positive"),
        (("--device", "tpu"), "device"),
        (("--device", "cpu:3"), "device cpu:3: torch has one CPU device, cpu"),
        (("--telemetry", "loud"), "telemetry"),
        (("--task", "cifar10"), "cifar10 needs its data: give --data-dir"),
        (("--max-params", "-5"), "max_params must be 0"),
        (("--max-params", "1000"), "below the mnist1d host's own 1,258"),
        (("--anneal-epochs", "-2"), "anneal_epochs must not be negative"),
        (("--heuristic", "min_gain=fast"), "min_gain takes float values"),
        (("--heuristic", "min_gain=1e400"), "min_gain must be a finite number"),  # a float holds no such number
        (("--heuristic", "speed=3"), "KEY one of warmup_epochs"),
        (("--heuristic", "min_gain"), "expected KEY=VALUE"),
        (("--heuristic", "min_gain=1", "--heuristic", "min-gain=2"), "--heuristic min_gain is given twice"),
        (("--lifecycle", "blend_epochs=1", "--lifecycle", "blend_epochs=1"), "--lifecycle blend_epochs is given twice"),
        (("--host-option", "channels=8", "--host-option", "channels=12"), "--host-option channels is given twice"),
        (("--controller", "static", "--heuristic", "min_gain=1"), "heuristic knobs are for controller heuristic only"),
        (("--heuristic", "min_gain=nan"), "min_gain must be a finite number"),
        (("--heuristic", "warmup_epochs=-2"), "warmup_epochs cannot be negative"),
        (("--lifecycle", "blend_epochs=-1"), "blend_epochs cannot be negative"),
        (("--lifecycle", "blend_epochs=two"), "blend_epochs takes int values"),
        (("--lifecycle", "speed=3"), "KEY one of min_training_epochs"),
        (("--commands-per-epoch", "-1"), "commands_per_epoch must be at least 1, got -1"),
        (("--lifecycle", "isolated_fraction=0"), "Expected `float` > 0.0 - at `$.isolated_fraction`"),
        (("--lifecycle", "isolated_fraction=1.5"), "Expected `float` <= 1.0 - at `$.isolated_fraction`"),
        (("--lifecycle", "isolated_fraction=half"), "isolated_fraction takes float values"),
        (("--data-dir", "signals"), "mnist1d is generated from the run's seed and reads no files"),
        (("--download",), "--data-dir and --download are for cifar10 and text"),
        (("--task", "text", "--download"), "download is for cifar10"),
        (("--lifecycle", "max_params=9000"), "the size cap is a setting of its own: --max-params N"),
        (("--blend-schedule", "cosine"), "unknown blend schedule 'cosine': use linear, sigmoid"),
        (("--policy", "policy.pt"), "--policy is for --controller policy or sampled"),
        (("--seed", "-1"), "seed must be between 0 and 999,999,999,999, got -1"),
        (("--lr", "-0.1"), "lr must be a positive number"),
        (("--lr", "1e38"), "lr must be a positive number up to 1000, got 1e+38"),  # Adam's step would overflow
        (("--seed-lr", "2000"), "seed_lr must be a positive number up to 1000, got 2000"),
        (("--weight-decay", "-0.1"), "weight_decay must be 0 or a positive number up to 1000, got -0.1"),
        (("--weight-decay", "nan"), "--weight-decay must be a finite number, got nan"),
        (("--weight-decay", "2000"), "weight_decay must be 0 or a positive number up to 1000, got 2000"),
        (("--batch-size", "0"), "batch_size must be at least 1"),
        (("--host", "mlp"), "unknown host 'mlp' (hosts: cnn1d, resnet, paper_cnn, transformer)"),
        (("--host-option", "width=3"), "host cnn1d has no option 'width'"),
        (("--host-option", "channels=wide"), "the value must be a number or true/false"),
        (("--host-option", "batchnorm=5"), "host cnn1d option batchnorm takes true or false, got 5"),
        (("--host-option", "global_pool=1.5"), "host cnn1d option global_pool takes true or false, got 1.5"),
        (("--host-option", "channels=true"), "host cnn1d option channels takes a whole number, at least 1, got true"),
        (("--host-option", "channels=1.5"), "host cnn1d option channels takes a whole number, at least 1, got 1.5"),
        (("--host-option", "channels=0"), "host cnn1d option channels takes a whole number, at least 1, got 0"),
        (("--task", "text", "--host-option", "context=0"), "host transformer option context takes a whole number, at "
                                                           "least 1, got 0"),
        (("--task", "text", "--host-option", "width=-2"), "host transformer option width takes a whole number, at "
                                                          "least 1, got -2"),
        (("--host-option", "length=7"), "host cnn1d length=7 cannot train on task mnist1d: "),
        # past any machine's address space (no overcommit lets it through): refused, not an internal error
        (("--host-option", "channels=10000000"), "host cnn1d channels=10000000 is too big for this machine: out of "
                                                 "memory: 1.1 PiB could not be allocated"),
        (("--host-option", "length=7"), "(hosts that do, with their default options: cnn1d, paper_cnn)"),
        (("--host", "transformer"), "(hosts that do, with their default options: cnn1d, paper_cnn)"),
        (("--host-option", "num_classes=3"), "host cnn1d num_classes=3 gives 3 outputs, task mnist1d has 10 classes"),
        (("--host", "transformer"), "host transformer cannot train on task mnist1d: "),
        (("--config", "absent.toml"), "cannot read config absent.toml"),
        (("--checkpoint-every", "-1"), "checkpoint_every must be 0"),
        (("--seed", "99999999999999999999"), "--seed 99999999999999999999 does not fit in 64 bits"),
        (("--seed", "100000000000000"), "seed must be between 0 and 999,999,999,999, got 100000000000000"),
    ],
)
def test_cli_run_bad_input(tmp_path, args, message):
    assert message in one_line_error(invoke("run", *args, workspace=tmp_path))
    assert not list(tmp_path.glob("*.duckdb")), "bad input must not leave a log behind"


def test_the_knobs_listed_for_a_bad_lifecycle_key_leave_out_the_cap_which_has_an_option_of_its_own(tmp_path):
    line = one_line_error(invoke("run", "--lifecycle", "speed=3", workspace=tmp_path))
    assert line.endswith("auto_cull_patience, embargo_epochs, isolated_fraction") and "max_params" not in line


@pytest.mark.parametrize(("toml", "message"), [
    ("epochs = 99999999999999999999", "epochs 99999999999999999999 does not fit in 64 bits"),
    ("lr = nan", "lr must be a finite number, got nan"),
    ("[heuristic]\nmin_gain = inf", "heuristic.min_gain must be a finite number, got inf"),
    ("[host_options]\nchannels = -99999999999999999999", "host_options.channels -99999999999999999999 does not fit"),
])
def test_a_config_file_number_the_log_cannot_hold_is_bad_input(tmp_path, toml, message):
    (tmp_path / "run.toml").write_text(toml + "\n")
    line = one_line_error(invoke("run", "--config", tmp_path / "run.toml", workspace=tmp_path / "ws"))
    assert f"config {tmp_path / 'run.toml'}: {message}" in line
    assert not list(tmp_path.glob("ws/*.duckdb"))


def test_a_tensorboard_folder_that_cannot_be_made_is_bad_input_before_anything_is_written(tmp_path):
    (tmp_path / "afile").write_text("")
    for folder in (tmp_path / "afile", tmp_path / "afile" / "tb"):
        line = one_line_error(invoke("run", "--tensorboard", folder, workspace=tmp_path / "ws"))
        assert f"cannot create the TensorBoard folder {folder}: {tmp_path / 'afile'} is a file" in line
    assert not (tmp_path / "ws").exists() or not list((tmp_path / "ws").glob("*.duckdb"))


def test_scratch_is_refused_the_architecture_of_another_tasks_run(grown, tmp_path):
    ws, _, _ = grown
    line = one_line_error(invoke("run", "--task", "text", "--controller", "scratch", "--like", "grows",
                                 workspace=ws.root))
    assert "like grows: a run of task mnist1d, not text" in line and line.endswith("grew on): drop --task (task in a --config file)")
    assert not list(ws.root.glob("text-*.duckdb"))


def test_a_run_stopped_before_its_first_event_leaves_no_store(tmp_path, monkeypatch):
    """Ctrl-C while a run starts (its store made, nothing appended yet): no empty store is left in the workspace."""
    ws = Workspace(tmp_path)
    planned = runs.plan_run(runs.RunRequest(epochs=1), ws)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runs.start(planned, ws)
    assert not list(tmp_path.glob("*.duckdb*"))
    stopped = invoke("run", "--epochs", "1", workspace=tmp_path)
    assert stopped.exit_code == 130 and stopped.stderr.strip().splitlines()[-1] == "esper: interrupted"
    assert "--resume" not in stopped.stderr  # nothing was logged: nothing to continue


def test_a_capped_heuristic_run_stays_within_max_params_and_replays(tmp_path):
    """The heuristic skips blueprints over the cap and grows what still fits; the log re-executes exactly."""
    ws = Workspace(tmp_path)
    cap = 1258 + 4296 + 408  # the host, conv_heavy and depthwise: the uncapped run grows 6,342
    state = run_into(ws, "capped", seed=0, lifecycle=LifecycleConfig(max_params=cap))
    assert state.finished.params <= cap
    grown = [s.blueprint for s in state.garden.seeds.values() if s.stage is SeedStage.FOSSILIZED]
    assert "conv_heavy" in grown and len(grown) >= 2, grown
    with Recorder(ws.store_path("capped")) as rec:
        recorded = rec.read("capped")
        assert not [r for r in recorded if isinstance(r.event, CommandRejected)], "the heuristic asks only for what fits"
        verify_run(recorded)


def test_heuristic_knobs_are_recorded_and_change_what_it_grows(tmp_path):
    """`--heuristic min_gain=1.0` germinates as soon as the host has warmed up (no plateau needed), one seed per
    epoch up to `max_live_seeds`; the knobs are in `RunStarted`, and the log re-executes exactly."""
    result = invoke("run", "--epochs", "12", "--seed", "1", "--json", "--heuristic", "min_gain=1.0",
                    "--heuristic", "warmup-epochs=3", workspace=tmp_path)
    assert result.exit_code == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    with Recorder(Workspace(tmp_path).store_path(run_id)) as rec:
        recorded = rec.read(run_id)
    state = RunState.fold(recorded)
    assert (state.config.heuristic.min_gain, state.config.heuristic.warmup_epochs) == (1.0, 3)
    germinated = [r.event.epoch for r in recorded if type(r.event).__name__ == "SeedGerminated"]
    assert germinated[:2] == [3, 4], germinated
    verify_run(recorded)
    default = run_into(Workspace(tmp_path), "default", epochs=3, seed=1)
    assert default.config.heuristic == HeuristicConfig()


def blends(recorded) -> list[tuple[int, int]]:
    """(epoch a seed began BLENDING, epoch it fossilized) of each fossilized seed of a run."""
    began = {}
    spans = []
    for r in recorded:
        event = r.event
        if isinstance(event, SeedTransitioned) and event.to_stage == "BLENDING":
            began[event.seed_id] = event.epoch
        elif isinstance(event, SeedTransitioned) and event.to_stage == "FOSSILIZED":
            spans.append((began[event.seed_id], event.epoch))
    return spans


def test_lifecycle_knobs_are_recorded_judge_the_run_and_change_its_timings(tmp_path, grown):
    """`--lifecycle blend_epochs=1` fossilizes a seed one epoch after its blend began (two by default) and
    `--blend-schedule` picks α's curve; both are in `RunStarted`, and replay re-judges and re-executes the run
    by them."""
    ws = Workspace(tmp_path)
    result = invoke("run", "--epochs", "9", "--json", "--lifecycle", "blend_epochs=1", "--lifecycle",
                    "embargo_epochs=3", "--blend-schedule", "sigmoid", workspace=tmp_path)
    assert result.exit_code == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    with Recorder(ws.store_path(run_id)) as rec:
        recorded = rec.read(run_id)
    config = RunState.fold(recorded).config
    assert config.lifecycle == LifecycleConfig(blend_epochs=1, embargo_epochs=3) and config.blend_schedule == "sigmoid"
    assert blends(recorded) and all(end - start == 1 for start, end in blends(recorded)), blends(recorded)
    verify_run(recorded)
    with grown[0].reader() as reader:
        default = list(reader.read_run("grows"))
    assert blends(default) and all(end - start == 2 for start, end in blends(default)), blends(default)


def test_scratch_reads_the_like_runs_data_as_it_did():
    """A text run trained on a corpus of the user's: its scratch baseline trains on that corpus, not the default."""
    grew = FinalArchitecture("text-heuristic-3-abc", [], RunConfig(task="text", seed=3, epochs=10, anneal_epochs=5,
                                                                   data_dir="/data/corpus.txt"), 0, TASKS["text"], None)
    request = RunRequest(task="text", controller="scratch", like=grew.run_id)
    assert _as_grown(request, grew, 10).data_dir == "/data/corpus.txt"
    assert _as_grown(msgspec.structs.replace(request, data_dir="other.txt"), grew, 10).data_dir == "other.txt"


def test_scratch_builds_the_like_runs_architecture_on_its_host_and_trains_it_with_its_recipe(tmp_path):
    """A run grown on another host (its options) with another recipe and seed: scratch --like takes them from its
    log, as the architecture that grew is the host's too, and the baseline is paired with the run. It used to build
    the preset's host with the fossils on it, and train seed 0 whatever the run's."""
    ws = tmp_path / "ws"
    grew = json.loads(invoke("run", "--epochs", "7", "--heuristic", "warmup_epochs=1", "--heuristic", "min_gain=1.0",
                             "--heuristic", "finish_epochs=0", "--host-option", "channels=4", "--lr", "0.003",
                             "--weight-decay", "0.0001", "--batch-size", "64", "--seed", "3", "--anneal-epochs", "2", "--json", workspace=ws).stdout)
    assert grew["seeds"].get("FOSSILIZED", 0) >= 1
    line = one_line_error(invoke("run", "--controller", "scratch", "--like", grew["run_id"], "--host-option",
                                 "channels=8", workspace=ws))
    assert line == (f"esper: like {grew['run_id']}: it grew on host cnn1d (channels=4); scratch builds its architecture "
                    "on that host: drop --host and --host-option (host, host_options)")
    capped = one_line_error(invoke("run", "--controller", "scratch", "--like", grew["run_id"], "--max-params",
                                   str(grew["params"] - 1), workspace=ws))  # one line: no run header before it
    assert capped.endswith(f"has {grew['params']:,} parameters, over max_params {grew['params'] - 1:,}: drop "
                           "--max-params or raise it")
    assert len(list(ws.glob("*.duckdb"))) == 1
    built = json.loads(invoke("run", "--controller", "scratch", "--like", grew["run_id"], "--epochs", "3",
                              "--batch-size", "100", "--json", workspace=ws).stdout)
    assert built["params"] == grew["params"]
    seeded = json.loads(invoke("run", "--controller", "scratch", "--like", grew["run_id"], "--epochs", "1",
                               "--seed", "5", "--json", workspace=ws).stdout)
    with Workspace(ws).reader() as reader:
        started = reader.read_run(built["run_id"])[0].event
        seed_given = reader.read_run(seeded["run_id"])[0].event.config
    preset = started.preset
    assert (preset.host, preset.host_options, preset.lr, preset.weight_decay, preset.batch_size) == (
        "cnn1d", {"channels": 4}, 0.003, 1e-4, 100)
    assert (started.config.seed, seed_given.seed) == (3, 5)
    assert (started.config.anneal_epochs, seed_given.anneal_epochs) == (2, 1)  # the run's, at most the epochs
