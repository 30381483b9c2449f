"""`benchmarks/tune.py`'s grid: a run per point and seed, named so that a sweep's workspace is reused."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from tune import grid_jobs  # noqa: E402  (a script's module, beside its helpers)

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
