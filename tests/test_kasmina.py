"""Kasmina: blueprints, hosts, and the mechanics of every seed stage."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper.errors import BadInput
from esper.kasmina import BLUEPRINTS, GrowableModel, blend_alpha, build_host, grow
from esper.leyline import SeedStage

# test name -> (host, input shape, keyword arguments)
HOSTS = {
    "cnn1d": ("cnn1d", (8, 1, 40), {}),
    "cnn1d-bn": ("cnn1d", (8, 1, 40), {"channels": 4, "batchnorm": True, "global_pool": True}),
    "resnet": ("resnet", (4, 3, 32, 32), {"width": 8}),
}


def make(name: str, seed: int = 0) -> tuple[GrowableModel, torch.Tensor, torch.Tensor]:
    host, shape, kw = HOSTS[name]
    torch.manual_seed(seed)
    model = build_host(host, **kw)
    x = torch.randn(*shape)
    y = torch.randint(0, 10, (shape[0],))
    with torch.no_grad():  # BatchNorm statistics of a few batches, so that eval mode is not degenerate
        for _ in range(3):
            model(torch.randn(*shape))
    return model, x, y


def host_state(model: GrowableModel) -> dict[str, torch.Tensor]:
    """Every host parameter, buffer and gradient, cloned (live seeds excluded)."""
    live = {id(t) for sid in model.live_seeds() for t in model.seed_parameters(sid)}
    state = {f"param:{n}": p.detach().clone() for n, p in model.named_parameters() if id(p) not in live}
    state |= {f"grad:{n}": p.grad.clone() for n, p in model.named_parameters() if id(p) not in live and p.grad is not None}
    state |= {f"buffer:{n}": b.clone() for n, b in model.named_buffers() if ".live." not in n}
    return state


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def eval_out(model: GrowableModel, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was)
    return out


def isolated_step(model: GrowableModel, seed_id: str, x: torch.Tensor, y: torch.Tensor, lr: float = 0.1,
                  loss=F.cross_entropy, examples: int | None = None) -> list[torch.Tensor]:
    """What the trainer does for a TRAINING seed after the forward pass on `x`: task loss on the isolated output
    (of the first `examples` only, if given), gradient for the seed only."""
    params = model.seed_parameters(seed_id)
    grads = torch.autograd.grad(loss(model.isolated_output(seed_id, x, examples=examples), y[:examples]), params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g
    return list(grads)


# ---- blueprints and hosts -----------------------------------------------------------------------


@pytest.mark.parametrize("family,shape", [("conv1d", (3, 8, 20)), ("conv2d", (3, 8, 6, 6))])
@pytest.mark.parametrize("name", ["conv_light", "conv_heavy", "depthwise", "attention", "norm"])
def test_blueprint_keeps_shape(family, shape, name):
    module = BLUEPRINTS[family][name](shape[1])
    assert module(torch.randn(*shape)).shape == shape


@pytest.mark.parametrize("host", HOSTS)
def test_germinate_reports_true_param_count(host):
    model, x, _ = make(host)
    for slot in model.slot_names:
        for name in BLUEPRINTS[model.slot(slot).family]:
            count = model.germinate(slot, "s", name)
            params = model.seed_parameters("s")
            assert count == sum(p.numel() for p in params) > 0
            assert count == sum(p.numel() for p in model.slots[slot].live.module.parameters())
            model.start_training("s")
            model.cull("s")


@pytest.mark.parametrize("host", HOSTS)
def test_seed_sizes_are_what_germination_adds_and_draw_nothing_from_the_rng(host):
    model, _, _ = make(host)
    rng = torch.random.get_rng_state()
    sizes = model.seed_sizes()
    assert torch.equal(rng, torch.random.get_rng_state()), "knowing the sizes must not change a run's initialisation"
    assert set(sizes) == set(model.slot_names)
    for slot in model.slot_names:
        for name in BLUEPRINTS[model.slot(slot).family]:
            assert sizes[slot][name] == model.germinate(slot, "s", name)
            model.start_training("s")
            model.cull("s")


@pytest.mark.parametrize("host", HOSTS)
def test_host_shapes_and_slots(host):
    model, x, _ = make(host)
    assert model(x).shape == (x.shape[0], 10)
    assert len(model.slot_names) >= 3
    assert all(slot.family in BLUEPRINTS for slot in model.slots.values())
    assert model.param_count() == sum(p.numel() for p in model.parameters())


def test_unknown_host_raises_bad_input():
    with pytest.raises(BadInput, match="unknown host 'nope'.*cnn1d"):
        build_host("nope")


def test_germinate_is_deterministic_and_follows_device_and_dtype():
    model, x, _ = make("cnn1d")
    model.double()
    torch.manual_seed(7)
    model.germinate("mid", "a", "conv_heavy")
    torch.manual_seed(7)
    model.germinate("late", "b", "conv_heavy")
    for p, q in zip(model.seed_parameters("a"), model.seed_parameters("b")):
        assert p.dtype == torch.float64
        assert torch.equal(p, q)
    model(x.double())


def test_a_state_dict_with_a_live_seed_does_not_load_silently_into_a_model_without_it():
    """torch ignores keys under a child that is None: without the slot's check, strict loading would drop the seed
    and report every key matched. (A model that holds no seed at all plants the state dict's first.)"""
    grown, _, _ = make("cnn1d")
    grown.build("early", "f", "norm")
    grown.germinate("mid", "a", "conv_heavy")
    fresh, _, _ = make("cnn1d")
    fresh.build("early", "f", "norm")
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*slots\.mid\.live\."):
        fresh.load_state_dict(grown.state_dict())
    result = fresh.load_state_dict(grown.state_dict(), strict=False)
    assert any(key.startswith("slots.mid.live.") for key in result.unexpected_keys)
    twin, _, _ = make("cnn1d")
    twin.build("early", "f", "norm")
    twin.germinate("mid", "a", "conv_heavy")
    assert not twin.load_state_dict(grown.state_dict()).unexpected_keys  # a model with the seed takes it


# ---- germinated and training: the seed changes nothing -----------------------------------------


@pytest.mark.parametrize("host", HOSTS)
def test_germinated_and_training_seeds_do_not_change_the_output(host):
    model, x, _ = make(host)
    twin = copy.deepcopy(model)
    model.germinate("mid", "s", "conv_heavy")
    assert torch.equal(model(x), twin(x))
    model.start_training("s")
    assert model.training_seeds() == ["s"]
    assert torch.equal(model(x), twin(x))
    assert torch.equal(eval_out(model, x), eval_out(twin, x))
    assert model.alpha("s") == 0.0
    assert model.param_count() == twin.param_count()


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("slot", ["early", "mid", "late"])
def test_gradient_isolation_is_bit_identical(host, slot):
    """Host gradients, parameters and BatchNorm statistics are identical with and without a training
    seed, through steps that include the seed's isolated pass."""
    model, x, y = make(host)
    assert_isolated_training_changes_no_host_state(model, slot, "conv_heavy", [x + step for step in range(3)], y)


def assert_isolated_training_changes_no_host_state(model: GrowableModel, slot: str, blueprint: str,
                                                    batches: list[torch.Tensor], y: torch.Tensor,
                                                    loss=F.cross_entropy, examples: int | None = None) -> None:
    """Train `model` with a training `blueprint` seed in `slot`, and a copy without it, on `batches`: every step
    leaves both hosts' gradients, parameters and buffers identical, and the seed learns."""
    twin = copy.deepcopy(model)
    model.germinate(slot, "s", blueprint)
    model.start_training("s")
    opt_a = torch.optim.SGD(model.host_parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(twin.host_parameters(), lr=0.1, momentum=0.9)
    for xs in batches:
        for m, opt in ((model, opt_a), (twin, opt_b)):
            opt.zero_grad()
            loss(m(xs), y).backward()
        seed_grads = isolated_step(model, "s", xs, y, loss=loss, examples=examples)
        assert all(torch.isfinite(g).all() for g in seed_grads)
        assert any(g.abs().sum() > 0 for g in seed_grads)
        assert_same_state(host_state(model), host_state(twin))
        opt_a.step()
        opt_b.step()
        assert_same_state(host_state(model), host_state(twin))
    assert torch.equal(eval_out(model, batches[0]), eval_out(twin, batches[0]))


@pytest.mark.parametrize("host", HOSTS)
def test_isolated_backward_touches_only_the_seed(host):
    """Even `.backward()` on the isolated logits leaves host `.grad` and buffers alone."""
    model, x, y = make(host)
    model.germinate("early", "s", "conv_light")
    model.start_training("s")
    model(x)
    before = host_state(model)
    F.cross_entropy(model.isolated_output("s", x), y).backward()
    assert_same_state(host_state(model), before)
    assert all(p.grad is None for p in model.host_parameters())
    assert all(p.grad is not None for p in model.seed_parameters("s"))


def test_isolated_output_is_the_rest_of_the_network_on_h_plus_seed():
    model, x, _ = make("cnn1d")
    model.eval()
    model.germinate("mid", "s", "depthwise")
    model.start_training("s")
    model(x)
    h = model.slots["mid"].cache
    seed = model.slots["mid"].live
    expected = model.host.head(model.host.stages[2](h + seed(h)))  # stage 2's output passes through slot late
    assert torch.allclose(model.isolated_output("s", x), expected)


def test_isolated_pass_leaves_downstream_seeds_alone():
    """A blending seed downstream gets no gradient, no buffer change and keeps its cached activation."""
    model, x, y = make("resnet")
    model.germinate("late", "down", "conv_light")
    model.start_training("down")
    model.start_blending("down", steps=2)
    model.step_blending()
    model.germinate("early", "up", "conv_light")
    model.start_training("up")
    model(x)
    down = model.slots["late"]
    cache = down.cache
    buffers = {n: b.clone() for n, b in down.named_buffers()}
    F.cross_entropy(model.isolated_output("up", x), y).backward()
    assert down.cache is cache
    assert all(torch.equal(b, buffers[n]) for n, b in down.named_buffers())
    assert all(p.grad is None for p in model.seed_parameters("down"))


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("shortcut", [True, False])
def test_an_isolated_pass_on_a_batchs_first_examples_is_the_pass_on_those_alone(host, shortcut):
    """`examples=k` (`LifecycleConfig.isolated_fraction`): the output and the seed's gradient are those of the
    batch's first k examples run alone (in eval mode: BatchNorm in training mode normalises with whatever batch it
    sees, and the shortcut starts from the whole batch's activation)."""
    model, x, y = make(host)
    assert_a_pass_on_first_examples_is_theirs_alone(model, "mid", "conv_light", x, y, shortcut)


def assert_a_pass_on_first_examples_is_theirs_alone(model: GrowableModel, slot: str, blueprint: str, x: torch.Tensor,
                                                    y: torch.Tensor, shortcut: bool, loss=F.cross_entropy) -> None:
    model.eval()
    model.germinate(slot, "s", blueprint)
    model.start_training("s")
    params = model.seed_parameters("s")
    k = (len(x) + 1) // 2
    model(x)
    part = model.isolated_output("s", x, shortcut=shortcut, examples=k)
    part_grads = torch.autograd.grad(loss(part, y[:k]), params)
    model(x[:k])
    alone = model.isolated_output("s", x[:k], shortcut=shortcut)
    alone_grads = torch.autograd.grad(loss(alone, y[:k]), params)
    assert part.shape[0] == k < x.shape[0]
    assert torch.allclose(part, alone, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(part_grads, alone_grads))


@pytest.mark.parametrize("host", HOSTS)
def test_gradient_isolation_holds_for_a_pass_on_part_of_the_batch(host):
    model, x, y = make(host)
    assert_isolated_training_changes_no_host_state(model, "mid", "conv_light", [x + step for step in range(3)], y,
                                                    examples=2)


def test_isolated_output_needs_a_forward_first_on_a_chain():
    model, x, _ = make("cnn1d")
    model.germinate("early", "s", "norm")
    with pytest.raises(ValueError, match="run forward first"):
        model.isolated_output("s", x)


# ---- cull --------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
def test_cull_restores_the_exact_function(host):
    model, x, y = make(host)
    twin = copy.deepcopy(model)
    before = eval_out(model, x)
    model.germinate("mid", "s", "conv_heavy")
    model.start_training("s")
    for m in (model, twin):  # identical train-mode forwards: same BatchNorm statistics in both
        m(x)
    isolated_step(model, "s", x, y)
    model.start_blending("s", steps=4)
    model.step_blending()
    assert not torch.equal(eval_out(model, x), before)
    model.cull("s")
    assert model.live_seeds() == {}
    assert torch.equal(eval_out(model, x), eval_out(twin, x))
    assert_same_state(host_state(model), host_state(twin))
    assert model.param_count() == twin.param_count()
    with pytest.raises(ValueError, match="no seed 's'"):
        model.alpha("s")


def test_cull_while_training_restores_output_before_germination():
    model, x, _ = make("cnn1d")
    before = eval_out(model, x)
    model.germinate("late", "s", "attention")
    model.start_training("s")
    model.cull("s")
    assert torch.equal(eval_out(model, x), before)
    model.germinate("late", "t", "norm")  # the slot is free again


# ---- blending ----------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "sigmoid"])
def test_alpha_schedule_reaches_exactly_one(schedule):
    steps = 7
    alphas = [blend_alpha(k, steps, schedule) for k in range(steps + 3)]
    assert alphas[0] == 0.0
    assert alphas[steps] == 1.0 and alphas[-1] == 1.0
    assert all(0.0 < a < 1.0 for a in alphas[1:steps])
    assert all(a < b for a, b in zip(alphas[: steps], alphas[1 : steps + 1]))
    if schedule == "linear":
        assert alphas[:steps] == [k / steps for k in range(steps)]


@pytest.mark.parametrize("schedule", ["linear", "sigmoid"])
def test_blending_output_is_h_plus_alpha_seed(schedule):
    model, x, _ = make("cnn1d")
    model.eval()
    model.germinate("mid", "s", "conv_light")
    model.start_training("s")
    model.start_blending("s", steps=5, schedule=schedule)
    slot = model.slots["mid"]
    h = torch.randn(8, slot.channels, 20)
    seen = []
    for k in range(7):
        alpha = model.alpha("s")
        seen.append(alpha)
        assert alpha == blend_alpha(k, 5, schedule)
        with torch.no_grad():
            assert torch.equal(slot(h), h + alpha * slot.live(h))
        model.step_blending()
    assert seen[0] == 0.0 and seen[5] == 1.0 and seen[6] == 1.0
    assert model.blending_seeds() == ["s"] and model.training_seeds() == []


def test_blending_gradients_flow_both_ways():
    model, x, y = make("cnn1d")
    twin = copy.deepcopy(model)
    model.germinate("mid", "s", "conv_light")
    model.start_training("s")
    model.start_blending("s", steps=2)
    model.step_blending()
    for m in (model, twin):
        F.cross_entropy(m(x), y).backward()
    assert all(p.grad is not None for p in model.seed_parameters("s"))
    assert any(p.grad.abs().sum() > 0 for p in model.seed_parameters("s"))
    upstream = model.host.stages[0][0].weight.grad
    assert not torch.equal(upstream, twin.host.stages[0][0].weight.grad)


def test_param_count_counts_blending_seeds_not_training_ones():
    model, _, _ = make("cnn1d")
    base = model.param_count()
    n = model.germinate("mid", "s", "conv_heavy")
    model.start_training("s")
    assert model.param_count() == base
    model.start_blending("s", steps=3)
    assert model.param_count() == base + n
    seed = {id(p) for p in model.seed_parameters("s")}
    assert [id(p) for p in model.host_parameters()] == [id(p) for p in model.parameters() if id(p) not in seed]


# ---- fossilize ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
def test_fossilize_keeps_the_function_and_grows_the_host(host):
    model, x, _ = make(host)
    base = model.host_parameters()
    n = model.germinate("mid", "s", "conv_heavy")
    model.start_training("s")
    model.start_blending("s", steps=2, schedule="sigmoid")
    model.step_blending()
    model.step_blending()
    assert model.alpha("s") == 1.0
    model(x)  # a train-mode pass: the seed's BatchNorm statistics move away from their initial values
    before = eval_out(model, x)
    params = model.fossilize("s")
    assert torch.equal(eval_out(model, x), before)
    assert model.alpha("s") == 1.0
    assert model.stage("s") is SeedStage.FOSSILIZED
    assert model.live_seeds() == {} and model.blending_seeds() == []
    hp = model.host_parameters()
    assert hp[: len(base)] == base and hp[len(base) :] == params
    assert sum(p.numel() for p in params) == n
    assert model.param_count() == sum(p.numel() for p in base) + n
    assert model.architecture() == [("mid", "conv_heavy")]
    with pytest.raises(ValueError, match="fossilized"):
        model.cull("s")


def test_fossils_stack_in_a_slot_and_architecture_keeps_order():
    model, x, _ = make("cnn1d")
    for seed_id, slot, blueprint in [("a", "late", "norm"), ("b", "early", "conv_light"), ("c", "late", "attention")]:
        model.build(slot, seed_id, blueprint)
    assert model.architecture() == [("late", "norm"), ("early", "conv_light"), ("late", "attention")]
    assert [s.seed_id for s in model.slots["late"].fossils] == ["a", "c"]
    before = eval_out(model, x)
    model.germinate("late", "d", "depthwise")  # a slot with fossils still takes a live seed
    model.start_training("d")
    assert torch.equal(eval_out(model, x), before)
    model.eval()
    model.cull("d")
    model.germinate("late", "e", "norm")  # after the fossils: at alpha 1 the output is head(h + seed(h))
    model.start_training("e")
    model.start_blending("e", steps=1)
    model.step_blending()
    with torch.no_grad():
        out = model(x)
        h = model.slots["late"].cache
        assert torch.equal(out, model.host.head(h + model.slots["late"].live(h)))


# ---- forced alpha ------------------------------------------------------------------------------


def test_forced_alpha_is_temporary():
    model, x, _ = make("resnet")
    twin = copy.deepcopy(model)
    model.germinate("mid", "s", "conv_light")
    model.start_training("s")
    model.start_blending("s", steps=4)
    model.step_blending()
    blended = eval_out(model, x)
    with model.forced_alpha("s", 0.0):
        assert model.alpha("s") == 0.0
        assert torch.equal(eval_out(model, x), eval_out(twin, x))
    assert model.alpha("s") == 0.25
    assert torch.equal(eval_out(model, x), blended)
    with pytest.raises(RuntimeError), model.forced_alpha("s", 1.0):
        raise RuntimeError("boom")
    assert model.alpha("s") == 0.25
    with model.forced_alpha("s", 1.0):  # a training seed can be forced in too, to see what it would add
        assert not torch.equal(eval_out(model, x), blended)


# ---- persistence -------------------------------------------------------------------------------


def grown(host: str) -> tuple[GrowableModel, torch.Tensor]:
    model, x, _ = make(host)
    model.build("early", "a", "conv_heavy")
    model.germinate("late", "b", "attention")
    model.start_training("b")
    model.start_blending("b", steps=3)
    model.step_blending()
    model.step_blending()
    model.fossilize("b")
    model.germinate("mid", "c", "depthwise")
    model.start_training("c")
    model.start_blending("c", steps=4)
    model.step_blending()
    model(x)  # train-mode pass: BatchNorm statistics away from their initial values
    return model, x


@pytest.mark.parametrize("host", HOSTS)
def test_grown_model_round_trips_through_torch_save(host):
    model, x = grown(host)
    assert "conv_heavy" in repr(model)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert model.slots["mid"].cache is not None
    assert loaded.slots["mid"].cache is None  # activations are not saved with the model
    assert torch.equal(eval_out(loaded, x), eval_out(model, x))
    assert loaded.architecture() == model.architecture()
    assert loaded.alpha("c") == model.alpha("c") == 0.25
    loaded.step_blending()
    assert loaded.alpha("c") == 0.5


def saved_and_loaded(state: dict) -> dict:
    """`state` through `torch.save` and `torch.load`, as a file would carry it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("host", HOSTS)
def test_grown_model_round_trips_through_state_dict(host):
    model, x = grown(host)
    state = saved_and_loaded(model.state_dict())
    # Rebuild the same structure (what a resume does by replaying the log), then load the weights.
    fresh = build_host(HOSTS[host][0], **HOSTS[host][2])
    for i, (slot, blueprint) in enumerate(model.architecture()):
        fresh.build(slot, f"f{i}", blueprint)
    fresh.germinate("mid", "c", "depthwise")
    fresh.start_training("c")
    fresh.start_blending("c", steps=99)
    fresh.load_state_dict(state)
    assert fresh.alpha("c") == 0.25  # blending progress travels with the state dict
    assert torch.equal(eval_out(fresh, x), eval_out(model, x))


@pytest.mark.parametrize("host", HOSTS)
def test_a_grown_models_state_dict_plants_its_seeds_in_a_fresh_model_of_none(host):
    model, x = grown(host)
    state = saved_and_loaded(model.state_dict())
    fresh = build_host(HOSTS[host][0], **HOSTS[host][2])
    rng = torch.get_rng_state()
    assert not fresh.load_state_dict(state).unexpected_keys
    assert torch.equal(torch.get_rng_state(), rng)  # the seeds' first weights were drawn from a fork
    assert fresh.architecture() == model.architecture() == [("early", "conv_heavy"), ("late", "attention")]
    assert fresh.live_seeds() == {"s2-mid": "mid"}
    assert fresh.stage("s2-mid") is SeedStage.BLENDING and fresh.alpha("s2-mid") == 0.25
    assert torch.equal(eval_out(fresh, x), eval_out(model, x))
    assert fresh.state_dict().keys() == state.keys()


def test_a_training_seed_comes_back_germinated_adding_nothing_and_a_copy_of_a_block_comes_back_a_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    grown = grow(model, ["0", "1"], example=torch.zeros(2, 6))
    grown.build("0", "a", "repeat")
    grown.build("0", "b", "lowrank")
    grown.germinate("1", "c", "mlp")
    grown.start_training("c")
    fresh = grow(nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)), ["0", "1"],
                       example=torch.zeros(2, 6))
    fresh.load_state_dict(grown.state_dict())
    assert fresh.architecture() == [("0", "repeat"), ("0", "lowrank")]
    assert fresh.live_seeds() == {"s3-1": "1"} and fresh.stage("s3-1") is SeedStage.GERMINATED
    x = torch.randn(4, 6)
    assert torch.equal(fresh(x), grown(x))


def test_every_blueprint_of_a_family_has_weights_of_its_own_names_and_shapes():
    """What a fresh model's `load_state_dict` tells each seed's blueprint by."""
    for family, blueprints in BLUEPRINTS.items():
        for channels in (1, 4, 16):
            with torch.device("meta"):
                weights = [{k: v.shape for k, v in build(channels).state_dict().items()}
                           for build in blueprints.values()]
            assert all(weights.count(w) == 1 for w in weights), (family, channels)


def test_a_state_dict_of_another_width_is_one_bad_input_line_naming_what_to_grow():
    model, _ = grown("cnn1d-bn")
    with pytest.raises(BadInput, match=r"^the state dict's fossil 0 of slot early has the weights of no blueprint of "
                                       r"this slot \(conv1d, 8 channels\): load it into esper.grow of the same model, "
                                       r"slots and example$"):
        build_host("cnn1d").load_state_dict(model.state_dict())


# ---- errors ------------------------------------------------------------------------------------


def test_bad_requests_raise_clear_value_errors():
    model, _, _ = make("cnn1d")
    with pytest.raises(ValueError, match="unknown slot 'nowhere'.*early, mid, late"):
        model.germinate("nowhere", "s", "conv_light")
    with pytest.raises(ValueError, match="unknown blueprint 'tree'.*conv_light"):
        model.germinate("mid", "s", "tree")
    model.germinate("mid", "s", "conv_light")
    with pytest.raises(ValueError, match="slot mid already holds seed s"):
        model.germinate("mid", "t", "norm")
    with pytest.raises(ValueError, match="already in use"):
        model.germinate("late", "s", "norm")
    with pytest.raises(ValueError, match="no seed 'ghost'"):
        model.start_training("ghost")
    with pytest.raises(ValueError, match="schedule"):
        model.start_blending("s", steps=3, schedule="cubic")
    with pytest.raises(ValueError, match="at least one step"):
        model.start_blending("s", steps=0)
    model.start_training("s")
    model.start_blending("s", steps=3)
    with pytest.raises(ValueError, match="is BLENDING: the lifecycle has no move to TRAINING"):
        model.start_training("s")


def test_the_model_refuses_stage_changes_the_lifecycle_does_not_make():
    """Kasmina never decides a stage: only the machine's moves are carried out (fossilize needs BLENDING,
    a seed built up front is `build`, DORMANT → FOSSILIZED)."""
    model, x, _ = make("cnn1d")
    before = eval_out(model, x)
    model.germinate("mid", "s", "conv_light")
    with pytest.raises(ValueError, match="is GERMINATED: the lifecycle has no move to FOSSILIZED"):
        model.fossilize("s")
    with pytest.raises(ValueError, match="is GERMINATED: the lifecycle has no move to BLENDING"):
        model.start_blending("s", steps=2)
    with pytest.raises(ValueError, match="is GERMINATED: the lifecycle has no move to CULLED"):
        model.cull("s")
    assert model.stage("s") is SeedStage.GERMINATED and model.architecture() == []
    assert torch.equal(eval_out(model, x), before)
    model.start_training("s")
    with pytest.raises(ValueError, match="is TRAINING: the lifecycle has no move to FOSSILIZED"):
        model.fossilize("s")
    params = model.build("late", "b", "norm")
    assert model.architecture() == [("late", "norm")] and model.stage("b") is SeedStage.FOSSILIZED
    assert sum(p.numel() for p in params) == model.seed_sizes()["late"]["norm"]
