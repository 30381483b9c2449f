"""`esper.grow`: slots in any model, the family each activation picks, isolation for any graph, bad input."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper.errors import BadInput
from esper.kasmina import build_host, grow


class Branched(nn.Module):
    """Two paths joined by addition: a graph that is not a chain."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.right = nn.Conv2d(8, 8, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        h = self.stem(x)
        return self.head(self.left(h) + self.right(h))


def resnet18() -> nn.Module:
    import torchvision  # seconds to import: only where a test builds resnet18

    return torchvision.models.resnet18(num_classes=10)


# name -> (model factory, slots, the slot a seed trains in)
MODELS = {
    "resnet18": (resnet18, ["layer1", "layer2", "layer3"], "layer2"),
    "branched-stem": (Branched, ["stem", "left"], "stem"),
    "branched-left": (Branched, ["stem", "left"], "left"),
}


def make(name: str) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """(grown model, an ungrown copy of the user's model, x, y), BatchNorm statistics warmed up."""
    factory, slots, _ = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 32, 32))
    plain = copy.deepcopy(model)
    return grow(model, slots, example=x[:2]), plain, x, y


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter, gradient and buffer of `module`, cloned."""
    out = {f"param:{n}": p.detach().clone() for n, p in module.named_parameters()}
    out |= {f"grad:{n}": p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out | {f"buffer:{n}": b.clone() for n, b in module.named_buffers()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def eval_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was)
    return out


def test_grow_wraps_resnet18_and_changes_nothing_until_a_seed_blends():
    model, plain, x, _ = make("resnet18")
    assert isinstance(model, nn.Module) and model.host is not plain
    assert [(s.name, s.family, s.channels) for s in model.slots.values()] == [
        ("layer1", "conv2d", 64), ("layer2", "conv2d", 128), ("layer3", "conv2d", 256)]
    assert model.downstream == {"layer1": None, "layer2": None, "layer3": None}  # not a chain
    assert torch.equal(eval_out(model, x), eval_out(plain, x))
    model.germinate("layer2", "s", "conv_light")
    model.start_training("s")
    assert torch.equal(model(x), plain(x))  # train mode too: the training seed adds nothing
    assert model.param_count() == sum(p.numel() for p in plain.parameters())


def test_growing_changes_neither_the_model_nor_the_rng():
    torch.manual_seed(1)
    model = resnet18()
    before = copy.deepcopy(model.state_dict())
    example = torch.randn(2, 3, 32, 32)
    rng = torch.random.get_rng_state()
    grow(model, ["layer1"], example=example)
    assert torch.equal(rng, torch.random.get_rng_state()), "growing must not draw from the RNG"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())  # the probe's eval mode is undone


@pytest.mark.parametrize("name", [pytest.param("resnet18", marks=pytest.mark.slow), "branched-stem", "branched-left"])
def test_gradient_isolation_is_bit_identical_on_any_graph(name):
    """Host gradients, parameters and BatchNorm statistics of the user's model are identical with a training seed
    (whose isolated pass reruns the whole model) and without any slots at all, through optimizer steps."""
    model, plain, x, y = make(name)
    slot = MODELS[name][2]
    model.germinate(slot, "s", "conv_heavy")
    model.start_training("s")
    opt_a = torch.optim.SGD(model.host_parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    seed_before = [p.detach().clone() for p in model.seed_parameters("s")]
    for step in range(2):
        xs = x + step
        for m, opt in ((model, opt_a), (plain, opt_b)):
            opt.zero_grad()
            F.cross_entropy(m(xs), y).backward()
        params = model.seed_parameters("s")
        grads = torch.autograd.grad(F.cross_entropy(model.isolated_output("s", xs), y), params)
        assert any(g.abs().sum() > 0 for g in grads), "the seed learned nothing: the test would prove nothing"
        assert_same(state(model.host), state(plain))
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= 0.1 * g
        opt_a.step()
        opt_b.step()
        assert_same(state(model.host), state(plain))
    assert not all(torch.equal(a, b) for a, b in zip(seed_before, model.seed_parameters("s")))
    assert torch.equal(eval_out(model, x), eval_out(plain, x))


@pytest.mark.parametrize("name", ["branched-stem", "branched-left"])
def test_the_isolated_output_is_the_model_with_the_seed_fully_in(name):
    model, _, x, _ = make(name)
    slot = MODELS[name][2]
    model.germinate(slot, "s", "conv_light")
    model.start_training("s")
    model.eval()
    with torch.no_grad():
        isolated = model.isolated_output("s", x)
        with model.forced_alpha("s", 1.0):
            fully_in = model(x)
        without = model(x)
    assert torch.equal(isolated, fully_in)
    assert not torch.equal(isolated, without)


@pytest.mark.parametrize("host,shape", [("cnn1d", (8, 1, 40)), ("resnet", (4, 3, 32, 32))])
@pytest.mark.parametrize("slot", ["early", "mid", "late"])
@pytest.mark.parametrize("training", [True, False])
def test_the_chain_shortcut_gives_what_the_whole_pass_gives(host, shape, slot, training):
    torch.manual_seed(0)
    model = build_host(host, **({"width": 8} if host == "resnet" else {}))
    x, y = torch.randn(*shape), torch.randint(0, 10, (shape[0],))
    model.build("late", "f", "norm")  # a fossil downstream: host parameters the pass must leave alone
    model.germinate(slot, "s", "conv_light")
    model.start_training("s")
    model.train(training)
    model(x)
    params = model.seed_parameters("s")
    assert model.downstream[slot] is not None
    outputs = [model.isolated_output("s", x, shortcut=shortcut) for shortcut in (True, False)]
    assert torch.equal(outputs[0], outputs[1])
    grads = [torch.autograd.grad(F.cross_entropy(out, y), params) for out in outputs]
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_a_layer_after_the_slot_working_in_place_does_not_change_what_the_seed_sees():
    """`ReLU(inplace=True)` right after a slot overwrites the activation the slot kept for the shortcut: the
    isolated pass must then run the whole model again, not start from the rectified activation."""
    torch.manual_seed(0)
    model = grow(nn.Sequential(nn.Linear(10, 16), nn.ReLU(inplace=True), nn.Linear(16, 3)), ["0"],
                 example=torch.zeros(2, 10))
    assert model.downstream["0"] == ["1", "2"]
    model.germinate("0", "s", "mlp")
    model.start_training("s")
    for p in model.seed_parameters("s"):  # a seed that is not zero at its output, so its input shows
        nn.init.normal_(p)
    x = torch.randn(8, 10)
    model(x)
    assert (model.slots["0"].cache >= 0).all(), "the in-place layer did not overwrite the cache: proves nothing"
    shortcut, whole = (model.isolated_output("s", x, shortcut=s) for s in (True, False))
    assert torch.equal(shortcut, whole)


def test_the_isolated_pass_draws_nothing_from_the_rng():
    """Dropout in the host: the extra pass runs on a fork of the RNG, so the host's next masks are its own."""
    torch.manual_seed(0)
    model = grow(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.Conv2d(4, 4, 3)), ["0"],
                 example=torch.zeros(1, 3, 8, 8))
    assert model.downstream["0"] == ["1", "2"]  # a chain: the shortcut reruns dropout too
    model.germinate("0", "s", "conv_light")
    model.start_training("s")
    x = torch.randn(2, 3, 8, 8)
    model(x)
    rng = torch.random.get_rng_state()
    for shortcut in (True, False):
        model.isolated_output("s", x, shortcut=shortcut).sum().backward()
        assert torch.equal(rng, torch.random.get_rng_state())


