"""`benchmarks/tune.py`'s grid: a run per point and seed, named so that a sweep's workspace is reused."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from tune import grid_jobs  # noqa: E402  (a script's module, beside its helpers)

from esper.store import Workspace  # noqa: E402
from esper.tolaria.tasks import get_task  # noqa: E402


def test_a_decay_axis_adds_points_and_leaves_the_preset_s_runs_named_as_before():
    plain = grid_jobs("mnist1d", [0.01], [0.003, 0.01], [100], [100])
    assert [j.run_id for j in plain] == ["tune-heuristic-lr0.01-slr0.003-b100-s100", "tune-static-lr0.01-b100-s100",
                                         "tune-heuristic-lr0.01-slr0.01-b100-s100"]
    decayed = grid_jobs("mnist1d", [0.01], [0.003, 0.01], [100], [100], decays=[0.0, 0.001])
    ids = [j.run_id for j in decayed]
    assert set(j.run_id for j in plain) < set(ids) and len(ids) == len(set(ids)) == 6
    presets = {j.run_id: j.preset for j in decayed}
    assert presets["tune-static-lr0.01-b100-wd0.001-s100"].weight_decay == 0.001
    assert presets["tune-heuristic-lr0.01-slr0.01-b100-wd0.001-s100"].seed_lr == 0.01
    # the static host never uses the seeds' rate: its preset keeps the task's, as every sweep recorded it
    assert {p.seed_lr for i, p in presets.items() if "static" in i} == {get_task("mnist1d").seed_lr}
    assert {p.weight_decay for i, p in presets.items() if "wd" not in i} == {get_task("mnist1d").weight_decay}


def test_the_table_reads_this_commands_grid_not_every_sweep_in_the_workspace(tmp_path):
    """A workspace reused by a smaller sweep (`--lr 0.01`) still holds a bigger one's runs; its table and its best
    point are its own grid's."""
    from fake_runs import plan_run, write_batches
    from msgspec.structs import replace

    from tune import read_points
    asked = grid_jobs("mnist1d", [0.01], [0.003], [100], [100])
    earlier = grid_jobs("mnist1d", [0.02], [0.003], [100], [100])  # an earlier sweep's point, in the same workspace
    for job in asked + earlier:
        batches = plan_run(job.config.controller, job.config.seed, epochs=3)
        batches[0][0] = replace(batches[0][0], preset=job.preset)
        write_batches(tmp_path, batches, job.run_id)
    points = read_points(Workspace(tmp_path), asked)
    assert {(p["controller"], p["lr"], p["runs"]) for p in points} == {("heuristic", 0.01, 1), ("static", 0.01, 1)}
