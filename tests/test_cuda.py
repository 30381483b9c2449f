"""The CUDA path of the trainer. Runs where CUDA exists; the same code is tested on CPU everywhere else."""

import pytest
import torch

from esper.leyline import RunConfig
from esper.tamiyo.controllers import make_controller
from esper.tolaria.loop import ListSink, execute, resolve_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_a_run_grows_on_cuda():
    sink = ListSink()
    result = execute(resolve_config(RunConfig(epochs=8, device="cuda", seed=1)), make_controller("heuristic", 1), sink)
    kinds = {type(e).__name__ for e in sink.events}
    assert {"SeedGerminated", "SeedTransitioned", "RunFinished"} <= kinds
    assert 0.0 <= result.test_accuracy <= 1.0 and result.params > 1258


@needs_cuda
def test_cuda_run_matches_its_own_rerun():
    """Same seed, same device: the same decisions (floating point may differ from CPU, not from itself)."""
    runs = []
    for _ in range(2):
        sink = ListSink()
        execute(resolve_config(RunConfig(epochs=4, device="cuda", seed=2)), make_controller("heuristic", 2), sink)
        runs.append([type(e).__name__ for e in sink.events])
    assert runs[0] == runs[1]


@needs_cuda
def test_lockstep_runs_step_on_their_own_cuda_streams():
    from esper.simic.env import VecEnv, configs_round_robin, play
    from esper.tolaria.data import load_task_data

    base = resolve_config(RunConfig(controller="test", epochs=4, seed=1, device="cuda"))
    configs = configs_round_robin(base, 3, ["cuda"])
    sinks = [ListSink() for _ in configs]
    vec = VecEnv(configs, sinks, load_task_data("mnist1d", base.data_seed))
    assert all(env.stream is not None for env in vec.envs) and len({id(env.stream) for env in vec.envs}) == 3
    results = play(vec, [make_controller("heuristic", i) for i in range(3)])
    assert all(r is not None and 0.0 <= r.val_accuracy <= 1.0 for r in results)
    for sink in sinks:
        types = [type(e).__name__ for e in sink.events]
        assert types[0] == "RunStarted" and types[-1] == "RunFinished" and types.count("EpochEnded") == 4


@needs_cuda
def test_ppo_trains_on_cuda(tmp_path):
    from esper.simic.ppo import PPOConfig, train
    from esper.store import Workspace

    cfg = PPOConfig(n_envs=2, episodes=2, epochs=3, devices=("cuda",))
    result = train(cfg, tmp_path / "ppo.pt", Workspace.at(tmp_path))
    assert result["episodes"] == 2 and (tmp_path / "ppo.pt").is_file()
    assert result["stats"]["env_steps_per_s"] > 0
