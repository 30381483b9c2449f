"""Telemetry profiles: what each measures, and that the sharpness estimate is the Hessian's top eigenvalue."""

import torch
from torch import nn

from esper.leyline import RunConfig
from esper.tamiyo.controllers import make_controller
from esper.tolaria.loop import ListSink, execute, resolve_config
from esper.tolaria.telemetry import LayerGradients, sharpness


def epochs_of(profile: str, epochs: int = 2) -> list:
    sink = ListSink()
    execute(resolve_config(RunConfig(epochs=epochs, telemetry=profile)), make_controller("static", 0), sink)
    return [e for e in sink.events if type(e).__name__ == "EpochEnded"]


def test_profiles_measure_what_they_promise():
    assert all(e.diagnostics == {} for e in epochs_of("minimal"))
    standard = epochs_of("standard")
    assert all(set(e.diagnostics) == {"grad_norms", "vanishing", "exploding", "host_gradient_health"} for e in standard)
    assert all(v > 0 for v in standard[0].diagnostics["grad_norms"].values())
    diagnostic = epochs_of("diagnostic")
    assert "sharpness" in diagnostic[0].diagnostics and "sharpness" not in diagnostic[1].diagnostics


def test_sharpness_is_the_top_hessian_eigenvalue():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(32, 3), torch.randint(0, 3, (32,))
    params = list(model.parameters())
    shapes = [p.shape for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(vector):
        chunks, i = [], 0
        for shape in shapes:
            n = torch.Size(shape).numel()
            chunks.append(vector[i:i + n].reshape(shape))
            i += n
        state = dict(zip([n for n, _ in model.named_parameters()], chunks))
        return nn.functional.cross_entropy(torch.func.functional_call(model, state, (x,)), y)

    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat))
    top = eigenvalues[eigenvalues.abs().argmax()].item()
    estimate = sharpness(model, x, y, seed=0)
    assert abs(estimate - top) / abs(top) < 0.05
    assert all(p.grad is None for p in model.parameters()), "sharpness must not touch .grad"


def test_layer_gradients_flag_vanishing_layers():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model(torch.randn(4, 2)).sum().backward()
    model[0].weight.grad.zero_()
    model[0].bias.grad.zero_()
    meter = LayerGradients(model.named_parameters())
    meter.add()
    report = meter.report()
    assert report["vanishing"] == ["0"] and report["exploding"] == []
    assert 0.0 < report["host_gradient_health"] < 1.0


def test_sharpness_takes_the_second_derivative_through_attention():
    """The CPU's fused attention kernel has no double backward: the text task's diagnostic profile crashed its
    first epoch ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented")."""
    from esper.kasmina.hosts import Transformer

    torch.manual_seed(0)
    model = Transformer(context=8, width=16)
    x, y = torch.randint(0, 256, (4, 8)), torch.randint(0, 256, (4, 8))
    estimate = sharpness(model, x, y, seed=0, loss_fn=lambda out, target: nn.functional.cross_entropy(
        out.flatten(0, 1), target.flatten()))
    assert torch.isfinite(torch.tensor(estimate)) and estimate > 0
    assert all(p.grad is None for p in model.parameters())
