"""`esper run`'s settings: one `RunRequest` with the defaults, filled by a TOML file and the command line."""

import inspect
import json
import tomllib

import pytest
from cli_runner import invoke, one_line_error
from tensorboard.backend.event_processing import event_accumulator

from esper.app import runs
from esper.cli.run import run as run_command
from esper.leyline import EpochEnded, RunStarted
from esper.store import Workspace

OPTION_OF = {"host_options": "host_option", "blueprints": "blueprint"}


def test_every_setting_is_an_option_whose_default_lives_in_the_request_only():
    params = inspect.signature(run_command).parameters
    for field in runs.FIELDS:
        option = params[OPTION_OF.get(field, field)]
        assert option.default.default is None, f"--{field} repeats a default that RunRequest holds"


def test_a_printed_config_starts_the_same_run(tmp_path):
    first = invoke("run", "--print-config", "--seed", "3", "--lr", "0.01", "--heuristic", "min_gain=1.0",
                   "--host-option", "channels=6", "--lifecycle", "blend_epochs=1", "--blend-schedule", "sigmoid",
                   workspace=tmp_path)
    assert first.exit_code == 0, first.stderr
    assert 'lr = 0.01' in first.stdout and "[host_options]\nchannels = 6" in first.stdout
    assert "[lifecycle]\nmin_training_epochs = 1" in first.stdout and "blend_epochs = 1\n" in first.stdout
    assert 'blend_schedule = "sigmoid"' in first.stdout and "max_params = 0\n" in first.stdout  # the cap: top level
    config = tmp_path / "run.toml"
    config.write_text(first.stdout)
    again = invoke("run", "--config", config, "--print-config", workspace=tmp_path)
    assert again.stdout == first.stdout
    assert not list(tmp_path.glob("*.duckdb")), "printing the config trains nothing"


def test_a_printed_config_as_json_holds_what_the_toml_holds(tmp_path):
    args = ("run", "--print-config", "--seed", "3", "--host-option", "channels=6", "--lifecycle", "blend_epochs=1")
    toml = tomllib.loads(invoke(*args, workspace=tmp_path).stdout)
    printed = invoke(*args, "--json", workspace=tmp_path)
    assert printed.exit_code == 0, printed.stderr
    settings = json.loads(printed.stdout)
    assert {k: v for k, v in settings.items() if v is not None} == toml
    assert settings["seed"] == 3 and settings["host_options"] == {"channels": 6}


def test_the_command_line_overrides_the_file(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("seed = 3\nepochs = 4\n[heuristic]\nmin_gain = 1.0\n")
    printed = invoke("run", "--config", config, "--seed", "4", "--print-config", workspace=tmp_path).stdout
    assert "seed = 4" in printed and "epochs = 4" in printed and "min_gain = 1.0" in printed


def test_a_table_on_the_command_line_adds_to_the_files_key_by_key(tmp_path):
    """`--heuristic K=V` (and `--lifecycle`, `--host-option`) over a file's table sets K: the file's other keys stay.
    It used to replace the whole table, silently dropping what the file set."""
    config = tmp_path / "run.toml"
    config.write_text("[heuristic]\nmin_gain = 1.0\nwarmup_epochs = 4\n[host_options]\nchannels = 24\n"
                      "[lifecycle]\nblend_epochs = 1\nembargo_epochs = 5\n")
    printed = tomllib.loads(invoke("run", "--config", config, "--heuristic", "warmup_epochs=1", "--host-option",
                                   "batchnorm=false", "--lifecycle", "embargo_epochs=3", "--print-config",
                                   workspace=tmp_path).stdout)
    assert (printed["heuristic"]["min_gain"], printed["heuristic"]["warmup_epochs"]) == (1.0, 1)
    assert printed["host_options"] == {"channels": 24, "batchnorm": False}
    assert (printed["lifecycle"]["blend_epochs"], printed["lifecycle"]["embargo_epochs"]) == (1, 3)


def test_a_config_files_paths_are_relative_to_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "run.toml").write_text('tensorboard = "board"\n')
    monkeypatch.chdir(tmp_path)  # the file is run from its parent folder
    printed = tomllib.loads(invoke("run", "--config", "configs/run.toml", "--print-config", workspace=tmp_path).stdout)
    assert printed["tensorboard"] == str(tmp_path / "configs" / "board")
    (folder / "run.toml").write_text(f'tensorboard = "{tmp_path / "elsewhere"}"\n')
    printed = tomllib.loads(invoke("run", "--config", "configs/run.toml", "--print-config", workspace=tmp_path).stdout)
    assert printed["tensorboard"] == str(tmp_path / "elsewhere")  # an absolute path stays
    given = tomllib.loads(invoke("run", "--config", "configs/run.toml", "--tensorboard", "here", "--print-config",
                                 workspace=tmp_path).stdout)
    assert given["tensorboard"] == str(tmp_path / "here")  # the command line's: relative to where it runs


