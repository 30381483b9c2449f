"""Training compute read from a log equals what the training steps computed."""

from pathlib import Path

import msgspec
import pytest
from torch.utils.flop_counter import FlopCounterMode

from esper.leyline import HeuristicConfig, RunConfig, SeedStage, SeedTransitioned
from esper.tamiyo.controllers import make_controller
from esper.tolaria.flops import epoch_flops
from esper.leyline.config import TaskPreset
from esper.tolaria import text
from esper.tolaria.loop import ListSink, execute, resolve_config
from esper.tolaria.tasks import get_task
from esper.tolaria.text import TextData
from esper.tolaria.trainer import Trainer

pytestmark = pytest.mark.slow  # trains a real run


def tiny_text(folder: Path) -> tuple[TaskPreset, TextData]:
    """A small transformer on a small text: the text task at a test's size."""
    preset = msgspec.structs.replace(get_task("text"), host_options={"context": 16, "width": 16}, epoch_windows=96)
    path = folder / "corpus.txt"
    path.write_text("def grow(model):\n    return model\n" * 300)
    return preset, text.load_text("text", path, context=16, windows=96)


# task → (example shape, training examples per epoch)
SHAPES = {"mnist1d": ((1, 40), 3200), "text": ((16,), 96)}


@pytest.fixture(scope="module", params=list(SHAPES))
def counted_run(request, tmp_path_factory):
    """A short run that grows, with every training step's FLOPs counted as it trains."""
    per_epoch: dict[int, float] = {}
    real_step, real_begin = Trainer.train_step, Trainer.begin_epoch
    epoch = {"now": 0}

    def begin(self, e):
        epoch["now"] = e
        return real_begin(self, e)

    def step(self, x, y):
        counter = FlopCounterMode(display=False)
        with counter:
            real_step(self, x, y)
        per_epoch[epoch["now"]] = per_epoch.get(epoch["now"], 0) + counter.get_total_flops()

    mp = pytest.MonkeyPatch()
    mp.setattr(Trainer, "train_step", step)
    mp.setattr(Trainer, "begin_epoch", begin)
    try:
        knobs = HeuristicConfig(warmup_epochs=1, min_gain=1.0, finish_epochs=0)
        preset, data = tiny_text(tmp_path_factory.mktemp("text")) if request.param == "text" else (None, None)
        cfg = resolve_config(RunConfig(task=request.param, epochs=6, seed=3, heuristic=knobs), preset)
        sink = ListSink()
        execute(cfg, make_controller("heuristic", 3, heuristic=knobs), sink, preset=preset, data=data)
    finally:
        mp.undo()
    return sink.events, per_epoch, SHAPES[request.param]


def test_flops_from_the_log_equal_the_counted_training_steps(counted_run):
    events, counted, (shape, examples) = counted_run
    stages = {e.to_stage for e in events if isinstance(e, SeedTransitioned)}
    assert SeedStage.TRAINING.value in stages  # isolated passes were part of some epochs
    from_log = epoch_flops(events, example_shape=shape, train_examples=examples)
    assert sorted(from_log) == sorted(counted)
    for epoch, flops in counted.items():
        assert from_log[epoch] == pytest.approx(flops, rel=1e-9), epoch
    assert len(set(from_log.values())) > 1  # growth changed the cost of an epoch


def test_flops_of_a_log_without_a_run_start_are_empty(counted_run):
    events, _, (shape, examples) = counted_run
    assert epoch_flops(events[1:], example_shape=shape, train_examples=examples) == {}