def train_in_isolation_then_blend(model, seed_id: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """One isolated step of a training seed (as the trainer takes it, at a large rate), then half-way into blending."""
    params = model.seed_parameters(seed_id)
    grads = torch.autograd.grad(F.cross_entropy(model.isolated_output(seed_id, x), y), params)
    assert any(g.abs().sum() > 0 for g in grads), "the seed learned nothing: the test would prove nothing"
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= 0.5 * g
    model.start_blending(seed_id, steps=2)
    model.step_blending()


def test_cull_restores_the_users_model_exactly():
    model, plain, x, y = make("resnet18")
    before = eval_out(model, x)
    model.germinate("layer3", "s", "conv_light")
    model.start_training("s")
    for m in (model, plain):  # identical train-mode forwards: the same BatchNorm statistics in both
        m(x)
    train_in_isolation_then_blend(model, "s", x, y)
    assert not torch.equal(eval_out(model, x), eval_out(plain, x))
    model.cull("s")
    assert torch.equal(eval_out(model, x), eval_out(plain, x))
    assert not torch.equal(eval_out(model, x), before)  # the host did train: the same way as the plain copy
    assert_same(state(model.host), state(plain))


def test_a_grown_user_model_round_trips_through_torch_save():
    model, _, x, _ = make("branched-stem")
    model.build("left", "f", "attention")
    model.germinate("stem", "s", "conv_light")
    model.start_training("s")
    model.start_blending("s", steps=4)
    model.step_blending()
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(eval_out(loaded, x), eval_out(model, x))
    with loaded.forced_alpha("s", 0.0):  # the hooks came back wired to the loaded slots
        assert not torch.equal(eval_out(loaded, x), eval_out(model, x))


def test_telemetry_names_layers_as_the_user_does_with_slots_where_they_sit():
    model, _, _, _ = make("resnet18")
    model.build("layer1", "f", "norm")
    names = [n for n, _ in model.placed_parameters()]
    assert names[0] == "conv1.weight" and not any(n.startswith("host.") for n in names)
    slot = names.index("slots.layer1.fossils.0.module.weight")
    assert names[slot - 1].startswith("layer1.") and names[slot + 2].startswith("layer2.")
    assert len(names) == len(list(model.parameters()))
    # the built-in chains keep the names and order their logs were written with
    host = build_host("cnn1d")
    host.build("early", "f", "norm")
    assert [n.rsplit(".", 1)[0] for n, _ in host.placed_parameters()][::2] == [
        "stages.0.0", "stages.1.0", "stages.2.0", "slots.early.fossils.0.module", "head.1"]


def mlp_and_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, torch.randn(8, 6), torch.randint(0, 3, (8,))


def test_an_mlps_hidden_layers_grow_features_seeds_isolated_and_culled_exactly():
    model, x, y = mlp_and_batch()
    plain = copy.deepcopy(model)
    grown = grow(model, ["1", "3"], example=x[:2])
    assert {grown.slot(s).family for s in ("1", "3")} == {"features"}
    assert grown.slot("1").channels == 16
    grown.germinate("1", "s", "mlp")
    grown.start_training("s")
    for m in (grown, plain):
        F.cross_entropy(m(x), y).backward()
    train_in_isolation_then_blend(grown, "s", x, y)
    assert_same(state(grown.host), state(plain))  # host gradients untouched by the training seed
    assert not torch.equal(eval_out(grown, x), eval_out(plain, x))
    grown.cull("s")
    assert torch.equal(eval_out(grown, x), eval_out(plain, x))


def test_a_3d_activation_is_conv1d_after_a_1d_convolution_else_a_sequence():
    model = grow(nn.Sequential(nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU()), nn.Flatten(), nn.Linear(4 * 6, 2)),
                 ["0.1"], example=torch.zeros(1, 1, 8))
    assert [(s.name, s.family, s.channels) for s in model.slots.values()] == [("0.1", "conv1d", 4)]
    assert model.downstream["0.1"] == ["1", "2"]
    model.germinate("0.1", "s", "depthwise")
    assert model.live_seeds() == {"s": "0.1"}  # a dotted path names its slot
    after_linear = grow(nn.Sequential(nn.Conv1d(1, 4, 3), nn.Linear(6, 6), nn.ReLU()), ["2"], torch.zeros(1, 1, 8))
    assert after_linear.slot("2").family == "causal_sequence" and after_linear.slot("2").channels == 6
    encoder = grow(nn.Sequential(nn.Linear(16, 16), nn.ReLU()), ["0"], torch.zeros(2, 5, 16), causal=False)
    assert encoder.slot("0").family == "sequence"


