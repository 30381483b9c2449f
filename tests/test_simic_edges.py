"""Simic's settings at their edges: an interval of 0, a benchmark asked to compare one worker with itself."""

import subprocess
import sys
from pathlib import Path

import pytest

from esper.app.learners import iql_job
from esper.errors import BadInput
from esper.leyline.events import PolicyUpdated
from esper.simic import iql
from esper.simic.config import IQLConfig
from esper.simic.features import spec_for_task
from esper.store import Workspace
from esper.tolaria.loop import ListSink

from test_simic import toy_episode

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_iql_with_log_every_0_logs_only_its_last_step_averaged_over_every_step(monkeypatch):
    """0 is "none" as for the other intervals (`select_every`, `--snapshot-every`): only the last step's
    `PolicyUpdated`, which the job's summary reads."""
    losses = []
    step = iql.iql_step

    def watched(*args):
        out = step(*args)
        losses.append(out["value_loss"])
        return out

    monkeypatch.setattr(iql, "iql_step", watched)
    sink = ListSink()
    _, result = iql.train(IQLConfig(steps=5, batch_size=8, log_every=0), spec_for_task("mnist1d"), [toy_episode(8)],
                          sink=sink)
    (logged,) = sink.events
    assert isinstance(logged, PolicyUpdated) and logged.update == 5 and result["stats"] == logged.stats
    assert logged.stats["value_loss"] == pytest.approx(sum(losses) / 5)


def test_iql_refuses_a_negative_log_every_before_reading_any_run(tmp_path):
    with pytest.raises(BadInput, match=r"^log_every must be 0 \(the last step's only\) or a number of steps, got -1$"):
        iql_job(IQLConfig(log_every=-1), tmp_path / "p.pt", Workspace.at(tmp_path / "empty"))
    assert not (tmp_path / "p.pt").exists()


@pytest.mark.slow  # a subprocess that imports torch and Ray
@pytest.mark.parametrize("args, says", [
    (["--workers", "1"], "--workers is the Ray side compared with one process: give 2 or more, got 1"),
    (["--repeats", "0"], "--repeats and --seeds must be at least 1, got 0 and 1"),
])
def test_the_workers_benchmark_refuses_what_it_cannot_compare_before_starting_ray(args, says):
    """One worker against one worker has no speedup to measure (it used to run, then fail on `median([])`)."""
    small = ["--episodes", "1", "--n-envs", "1", "--epochs", "1", "--seeds", "1", "--seed-epochs", "1",
             "--repeats", "1", "--only", "rollouts"]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "workers.py"), *small, *args], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"workers: {says}"]  # one line, as every benchmark refuses
