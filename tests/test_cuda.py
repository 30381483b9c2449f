"""The CUDA path of the trainer. Runs where CUDA exists; the same code is tested on CPU everywhere else."""

import pytest
import torch

from esper.leyline import RunConfig
from esper.leyline.config import HeuristicConfig
from esper.leyline.events import encode
from esper.tamiyo.controllers import make_controller
from esper.tolaria.loop import ListSink, execute, resolve_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.slow  # a real run
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_a_run_grows(device):
    """Eight epochs leave the default gardener no time to grow (`finish_epochs`); an eager one grows at once."""
    sink = ListSink()
    eager = HeuristicConfig(min_gain=1.0, finish_epochs=4)
    result = execute(resolve_config(RunConfig(epochs=8, device=device, seed=1)),
                     make_controller("heuristic", 1, heuristic=eager), sink)
    kinds = {type(e).__name__ for e in sink.events}
    assert {"SeedGerminated", "SeedTransitioned", "RunFinished"} <= kinds
    assert 0.0 <= result.test_accuracy <= 1.0 and result.params > 1258


@needs_cuda
def test_cuda_run_matches_its_own_rerun_bit_for_bit():
    """Same seed, same device: the same events to the last bit (cuDNN is asked for the same kernels every time;
    floating point may differ from CPU, not from itself)."""
    runs = []
    for _ in range(2):
        sink = ListSink()
        execute(resolve_config(RunConfig(epochs=4, device="cuda", seed=2)), make_controller("heuristic", 2), sink)
        runs.append([encode(e) for e in sink.events])
    assert torch.backends.cudnn.deterministic
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


# ---- the fast path: precision, channels-last, no host sync ----------------------------------------


def planted_trainer(device="cuda", **config):
    """A trainer (on cuda unless told) on mnist1d with a training seed and a blending one, ready for an epoch's steps."""
    from esper.tolaria.data import load_task_data
    from esper.tolaria.tasks import get_task
    from esper.tolaria.trainer import Trainer
    from planted import plant

    trainer = Trainer(resolve_config(RunConfig(epochs=4, seed=5, device=device, **config)), get_task("mnist1d"),
                      load_task_data("mnist1d", 42))
    plant(trainer, "s1-early", "early", "conv_light", "TRAINING")
    plant(trainer, "s2-late", "late", "norm", "BLENDING")
    trainer.begin_epoch(1)
    return trainer


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_training_step_never_waits_for_the_gpu(precision):
    """With seeds training and blending, telemetry on: no step synchronises host and device (CUDA's sync debug
    mode raises on any that does); the epoch's end reads the statistics once."""
    trainer = planted_trainer(precision=precision, telemetry="standard")
    batches = trainer.data.batches("train", trainer.preset.batch_size, trainer.generator)
    trainer.train_step(*next(batches))  # the first step builds the optimizers' state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            trainer.train_step(*next(batches))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    loss, health, seed_loss = trainer.epoch_totals()
    assert loss > 0 and set(health) == {"s1-early", "s2-late"} and set(seed_loss) == {"s1-early"}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_optimizers_are_fused_on_cuda_only(device):
    """Fused on CUDA (fewer kernel launches per step); on CPU the default implementation, whose numbers runs
    recorded on CPU were computed with."""
    trainer = planted_trainer(device)
    optimizers = [trainer.host_optimizer, *trainer.seed_optimizers.values()]
    assert len(optimizers) == 3
    assert all(bool(opt.defaults["fused"]) == (device == "cuda") for opt in optimizers)
    batches = trainer.data.batches("train", trainer.preset.batch_size, trainer.generator)
    trainer.train_step(*next(batches))
    assert 0 < trainer.epoch_totals()[0] < 10


@needs_cuda
def test_bf16_is_the_default_on_cuda_and_the_run_records_it():
    sink = ListSink()
    execute(resolve_config(RunConfig(epochs=2, device="cuda", seed=1)), make_controller("heuristic", 1), sink)
    started = sink.events[0]
    assert started.config.precision == "bf16" and not started.channels_last  # mnist1d's host is 1-D
    assert type(sink.events[-1]).__name__ == "RunFinished"


@needs_cuda
@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)])
def test_the_forward_runs_at_the_precision_on_cuda(precision, dtype):
    trainer = planted_trainer(precision=precision)
    seen = []
    trainer.model.host.stages[0][0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    batches = trainer.data.batches("train", trainer.preset.batch_size, trainer.generator)
    for _ in range(3):
        trainer.train_step(*next(batches))
    assert set(seen) == {dtype} and (trainer.scaler is not None) == (precision == "fp16")
    loss, _, _ = trainer.epoch_totals()
    assert 0 < loss < 10


@needs_cuda
def test_a_conv2d_host_is_channels_last_on_cuda_and_so_are_its_seeds():
    from esper.tolaria.data import Split, TaskData
    from esper.leyline import Germinate, Wait
    from esper.tolaria.loop import Session, train_epoch

    g = torch.Generator().manual_seed(0)
    split = lambda n: Split(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))  # noqa: E731
    data = TaskData(task="cifar10", train=split(256), val=split(64), test=split(64), num_classes=10)
    sink = ListSink()
    session = Session(resolve_config(RunConfig(task="cifar10", epochs=3, device="cuda")), sink, data=data)
    try:
        for epoch, command in ((1, Germinate(slot="mid", blueprint="conv_heavy")), (2, Wait())):
            session.begin_epoch()
            train_epoch(session)
            session.end_epoch()
            session.decide(command, "static")
            session.settle()
        model = session.trainer.model
        weights = [p for p in model.parameters() if p.dim() == 4]
        assert model.training_seeds() == ["s1-mid"]
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    finally:
        session.close()
    assert sink.events[0].channels_last and sink.events[0].config.precision == "bf16"


@needs_cuda
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_ranks_train_one_run_on_two_gpus(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "esper", "run", "--device", "cuda", "--epochs", "3", "--json", "--workspace", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(tmp_path.glob("*.duckdb"))) == 1
    assert 0.0 <= json.loads(done.stdout.strip().splitlines()[-1])["val_accuracy"] <= 1.0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_esper_fit_trains_a_users_model_at_the_precision_it_is_given(device, precision, dtype, tmp_path):
    """fp32 on CUDA too, where a run's default is bf16; bf16 on CPU too, where it is fp32."""
    import esper
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).to(device)
    seen = []
    model[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    grown = esper.grow(model, ["1"], example=torch.zeros(1, 3, 8, 8, device=device))
    seen.clear()  # the example's pass, outside any run
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(2)]
    esper.fit(grown, data, data, epochs=1, controller="static", device=device, precision=precision,
              workspace=str(tmp_path))
    trained = seen[len(("train", "val")):]  # after the check of each split's first batch, which runs as given
    assert set(trained) == {dtype}
