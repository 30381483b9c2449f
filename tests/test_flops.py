"""Training compute read from a log equals what the training steps computed."""

from pathlib import Path

import msgspec
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from esper.kasmina import GrowableModel, preset_host
from esper.leyline import HeuristicConfig, LifecycleConfig, RunConfig, SeedStage, SeedTransitioned
from esper.tamiyo.controllers import make_controller
from esper.tolaria.flops import _step_flops, epoch_flops
from esper.leyline.config import TaskPreset
from esper.tolaria import text
from esper.tolaria.loop import ListSink, execute, resolve_config
from esper.tolaria.tasks import get_task
from esper.tolaria.text import TextData
from esper.tolaria.trainer import Trainer

def tiny_text(folder: Path) -> tuple[TaskPreset, TextData]:
    """A small transformer on a small text: the text task at a test's size."""
    preset = msgspec.structs.replace(get_task("text"), host_options={"context": 16, "width": 16}, epoch_windows=96)
    path = folder / "corpus.txt"
    path.write_text("def grow(model):\n    return model\n" * 300)
    return preset, text.load_text("text", path, context=16, windows=96)


# task → training examples per epoch
EXAMPLES = {"mnist1d": 3200, "text": 96}


@pytest.fixture(scope="module", params=[("mnist1d", 1.0), ("text", 1.0), ("text", 0.25)], ids=str)
def counted_run(request, tmp_path_factory):
    """A short run that grows, with every training step's FLOPs counted as it trains: epoch → (the steps, their
    isolated passes: each training seed's `isolated_output` and the `autograd.grad` that takes its gradient). Its
    seeds train in isolation on the whole batch, or on a quarter of it."""
    task, fraction = request.param
    per_epoch: dict[int, list[float]] = {}
    real_step, real_begin, real_isolated, real_grad = (Trainer.train_step, Trainer.begin_epoch,
                                                       GrowableModel.isolated_output, torch.autograd.grad)
    epoch = {"now": 0, "stepping": False}

    def begin(self, e):
        epoch["now"] = e
        return real_begin(self, e)

    def counted(slot, call, *args, **kwargs):
        counter = FlopCounterMode(display=False)  # nested in a step's counter, which counts the same ops too
        with counter:
            out = call(*args, **kwargs)
        per_epoch.setdefault(epoch["now"], [0, 0])[slot] += counter.get_total_flops()
        return out

    def step(self, x, y):
        epoch["stepping"] = True
        try:
            return counted(0, real_step, self, x, y)
        finally:
            epoch["stepping"] = False

    def isolated(*args, **kwargs):  # evaluation also measures seeds this way: not training, not counted
        return counted(1, real_isolated, *args, **kwargs) if epoch["stepping"] else real_isolated(*args, **kwargs)

    def grad(*args, **kwargs):  # a training step takes gradients this way for its isolated passes only
        return counted(1, real_grad, *args, **kwargs) if epoch["stepping"] else real_grad(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(Trainer, "train_step", step)
    mp.setattr(Trainer, "begin_epoch", begin)
    mp.setattr(GrowableModel, "isolated_output", isolated)
    mp.setattr(torch.autograd, "grad", grad)
    try:
        knobs = HeuristicConfig(warmup_epochs=1, min_gain=1.0, finish_epochs=0)
        preset, data = tiny_text(tmp_path_factory.mktemp("text")) if task == "text" else (None, None)
        cfg = resolve_config(RunConfig(task=task, epochs=6, seed=3, heuristic=knobs,
                                       lifecycle=LifecycleConfig(isolated_fraction=fraction)), preset)
        sink = ListSink()
        execute(cfg, make_controller("heuristic", 3, heuristic=knobs), sink, preset=preset, data=data)
    finally:
        mp.undo()
    return sink.events, per_epoch, EXAMPLES[task]


@pytest.mark.slow  # trains a real run
def test_flops_from_the_log_equal_the_counted_training_steps(counted_run):
    events, counted, examples = counted_run
    stages = {e.to_stage for e in events if isinstance(e, SeedTransitioned)}
    assert SeedStage.TRAINING.value in stages  # isolated passes were part of some epochs
    from_log = epoch_flops(events, train_examples=examples)  # text's context 16 is its host's, not the task's
    assert sorted(from_log) == sorted(counted)
    for epoch, (flops, isolated) in counted.items():
        assert from_log[epoch].total == pytest.approx(flops, rel=1e-9), epoch
        assert from_log[epoch].isolated == pytest.approx(isolated, rel=1e-9), epoch
    assert len({c.total for c in from_log.values()}) > 1  # growth changed the cost of an epoch
    assert any(c.isolated for c in from_log.values()) and not all(c.isolated for c in from_log.values())


@pytest.mark.slow
def test_flops_of_a_log_without_a_run_start_are_empty(counted_run):
    events, _, examples = counted_run
    assert epoch_flops(events[1:], train_examples=examples) == {}


@pytest.mark.parametrize("task, blueprint", [("mnist1d", "conv_heavy"), ("text", "repeat")])
def test_isolated_passes_on_a_quarter_of_each_batch_cost_a_quarter(task, blueprint):
    preset = get_task(task)
    with torch.device("meta"):
        model = preset_host(preset)
    model.germinate("early", "s", blueprint)
    model.start_training("s")
    whole, whole_isolated = _step_flops(model, 128)
    part, part_isolated = _step_flops(model, 128, isolated_fraction=0.25)
    assert part_isolated == pytest.approx(whole_isolated / 4, rel=1e-9)
    assert whole - part == pytest.approx(whole_isolated - part_isolated, rel=1e-9)  # the host's step is unchanged
