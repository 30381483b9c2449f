"""Training compute read from a log equals what the training steps computed."""

import pytest
from torch.utils.flop_counter import FlopCounterMode

from esper.leyline import HeuristicConfig, RunConfig, SeedStage, SeedTransitioned
from esper.tamiyo.controllers import make_controller
from esper.tolaria.flops import epoch_flops
from esper.tolaria.loop import ListSink, execute, resolve_config
from esper.tolaria.trainer import Trainer

pytestmark = pytest.mark.slow  # trains a real run


@pytest.fixture(scope="module")
def counted_run():
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
        cfg = resolve_config(RunConfig(epochs=6, seed=3, heuristic=knobs))
        sink = ListSink()
        execute(cfg, make_controller("heuristic", 3, heuristic=knobs), sink)
    finally:
        mp.undo()
    return sink.events, per_epoch


def test_flops_from_the_log_equal_the_counted_training_steps(counted_run):
    events, counted = counted_run
    stages = {e.to_stage for e in events if isinstance(e, SeedTransitioned)}
    assert SeedStage.TRAINING.value in stages  # isolated passes were part of some epochs
    from_log = epoch_flops(events, example_shape=(1, 40), train_examples=3200)
    assert sorted(from_log) == sorted(counted)
    for epoch, flops in counted.items():
        assert from_log[epoch] == pytest.approx(flops, rel=1e-9), epoch
    assert len(set(from_log.values())) > 1  # growth changed the cost of an epoch


def test_flops_of_a_log_without_a_run_start_are_empty(counted_run):
    events, _ = counted_run
    assert epoch_flops(events[1:], example_shape=(1, 40), train_examples=3200) == {}