class OwnConv(nn.Module):
    """A 1-D convolution of the user's own, which Esper does not know for one: its (B, C, L) output passes for a
    sequence's (B, T, D)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3) / 3)

    def forward(self, x):
        return F.conv1d(x, self.weight, padding=1)


def own_conv_model() -> nn.Module:
    return nn.Sequential(OwnConv(2, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10, 3))


def test_families_name_the_family_of_a_slot_whose_3d_activation_esper_reads_wrong():
    guessed = grow(own_conv_model(), ["1"], example=torch.zeros(2, 2, 10))
    assert (guessed.slot("1").family, guessed.slot("1").channels) == ("causal_sequence", 10)
    model = grow(own_conv_model(), ["1"], example=torch.zeros(2, 2, 10), families={"1": "conv1d"})
    assert (model.slot("1").family, model.slot("1").channels) == ("conv1d", 8)
    model.germinate("1", "s", "depthwise")
    model.start_training("s")
    model.start_blending("s", steps=1)
    model.step_blending()
    assert model(torch.randn(4, 2, 10)).shape == (4, 3)
    encoder = grow(nn.Sequential(nn.Conv1d(2, 6, 1), nn.Linear(5, 5)), ["1"], torch.zeros(2, 2, 5),
                   families={"1": "sequence"})
    assert (encoder.slot("1").family, encoder.slot("1").channels) == ("sequence", 5)


@pytest.mark.parametrize("families, message", [
    (["conv1d"], r"^families: a dict of slot name → family, e.g. \{'layer1': 'conv1d'\}; got \['conv1d'\]$"),
    ({"2": "conv1d"}, r"^families: no slot '2' \(slots: 1\)$"),
    ({"1": "conv3d"}, r"^families: unknown family 'conv3d' for slot 1 \(families: features, conv1d, sequence, "
                      r"causal_sequence, conv2d\)$"),
    ({"1": "conv2d"}, r"^families: 1 gives activations of shape \(2, 8, 10\), which conv1d or sequence or "
                      r"causal_sequence grow on, not conv2d$"),
])
def test_a_family_that_names_no_slot_or_does_not_fit_its_shape_is_one_bad_input_line(families, message):
    bad(message, own_conv_model(), ["1"], torch.zeros(2, 2, 10), families=families)


class Masked(nn.Module):
    """A block that takes a mask beside its input, by keyword or by position."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x, mask):
        return self.linear(x) * mask


