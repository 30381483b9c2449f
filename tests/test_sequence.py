"""The sequence family and the transformer host: blueprints over (B, T, D), causality, isolation and cull."""

import copy

import pytest
import torch
import torch.nn.functional as F
from test_kasmina import (assert_a_pass_on_first_examples_is_theirs_alone,
                          assert_isolated_training_changes_no_host_state, assert_same_state, eval_out, host_state,
                          isolated_step)
from torch import nn

from esper.kasmina import BLUEPRINTS, GrowableModel, build_host, grow
from esper.kasmina.blueprints import blueprint_sizes

SEQUENCE = ("sequence", "causal_sequence")
NAMES = ("mlp", "attention", "lowrank", "norm")


def make_transformer(seed: int = 0) -> tuple[GrowableModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_host("transformer", context=12, width=16)
    x = torch.randint(0, 256, (3, 12))
    return model, x, torch.randint(0, 256, (3, 12))


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def trained_a_little(module: nn.Module) -> nn.Module:
    """The blueprint with every parameter moved off its initial value (a zero last layer hides the rest)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module


# ---- blueprints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", SEQUENCE)
@pytest.mark.parametrize("name", NAMES)
def test_a_sequence_blueprint_keeps_shape_and_starts_contributing_nothing(family, name):
    x = torch.randn(2, 7, 16)
    module = BLUEPRINTS[family][name](16)
    assert torch.equal(module(x), torch.zeros_like(x))
    assert trained_a_little(module)(x).shape == x.shape
    assert blueprint_sizes(family, 16)[name] == sum(p.numel() for p in module.parameters())


def test_sizes_are_known_before_germination_and_the_largest_comes_first():
    sizes = blueprint_sizes("causal_sequence", 64)
    assert list(sizes) == list(NAMES)
    assert sizes["mlp"] > sizes["attention"] > sizes["lowrank"] > sizes["norm"] > 0
    assert sizes == blueprint_sizes("sequence", 64)


@pytest.mark.parametrize("name", NAMES)
def test_a_causal_blueprint_never_looks_ahead(name):
    torch.manual_seed(0)
    module = trained_a_little(BLUEPRINTS["causal_sequence"][name](16))
    x = torch.randn(2, 7, 16)
    later = x.clone()
    later[:, 4:] = torch.randn(2, 3, 16)
    assert torch.allclose(module(x)[:, :4], module(later)[:, :4], atol=1e-6)


def test_a_sequence_attention_seed_sees_the_whole_sequence():
    torch.manual_seed(0)
    module = trained_a_little(BLUEPRINTS["sequence"]["attention"](16))
    x = torch.randn(2, 7, 16)
    later = x.clone()
    later[:, 4:] = torch.randn(2, 3, 16)
    assert not torch.allclose(module(x)[:, :4], module(later)[:, :4])


# ---- the transformer host -----------------------------------------------------------------------


def test_the_transformer_host_is_causal_with_three_sequence_slots():
    model, x, _ = make_transformer()
    assert model(x).shape == (3, 12, 256)
    assert [(s.name, s.family, s.channels) for s in model.slots.values()] == [
        ("early", "causal_sequence", 16), ("mid", "causal_sequence", 16), ("late", "causal_sequence", 16)]
    model.germinate("mid", "s", "attention")
    model.start_training("s")
    model.start_blending("s", steps=1)
    model.step_blending()
    trained_a_little(model.slots["mid"].live)
    later = x.clone()
    later[:, 6:] = (later[:, 6:] + 1) % 256
    assert torch.allclose(eval_out(model, x)[:, :6], eval_out(model, later)[:, :6], atol=1e-5)


@pytest.mark.parametrize("slot", ["early", "mid", "late"])
@pytest.mark.parametrize("blueprint", ["mlp", "attention", "repeat"])
def test_gradient_isolation_is_bit_identical_on_the_transformer(slot, blueprint):
    model, x, y = make_transformer()
    batches = [(x + step) % 256 for step in range(3)]
    assert_isolated_training_changes_no_host_state(model, slot, blueprint, batches, y, loss=lm_loss)


@pytest.mark.parametrize("blueprint", ["mlp", "repeat"])
def test_a_seed_trains_in_isolation_on_a_batchs_first_examples_on_the_transformer(blueprint):
    model, x, y = make_transformer()
    assert_a_pass_on_first_examples_is_theirs_alone(copy.deepcopy(model), "early", blueprint, x, y, True, loss=lm_loss)
    batches = [(x + step) % 256 for step in range(3)]
    assert_isolated_training_changes_no_host_state(model, "early", blueprint, batches, y, loss=lm_loss, examples=2)


def test_cull_restores_the_transformers_outputs_bit_identically():
    model, x, y = make_transformer()
    twin = copy.deepcopy(model)
    model.germinate("early", "s", "mlp")
    model.start_training("s")
    model(x)
    isolated_step(model, "s", x, y, lr=0.5, loss=lm_loss)
    model.start_blending("s", steps=2)
    model.step_blending()
    assert not torch.equal(eval_out(model, x), eval_out(twin, x))
    model.cull("s")
    assert torch.equal(eval_out(model, x), eval_out(twin, x))
    assert_same_state(host_state(model), host_state(twin))


# ---- growth by depth: repeat ----------------------------------------------------------------------


def fully_in(model: GrowableModel, seed_id: str) -> None:
    model.start_training(seed_id)
    model.start_blending(seed_id, steps=1)
    model.step_blending()


@pytest.mark.parametrize("slot, block", [("early", 0), ("mid", 1), ("late", 2)])
def test_a_repeat_seed_fully_in_applies_the_block_before_its_slot_once_more(slot, block):
    """Germinated, `repeat` is a copy of the block as trained so far: the host one block deeper, the block twice."""
    model, x, _ = make_transformer()
    trained_a_little(model.host)  # a copy of trained weights, not of an initialisation
    twin = copy.deepcopy(model)
    assert model.germinate(slot, "s", "repeat") == sum(p.numel() for p in model.host.stages[block].parameters())
    assert model.seed_sizes(["repeat"])[slot]["repeat"] == model.slot(slot).live.num_params()
    assert torch.equal(eval_out(model, x), eval_out(twin, x))  # nothing reaches the output before blending
    fully_in(model, "s")
    host = twin.host
    h = host.embed(x)
    for i, stage in enumerate(host.stages):
        h = stage(h)
        if i == block:
            h = stage(h)
    with torch.no_grad():
        expected = host.head(h)
    assert torch.allclose(eval_out(model, x), expected, atol=1e-5)


def test_a_repeat_seed_is_a_copy_that_owns_its_weights_and_carries_no_slot_hook():
    model, x, y = make_transformer()
    model.germinate("mid", "s", "repeat")
    copied, block = model.slots["mid"].live.module.block, model.host.stages[1]
    assert not {id(p) for p in copied.parameters()} & {id(p) for p in model.host.parameters()}
    assert len(block._forward_hooks) == 1 and not copied._forward_hooks  # the slot's hook stays on the host's block
    before = {k: v.clone() for k, v in block.state_dict().items()}
    fully_in(model, "s")
    with torch.no_grad():
        for p in copied.parameters():
            p.add_(1.0)
    assert_same_state(before, block.state_dict())


def test_scratch_builds_a_repeat_afresh_and_germination_copies():
    model, _, _ = make_transformer()
    trained_a_little(model.host)
    block = model.host.stages[0]
    torch.manual_seed(1)
    model.build("early", "b", "repeat")
    built = model.slots["early"].fossils[0].module.block
    assert [p.shape for p in built.parameters()] == [p.shape for p in block.parameters()]
    assert not any(torch.equal(a, b) for a, b in zip(built.parameters(), block.parameters()) if a.dim() > 1)
    model.germinate("mid", "s", "repeat")
    copied = model.slots["mid"].live.module.block
    assert all(torch.equal(a, b) for a, b in zip(copied.parameters(), model.host.stages[1].parameters()))


def test_a_repeat_is_built_and_germinated_on_the_meta_device_as_compute_is_counted():
    with torch.device("meta"):
        model = build_host("transformer", context=12, width=16)
        model.build("early", "b", "repeat")
        model.germinate("mid", "s", "repeat")
    assert all(p.is_meta for p in model.parameters())
    assert model.seed_sizes(["repeat"])["late"]["repeat"] == sum(p.numel() for p in model.slots["early"].fossils[0].parameters())


def test_repeat_grows_only_in_sequence_slots():
    torch.manual_seed(0)
    model = build_host("cnn1d")
    with pytest.raises(ValueError, match="slot early cannot grow 'repeat'"):
        model.germinate("early", "s", "repeat")
    assert "repeat" not in model.seed_sizes(["repeat"])["early"]
    text = build_host("transformer", context=12, width=16)
    assert "repeat" not in text.seed_sizes()["early"]  # a run that grows no copy records no size for one


# ---- a user's transformer -----------------------------------------------------------------------


class TinyDecoder(nn.Module):
    """A user's model: not a chain (its forward is its own), blocks in a ModuleList."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(32, width)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.0, batch_first=True)
                                    for _ in range(2))
        self.head = nn.Linear(width, 32)

    def forward(self, x):
        h = self.embed(x)
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return self.head(h)


def test_esper_grow_takes_a_users_transformer_and_isolates_its_seeds():
    torch.manual_seed(0)
    model = grow(TinyDecoder(), ["blocks.0", "blocks.1"], example=torch.zeros(2, 8, dtype=torch.long))
    assert [(s.name, s.family, s.channels) for s in model.slots.values()] == [
        ("blocks.0", "causal_sequence", 16), ("blocks.1", "causal_sequence", 16)]
    assert model.downstream == {"blocks.0": None, "blocks.1": None}  # no chain: the isolated pass reruns it all
    x, y = torch.randint(0, 32, (4, 8)), torch.randint(0, 32, (4, 8))
    twin = copy.deepcopy(model)
    before = eval_out(model, x)
    model.germinate("blocks.0", "s", "attention")
    model.start_training("s")
    for m in (model, twin):
        lm_loss(m(x), y).backward()
    lm_loss(model.isolated_output("s", x), y).backward()
    assert all(p.grad is not None for p in model.seed_parameters("s"))
    assert_same_state(host_state(model), host_state(twin))
    model.cull("s")
    assert torch.equal(eval_out(model, x), before)
