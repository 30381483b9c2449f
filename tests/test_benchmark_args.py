"""The benchmark scripts refuse bad input in one line (exit code 2) before any long work starts, and end on Ctrl-C
in one line (exit code 130). Each script runs in this process, as `python benchmarks/X.py` runs it (`script.run` of
its `main`), with the functions that would start its long work replaced by ones that fail the test."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import script  # noqa: E402  (a script's module, beside its helpers)

from esper.store import Workspace  # noqa: E402


def started(*args, **kwargs):
    raise AssertionError("the long work started before the bad input was refused")


def ended(monkeypatch, capsys, name: str, args: list[str], work: list[str]) -> tuple[int, str, str]:
    """Run benchmarks/`name`.py with `args`, its `work` functions failing the test: (exit code, stdout, stderr)."""
    module = importlib.import_module(name)
    for function in work:
        monkeypatch.setattr(module, function, started)
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{name}.py", *args])
    with pytest.raises(SystemExit) as exit:
        script.run(module.main)
    out, err = capsys.readouterr()
    return exit.value.code, out, err


RECORDS = ["record_all"]
TRAINS = ["train"]
LOADS = ["load_task_data"]


@pytest.mark.parametrize("name, args, work, says", [
    ("stack", ["--grow", "2:3@5", "--order", "interleave"], TRAINS, "a depth must be a multiple of the one before"),
    ("stack", ["--grow", "abc"], TRAINS, "--grow abc: give SIZE[:SIZE@EPOCH]"),
    ("stack", ["--grow", "8:16"], TRAINS, "--grow 8:16: give SIZE[:SIZE@EPOCH]"),
    ("stack", ["--grow", "0"], TRAINS, "sizes must be at least 1"),
    ("widen", ["--grow", "8:4@3"], TRAINS, "never shrink"),
    ("widen", ["--grow", "8:24@99"], TRAINS, "epoch 99 is past the runs' last"),
    ("store", ["--run-events", "5"], ["simulate_run"], "give a multiple of 10,000"),
    ("frontier", ["--policy", "no-such.pt"], RECORDS, "argument --policy: no file no-such.pt"),
    ("frontier", ["--tune-seeds", "100", "3"], RECORDS, "3 is one of the evaluation seeds 0-19"),
    ("frontier", ["--workers", "0"], RECORDS, "argument --workers: must be at least 1, got 0"),
    ("tune", ["--seeds", "7"], RECORDS, "7 is one of the evaluation seeds 0-19"),
    ("tune", ["--task", "bogus"], RECORDS, "argument --task: invalid choice: 'bogus'"),
    ("tune", ["--workers", "0"], RECORDS, "argument --workers: must be at least 1"),
    ("results", ["--epochs", "-1"], RECORDS, "argument --epochs: must be at least 0, got -1"),
    ("results", ["--workers", "0"], RECORDS, "argument --workers: must be at least 1"),
    ("results", ["--heuristic", "warmup=1"], RECORDS, "results: --heuristic"),  # the library's BadInput
    ("policy", ["--workers", "1", "--n-envs", "0"], ["train_iql_policy", "ppo_job"], "n_envs and episodes"),
    ("policy", ["--workers", "1", "--lr", "-1"], ["train_iql_policy", "ppo_job"], "learning_rate"),
    ("policy", ["--eval-seeds", "abc"], ["train_iql_policy", "ppo_job"], "'abc' is not a whole number"),
    ("policy", ["--ppo-init", "iql", "--skip-iql"], ["train_iql_policy", "ppo_job"], "--skip-iql goes with"),
    ("workers", ["--n-envs", "0"], ["ray_start_s", "run_scaling"], "argument --n-envs: must be at least 1"),
    ("workers", ["--episodes", "0"], ["ray_start_s", "run_scaling"], "argument --episodes: must be at least 1"),
    ("workers", ["--epochs", "0"], ["ray_start_s", "run_scaling"], "argument --epochs: must be at least 1"),
    ("workers", ["--seed-epochs", "-1"], ["ray_start_s", "run_scaling"], "argument --seed-epochs: must be at least 0"),
    ("overhead", ["--case", "resnet18", "--batch", "0"], ["resnet18_case", *LOADS], "argument --batch: must be at least 2"),
    ("overhead", ["--epochs", "1"], ["resnet18_case", *LOADS], "argument --epochs: must be at least 2"),
    ("overhead", ["--case", "resnet18", "--steps", "0"], ["resnet18_case", *LOADS], "argument --steps"),
    ("overhead", ["--threads", "-1"], ["resnet18_case", *LOADS], "argument --threads: must be at least 0"),
    ("checkpoint", ["--epochs", "1"], LOADS, "argument --epochs: must be at least 2, got 1"),
    ("telemetry", ["--epochs", "0"], LOADS, "argument --epochs: must be at least 2, got 0"),
    ("iql", ["--repeats", "0"], ["dataset"], "argument --repeats: must be at least 1"),
    ("iql", ["--steps", "0"], ["dataset"], "argument --steps: must be at least 1"),
    ("iql", ["--runs", "0"], ["dataset"], "argument --runs: must be at least 1"),
    ("kernels", ["--pairs", "0"], ["measure"], "argument --pairs: must be at least 1"),
    ("vectorized", ["--repeats", "0"], LOADS, "argument --repeats: must be at least 1"),
    ("vectorized", ["--ns", "0"], LOADS, "argument --ns: must be at least 1, got 0"),
    ("vectorized", ["--ns", "abc"], LOADS, "argument --ns: 'abc' is not a whole number"),
    ("vectorized", ["--device", "foo"], LOADS, "vectorized: unknown device 'foo'"),
])
def test_bad_input_is_one_line_and_exit_code_2_before_the_long_work(monkeypatch, capsys, tmp_path, name, args, work,
                                                                     says):
    code, out, err = ended(monkeypatch, capsys, name, [*args, *(
        ["--workspace", str(tmp_path / "ws")] if name in ("frontier", "tune", "results") else [])], work)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and says in err, err
    assert err.startswith(f"{name}: "), err  # argparse's refusals and the scripts' own begin alike


def test_iql_settings_are_not_checked_where_iql_does_not_run(monkeypatch, capsys):
    with pytest.raises(AssertionError, match="the long work started"):  # reached PPO: nothing refused
        ended(monkeypatch, capsys, "policy", ["--skip-iql", "--iql-steps", "0", "--workers", "1"],
              ["train_iql_policy", "ppo_job"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_a_device_this_machine_lacks_is_one_line(monkeypatch, capsys):
    code, _, err = ended(monkeypatch, capsys, "vectorized", ["--device", "cuda"], LOADS)
    assert code == 2 and err == "vectorized: device cuda asked for, but CUDA is not available here (use cpu)\n"


def test_an_output_folder_that_cannot_be_made_is_refused_before_the_runs(monkeypatch, capsys, tmp_path):
    (tmp_path / "a-file").write_text("")
    code, _, err = ended(monkeypatch, capsys, "frontier", ["--workspace", str(tmp_path / "ws"), "--svg",
                                                          str(tmp_path / "a-file" / "frontier.svg")], RECORDS)
    assert code == 2 and len(err.splitlines()) == 1 and "is a file, not a folder" in err


def test_an_output_is_written_into_a_folder_made_for_it(tmp_path, capsys):
    script.write(script.output_file(str(tmp_path / "new" / "deeper" / "frontier.svg")), "<svg/>")
    assert (tmp_path / "new" / "deeper" / "frontier.svg").read_text() == "<svg/>"


def test_ctrl_c_is_one_line_and_exit_code_130(monkeypatch, capsys, tmp_path):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("tune"), "record_all", interrupted)
    code, out, err = ended(monkeypatch, capsys, "tune", ["--seeds", "100", "--lr", "0.01", "--seed-lr", "0.01",
                                                         "--batch-size", "100", "--workspace", str(tmp_path)], [])
    assert code == 130 and out == "" and err.splitlines()[-1] == "tune: interrupted" and "Traceback" not in err


def test_store_help_describes_it_and_runs_nothing(monkeypatch, capsys):
    code, out, _ = ended(monkeypatch, capsys, "store", ["--help"], ["simulate_run"])
    assert code == 0 and "--run-events" in out


@pytest.mark.parametrize("name, ends", [("overhead", "on a model that is not a chain."),
                                        ("stack", "against the deep one from the start.")])
def test_help_opens_with_the_docstrings_whole_first_paragraph(monkeypatch, capsys, name, ends):
    code, out, _ = ended(monkeypatch, capsys, name, ["--help"], [])
    assert code == 0 and ends in " ".join(out.split())


def test_a_page_records_its_command_as_a_shell_would_run_it(monkeypatch, tmp_path):
    recording = importlib.import_module("recording")
    monkeypatch.setattr(sys, "argv", ["benchmarks/frontier.py", "--out", "my docs/frontier.md"])
    made = recording.stamp("frontier.py", Workspace(tmp_path), 0.0, "abc", 0, 0)
    assert made["command"] == "python benchmarks/frontier.py --out 'my docs/frontier.md'"