def test_a_slot_saved_before_slots_said_whether_they_repeat_loads_as_one_that_does_not(tmp_path):
    model = grow(Stack(), ["block"], example=torch.zeros(2, 3, dtype=torch.long))
    del model.slot("block").__dict__["repeats"]  # as a whole model saved then loads
    torch.save(model, tmp_path / "old.pt")
    old = torch.load(tmp_path / "old.pt", weights_only=False)
    assert old.slot("block").repeats is False and "repeat" not in old.seed_sizes(["repeat"])["block"]
    assert "mlp" in old.seed_sizes()["block"] and "block" in repr(old)


class Doubles(nn.Module):
    """A block with weights that keeps its input's shape and changes its dtype."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return self.linear(x).double()


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.block, self.act = nn.Embedding(5, 8), nn.Linear(8, 8), nn.ReLU()
        self.by_keyword, self.by_position, self.widen = Masked(), Masked(), nn.Linear(8, 12)
        self.cast = Doubles(12)

    def forward(self, ids):
        mask = torch.ones(ids.shape[1], 1)
        h = self.act(self.block(self.embed(ids)))
        return self.cast(self.widen(self.by_position(self.by_keyword(h, mask=mask), mask)))


def test_a_copy_of_the_submodule_grows_only_after_one_with_weights_that_maps_its_one_input_to_its_shape():
    slots = ["embed", "block", "act", "by_keyword", "by_position", "widen", "cast"]
    model = grow(Stack(), slots, example=torch.zeros(2, 3, dtype=torch.long))
    assert {name: model.slot(name).repeats for name in slots} == {
        "embed": False, "block": True, "act": False, "by_keyword": False, "by_position": False, "widen": False,
        "cast": False}
    model.germinate("block", "s", "repeat")
    with pytest.raises(ValueError, match="slot act cannot grow 'repeat': a copy grows only after a submodule with parameters"):
        model.germinate("act", "t", "repeat")


def test_a_module_meta_cannot_run_is_probed_on_its_own_device():
    class Gate(nn.Module):  # needs the values of its input: no meta kernel gives them
        def forward(self, x):
            return x * 2 if x.sum().item() >= 0 else x

    model = grow(nn.Sequential(nn.Conv2d(3, 4, 1), Gate()), ["1"], example=torch.ones(1, 3, 4, 4))
    assert model.slot("1").family == "conv2d"


# ---- bad input -----------------------------------------------------------------------------------


def bad(match: str, model, slots, example, **options) -> None:
    with pytest.raises(BadInput, match=match) as info:
        grow(model, slots, example, **options)
    assert "\n" not in str(info.value)


def test_a_slot_path_that_does_not_exist_lists_the_nearest_names():
    bad(r"no submodule 'layer9' \(nearest: layer1, layer2, layer3, layer4\)", resnet18(), ["layer9"],
        torch.zeros(1, 3, 32, 32))
    bad("no submodule 'stem.9'", Branched(), ["stem.9"], torch.zeros(1, 3, 8, 8))


def test_a_slot_path_like_no_submodule_lists_the_first_ones_and_a_model_of_none_says_so():
    bad(r"no submodule 'zzz' \(none is close; its submodules: stem, left, right, head, … 13 in all\)$", Branched(),
        ["zzz"], torch.zeros(1, 3, 8, 8))
    bad(r"no submodule 'zzz' \(none is close; its submodules: 0, 1\)$", nn.Sequential(nn.Linear(3, 3), nn.ReLU()),
        ["zzz"], torch.zeros(1, 3))
    bad(r"^the Linear has no submodules: a slot goes after a submodule of the model, named by its path in "
        r"model.named_modules\(\)$", nn.Linear(3, 3), ["fc"], torch.zeros(1, 3))


def test_an_activation_shape_no_family_handles_is_refused():
    bad(r"1 gives activations of shape \(2,\): no blueprint family.*features take \(B, D\)",
        nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)), ["1"], torch.zeros(2, 3))
    bad(r"shape \(2, 3, 4, 4, 4\): no blueprint family.*sequence \(B, T, D\)", nn.Sequential(nn.Conv3d(3, 3, 1)), ["0"],
        torch.zeros(2, 3, 4, 4, 4))


def test_a_model_without_parameters_is_refused():
    bad("the Sequential has no parameters", nn.Sequential(nn.ReLU(), nn.Identity()), ["0"], torch.zeros(1, 3))


def test_an_example_that_fails_the_forward_pass_quotes_the_models_own_error():
    bad(r"the example fails the model's forward pass: RuntimeError: .*(channels|size|shape)", resnet18(),
        ["layer1"], torch.zeros(2, 5, 32, 32))


def test_other_misuse_is_one_line_too():
    shared = nn.Conv2d(3, 3, 1)
    bad("runs 2 times in one forward pass", nn.Sequential(shared, shared), ["0"], torch.zeros(1, 3, 4, 4))

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(4, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    bad("rnn returns a tuple, not a tensor", Recurrent(), ["rnn"], torch.zeros(1, 2, 4))
    bad("give a list of submodule paths", Recurrent(), [], torch.zeros(1, 2, 4))
    grown = Branched()
    grow(grown, ["stem"], torch.zeros(1, 3, 8, 8))
    bad("grown already", grown, ["left"], torch.zeros(1, 3, 8, 8))
    bad("give a list of submodule paths", Branched(), "stem", torch.zeros(1, 3, 8, 8))
    bad("a non-empty text like 'layer1'; got 1$", Branched(), [1], torch.zeros(1, 3, 8, 8))
    bad("a non-empty text like 'layer1'; got '': 'stem'", Branched(), {"": "stem"}, torch.zeros(1, 3, 8, 8))
