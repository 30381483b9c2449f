"""A fossilized seed's parameters join the host optimizer with the state their seed optimizer built; logs written
before that re-execute as they trained, with the state started afresh."""

import json

import msgspec
import pytest
import torch

from esper.leyline import RunConfig
from esper.leyline.events import RunStarted, SeedTransitioned, decode, encode
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import resolve_config
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import Trainer
from planted import plant

SEED = "s1-mid"


@pytest.fixture(scope="module")
def data():
    return load_task_data("mnist1d", 42)


def fossilized(data, keep: bool, optimizer: str = "adam") -> tuple[Trainer, dict, list[torch.nn.Parameter]]:
    """A trainer whose blending seed took a few steps and then fossilized; the seed optimizer's state before that."""
    preset = msgspec.structs.replace(get_task("mnist1d"), fossils_keep_state=keep, optimizer=optimizer)
    trainer = Trainer(resolve_config(RunConfig(epochs=3, seed=3)), preset, data)
    plant(trainer, SEED, "mid", "conv_light", "BLENDING")
    trainer.begin_epoch(1)
    batches = trainer.data.batches("train", preset.batch_size, trainer.generator)
    for _ in range(3):
        trainer.train_step(*next(batches))
    params = trainer.model.seed_parameters(SEED)
    seed_state = {p: {k: v.clone() for k, v in trainer.seed_optimizers[SEED].state[p].items()} for p in params}
    trainer.realize(SeedTransitioned(epoch=1, seed_id=SEED, slot="mid", from_stage="BLENDING", to_stage="FOSSILIZED",
                                     trigger="advance"))
    return trainer, seed_state, params


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_fossil_keeps_the_state_its_seed_optimizer_built(data, optimizer):
    trainer, seed_state, params = fossilized(data, keep=True, optimizer=optimizer)
    assert SEED not in trainer.seed_optimizers
    host = trainer.host_optimizer
    assert all(any(p is q for q in host.param_groups[0]["params"]) for p in params)
    for p in params:
        assert set(host.state[p]) == set(seed_state[p]) and seed_state[p]
        for key, value in seed_state[p].items():
            assert torch.equal(host.state[p][key], value), key
    batches = trainer.data.batches("train", trainer.preset.batch_size, trainer.generator)
    trainer.train_step(*next(batches))  # the host's step moves them on from there
    if optimizer == "adam":
        assert all(host.state[p]["step"] == seed_state[p]["step"] + 1 for p in params)


def test_without_it_a_fossil_starts_afresh_in_the_host_optimizer(data):
    trainer, _, params = fossilized(data, keep=False)
    assert all(p not in trainer.host_optimizer.state for p in params)


def test_new_runs_keep_the_state_and_logs_from_before_read_as_afresh():
    assert get_task("mnist1d").fossils_keep_state and get_task("cifar10").fossils_keep_state
    started = RunStarted(config=resolve_config(RunConfig()), preset=get_task("mnist1d"))
    assert decode(encode(started)).preset.fossils_keep_state
    v4 = json.loads(encode(started))
    v4["schema_version"] = 4
    del v4["preset"]["fossils_keep_state"]
    old = decode(json.dumps(v4).encode())
    assert old.preset.fossils_keep_state is False
    # and v6's divergence rule and v7's validation at the end, which a v4 log also predates
    assert old.preset.divergence_epochs == 1 and not old.preset.validates_at_end
    assert msgspec.structs.replace(old.preset, fossils_keep_state=True, divergence_epochs=3,
                                   validates_at_end=True) == started.preset