@pytest.mark.parametrize("text, message", [
    ("sede = 3\n", "unknown key 'sede'"),
    ("seed = 'three'\n", "Expected `int | null`, got `str` - at `$.seed`"),
    ("seed = \n", "is not TOML"),
    ("[heuristic]\nspeed = 3\n", "heuristic knobs: Object contains unknown field `speed` (knobs: warmup_epochs, "),
    ("[lifecycle]\nspeed = 3\n", "(knobs: min_training_epochs, "),
    ("[heuristic]\nwarmup_epochs = 3\nmin_gain = 'x'\n", "got `str` - at `$.heuristic.min_gain`"),  # the key named
    ("[host_options]\nchannels = [8]\n", "at `$.host_options.channels`"),
    ("[lifecycle]\nblend_epochs = -1\n", "lifecycle knobs: blend_epochs cannot be negative"),
    ("[lifecycle]\nregression_tolerance = nan\n", "regression_tolerance must be a finite number"),
    ("[lifecycle]\nmax_params = 9000\n", "the size cap is a setting of its own: --max-params N (in a config, "
                                         "max_params = N at the top level)"),
    ("blend_schedule = 'cosine'\n", "unknown blend schedule 'cosine'"),
    ("epochs = -3\n", "epochs must be positive, got -3"),
    ("controller = 'scratch'\n", "controller scratch needs --like RUN"),
    ("blueprints = []\n", "no blueprint given: give at least one"),
    ("blueprints = ['repeat']\n", "blueprint 'repeat' does not grow in slot early of host cnn1d: a copy grows only "
                                  "after a submodule with parameters that maps its one input to an output of the same "
                                  "shape and dtype"),
    ("task = 'text'\nblueprints = ['repeat', 'mlp', 'repeat']\n", "blueprint 'repeat' is given twice"),
    ("blueprints = ['']\n", "blueprint '' does not grow in slot early of host cnn1d"),  # an empty name grew nothing
    ("blueprints = ['', '']\n", "blueprint '' is given twice"),
])
def test_a_bad_config_is_one_line_naming_the_file(tmp_path, text, message):
    config = tmp_path / "run.toml"
    config.write_text(text)
    said = one_line_error(invoke("run", "--config", config, workspace=tmp_path))
    assert message in said and str(config) in said, said
    assert not list(tmp_path.glob("*.duckdb"))


def test_the_blueprints_a_run_may_grow_are_set_in_the_heuristics_order(tmp_path):
    args = ("run", "--task", "text", "--blueprint", "repeat", "--blueprint", "mlp", "--print-config")
    printed = invoke(*args, workspace=tmp_path)
    assert printed.exit_code == 0, printed.stderr
    assert 'blueprints = ["repeat", "mlp"]' in printed.stdout.splitlines()
    config = tmp_path / "run.toml"
    config.write_text(printed.stdout)
    assert invoke("run", "--config", config, "--print-config", workspace=tmp_path).stdout == printed.stdout
    default = invoke("run", "--task", "text", "--print-config", workspace=tmp_path).stdout
    assert 'blueprints = ["mlp", "attention", "lowrank", "norm"]' in default.splitlines()


@pytest.mark.slow  # trains a short run
def test_overrides_are_recorded_and_tensorboard_files_follow_the_run(tmp_path):
    result = invoke("run", "--epochs", "2", "--lr", "0.0137", "--seed-lr", "0.002", "--weight-decay", "0.0005",
                    "--batch-size", "96",
                    "--host-option", "channels=6", "--tensorboard", tmp_path / "tb", "--json", workspace=tmp_path / "ws")
    assert result.exit_code == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    with Workspace(tmp_path / "ws").reader() as reader:
        events = [r.event for r in reader.read_run(run_id)]
    started = events[0]
    assert isinstance(started, RunStarted)
    preset = started.preset
    assert (preset.lr, preset.seed_lr, preset.weight_decay, preset.batch_size, preset.host_options) == (
        0.0137, 0.002, 0.0005, 96, {"channels": 6})
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb" / run_id))
    acc.Reload()
    logged = {e.epoch: e.val_accuracy for e in events if isinstance(e, EpochEnded)}
    assert {s.step: s.value for s in acc.Scalars("accuracy/val")} == pytest.approx(logged)


@pytest.mark.parametrize("controller, noted", [("static", True), ("heuristic", False), ("random", False)])
def test_how_seeds_train_set_for_a_controller_that_grows_none_is_noted(tmp_path, controller, noted):
    printed = invoke("run", "--controller", controller, "--seed-lr", "0.01", "--blend-schedule", "sigmoid",
                     "--print-config", workspace=tmp_path)
    assert printed.exit_code == 0, printed.stderr
    note = f"note: seed_lr and blend_schedule change nothing here: controller {controller} germinates no seed"
    assert (note in printed.stderr.splitlines()) is noted
    printed = invoke("run", "--controller", controller, "--seed-lr", "0.01", "--print-config", workspace=tmp_path)
    note = f"note: seed_lr changes nothing here: controller {controller} germinates no seed"
    assert (note in printed.stderr.splitlines()) is noted


@pytest.mark.slow  # a real run, re-executed
def test_a_run_whose_seeds_train_on_part_of_each_batch_records_it_and_re_executes(tmp_path):
    result = invoke("run", "--epochs", "4", "--heuristic", "warmup_epochs=1", "--heuristic", "min_gain=1.0",
                    "--heuristic", "finish_epochs=0", "--lifecycle", "isolated_fraction=0.3", "--json",
                    workspace=tmp_path)
    assert result.exit_code == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    with Workspace(tmp_path).reader() as reader:
        events = [r.event for r in reader.read_run(run_id)]
    assert events[0].config.lifecycle.isolated_fraction == 0.3
    assert any(t.seed_loss is not None for e in events if isinstance(e, EpochEnded) for t in e.seeds)  # one trained
    verified = invoke("replay", run_id, "--verify", workspace=tmp_path)
    assert verified.exit_code == 0, verified.stderr
