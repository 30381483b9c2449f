"""The GPU path's options, on their CPU path: precision (autocast, fp16's gradient scaler), channels-last weights,
and training steps that read nothing back from the device. `test_cuda.py` runs the same on a GPU."""

import sys

import msgspec
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from cli_runner import invoke, one_line_error
from esper.errors import BadInput
from esper.kasmina import build_host, grow
from esper.leyline import RunConfig
from esper.leyline.events import RunStarted, decode, encode
from esper.leyline.garden import Garden
from esper.tolaria.checkpoint import capture
from esper.tolaria.data import load_task_data
from esper.tolaria.health import step_health, step_health_tensor
from esper.tolaria.loop import resolve_config
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import Trainer, settle_kernels
from planted import plant


@pytest.fixture(scope="module")
def data():
    return load_task_data("mnist1d", 42)


def trainer_with_seeds(data, **config) -> Trainer:
    """A trainer whose model holds a training seed and a blending one, ready for an epoch's steps."""
    trainer = Trainer(resolve_config(RunConfig(epochs=4, seed=5, **config)), get_task("mnist1d"), data)
    plant(trainer, "s1-early", "early", "conv_light", "TRAINING")
    plant(trainer, "s2-late", "late", "norm", "BLENDING")
    trainer.begin_epoch(1)
    return trainer


def steps(trainer: Trainer, n: int) -> None:
    batches = trainer.data.batches("train", trainer.preset.batch_size, trainer.generator)
    for _ in range(n):
        trainer.train_step(*next(batches))


# ---- precision -------------------------------------------------------------------------------------


def test_the_default_precision_is_the_devices():
    assert resolve_config(RunConfig()).precision == "fp32"
    assert resolve_config(RunConfig(device="cuda")).precision == "bf16"  # resolving needs no GPU
    assert resolve_config(RunConfig(device="cuda", precision="fp32")).precision == "fp32"
    with pytest.raises(BadInput, match="unknown precision 'fp8'"):
        resolve_config(RunConfig(precision="fp8"))


def test_an_unknown_precision_is_one_line(tmp_path):
    line = one_line_error(invoke("run", "--precision", "fp8", workspace=tmp_path))
    assert "unknown precision 'fp8'" in line and "bf16" in line
    assert not any(tmp_path.iterdir())


def test_a_log_from_before_precision_reads_as_fp32():
    """v3 `RunStarted` had no precision: those runs computed in float32, whatever their device."""
    started = RunStarted(config=resolve_config(RunConfig(device="cuda")), preset=get_task("mnist1d"))
    old = msgspec.json.decode(encode(started))
    old["schema_version"] = 3
    del old["config"]["precision"], old["ranks"], old["channels_last"]
    upcast = decode(msgspec.json.encode(old))
    assert upcast.config.precision == "fp32" and upcast.ranks == 1 and not upcast.channels_last


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)])
def test_the_forward_passes_run_at_the_runs_precision(data, precision, dtype):
    trainer = trainer_with_seeds(data, precision=precision)
    seen = []
    conv = trainer.model.host.stages[0][0]
    conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    before = conv.weight.detach().clone()
    steps(trainer, 3)
    trainer.evaluate("val")
    assert seen and set(seen) == {dtype}
    assert conv.weight.dtype == torch.float32 and not torch.equal(before, conv.weight)  # master weights learn
    assert (trainer.scaler is not None) == (precision == "fp16")
    loss, health, seed_loss = trainer.epoch_totals()
    assert loss > 0 and set(health) == {"s1-early", "s2-late"} and set(seed_loss) == {"s1-early"}


def test_fp16s_gradient_scale_is_checkpointed(data):
    trainer = trainer_with_seeds(data, precision="fp16")
    steps(trainer, 2)
    captured = capture(1, trainer, None, Garden())
    assert captured.state["skeleton"]["scaler"]["scale"] == trainer.scaler.get_scale() > 0


@pytest.mark.slow
def test_a_bf16_run_records_its_precision(tmp_path):
    from esper.store import Workspace

    done = invoke("run", "--precision", "bf16", "--epochs", "3", "--json", workspace=tmp_path)
    assert done.exit_code == 0, done.stderr
    run_id = msgspec.json.decode(done.stdout.splitlines()[-1])["run_id"]
    with Workspace.at(tmp_path).reader() as reader:
        started = reader.read_run(run_id)[0].event
    assert started.config.precision == "bf16" and started.ranks == 1


