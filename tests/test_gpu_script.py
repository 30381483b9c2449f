"""`benchmarks/gpu.py`, the prepared GPU check: its every part runs on CPU (`--cpu --quick`) and it prints one
JSON summary. On a GPU machine the same script measures; here it proves the script itself works."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_script_runs_every_part_on_cpu(tmp_path):
    # TMPDIR: what the script and its torchrun put in a temporary folder stays with the test
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ESPER_RANKS_TIMEOUT": "120", "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "benchmarks/gpu.py", "--cpu", "--quick", "--budget", "1200"], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=1500)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, "one JSON summary, nothing else on stdout"
    summary = json.loads(lines[0])
    tests = summary["cuda_tests"]
    # no CUDA here: the CUDA tests skip, their CPU twins pass
    assert tests["exit_code"] == 0 and tests["failures"] == tests["errors"] == 0 and 0 < tests["passed"] < tests["tests"]
    lockstep = summary["lockstep"]
    assert lockstep["events_identical"] and [r["n"] for r in lockstep["results"]] == [1, 2]
    assert all(r["lockstep_env_epochs_per_s"] > 0 and r["speedup"] > 0 for r in lockstep["results"])
    precision = summary["precision"]
    for name in ("bf16", "fp32"):
        assert precision[name]["epoch_s"] > 0 and precision[name]["training_seeds"] == ["s1-mid"]
        assert precision[name]["steps"]["profiled"] == 2 and precision[name]["steps"]["wall_ms_per_step"] > 0
    assert precision["bf16_speedup"] > 0
    cli = summary["command_line"]
    assert cli["run"]["exit_code"] == 0 and cli["run"]["result"]["params"] > 1258, cli  # it grew
    assert cli["verify"]["exit_code"] == 0 and "bit for bit" in cli["verify"]["said"][-1], cli
    assert cli["resume"]["killed_exit_code"] == -9 and cli["resume"]["exit_code"] == 0, cli
    assert cli["resume"]["same_result"], cli
    ranks = summary["two_ranks"]
    # what torchrun and the ranks said comes first: pytest cuts a long dict short
    assert ranks["exit_code"] == 0 and ranks["stores"] == 1 and 0.0 <= ranks["result"]["val_accuracy"] <= 1.0, \
        (ranks.get("tail"), ranks.get("said"), ranks)