# ---- no host-device synchronisation inside an epoch's steps -----------------------------------------


READS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu")
"""What brings a tensor's value to the host: on a GPU, each waits for every kernel queued before it."""


def test_a_training_step_reads_nothing_back_from_the_device(data, monkeypatch):
    """Esper's own code reads no tensor's value inside a step (the optimizers' CPU step counters are torch's):
    per-seed statistics add up on the device, and the epoch's end reads them once."""
    trainer = trainer_with_seeds(data, telemetry="standard")
    steps(trainer, 1)  # first steps build the optimizers' state
    for name in READS:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _name=name, _original=original, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("esper."):
                raise AssertionError(f"{caller} read a tensor back ({_name}) inside a training step")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)
    steps(trainer, 3)
    monkeypatch.undo()
    loss, health, _ = trainer.epoch_totals()
    assert loss > 0 and all(0.0 <= h <= 1.0 for h in health.values())


class _LiftLog(TorchDispatchMode):
    """Which of Esper's modules made a tensor from Python numbers or lists (`torch.tensor`, `new_tensor`): on CUDA each
    is a copy from the host that the step waits for."""

    def __init__(self) -> None:
        super().__init__()
        self.makers: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.lift_fresh.default:
            frame = sys._getframe(1)
            while frame is not None and not frame.f_globals.get("__name__", "").startswith("esper."):
                frame = frame.f_back
            if frame is not None:
                self.makers.append(f"{frame.f_globals['__name__']}:{frame.f_lineno}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("telemetry", ["standard", "diagnostic"])
def test_a_training_step_copies_nothing_from_the_host(data, telemetry):
    """No tensor is built from Python values inside a step (the batch's own copy is made before it)."""
    trainer = trainer_with_seeds(data, telemetry=telemetry)
    steps(trainer, 1)
    with _LiftLog() as log:
        steps(trainer, 3)
    assert log.makers == []


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(1e-12, 1e8)))
def test_the_device_health_is_the_float_health(norm):
    assert step_health_tensor(torch.tensor(norm, dtype=torch.float64)).item() == pytest.approx(step_health(norm), abs=1e-12)


# ---- channels-last ---------------------------------------------------------------------------------


def test_a_channels_last_model_plants_channels_last_seeds_and_computes_the_same():
    torch.manual_seed(0)
    model = build_host("resnet", width=4).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    model.use_channels_last()
    weights = [p for p in model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), expected)
    model.germinate("mid", "s1-mid", "conv_heavy")
    seed = [p for p in model.seed_parameters("s1-mid") if p.dim() == 4]
    assert seed and all(p.is_contiguous(memory_format=torch.channels_last) for p in seed)


class _PlanesThenVolume(nn.Module):
    """A user's model with a 2-D convolution (a slot after it) and a 3-D one, whose 5-D weight has no channels-last."""

    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()))
        self.volume = nn.Conv3d(1, 2, 3, padding=1)
        self.head = nn.Linear(2 * 4 * 6 * 6, 10)

    def forward(self, x):
        return self.head(self.volume(self.stages(x).unsqueeze(1)).flatten(1))


def test_channels_last_converts_the_4d_tensors_and_leaves_a_3d_convolution_as_it_is():
    torch.manual_seed(0)
    model = grow(_PlanesThenVolume(), {"early": "stages.0"}, example=torch.zeros(2, 3, 6, 6)).eval()
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    model.use_channels_last()
    model.germinate("early", "s1-early", "conv_light")
    planes = [p for p in model.parameters() if p.dim() == 4]
    assert len(planes) == 3 and all(p.is_contiguous(memory_format=torch.channels_last) for p in planes)
    assert model.host.volume.weight.is_contiguous()
    torch.testing.assert_close(model(x), expected)


def test_a_cuda_run_asks_cudnn_for_the_same_kernels_every_time(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", torch.backends.mkldnn.enabled)  # a CPU run sets it
    settle_kernels(torch.device("cpu"))
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark  # CPU runs leave them alone
    settle_kernels(torch.device("cuda", 0))  # only sets torch's flags: no GPU needed
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_channels_last_is_for_2d_convolutions_on_cuda_only(data):
    trainer = Trainer(resolve_config(RunConfig(epochs=1)), get_task("mnist1d"), data)
    assert not trainer.channels_last and not trainer.model.channels_last  # a CPU run, a 1-D host
