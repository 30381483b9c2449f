"""Acceptance of growing any model: torchvision's resnet18 grown on the user's own CIFAR-like batches with
`esper.grow` + `esper.fit` + the heuristic, host gradients bit-identical while a seed trains, its log replayed."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from cli_runner import invoke

import esper
from esper.tolaria.trainer import Trainer

pytestmark = pytest.mark.slow  # real training runs or subprocesses of the CLI

CHECKED_STEPS = 2
"""Training steps whose host gradients are compared with a twin's (each costs a copy and a pass of resnet18)."""


def cifar_like(batches: int, seed: int, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Standardised 32x32 images whose red plane says the class, as `tests/cifar_fixture.py` writes them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        y = torch.randint(0, 10, (size,), generator=g)
        x = 0.2 * torch.randn(size, 3, 32, 32, generator=g)
        x[:, 0] = (y.float()[:, None, None] - 4.5) / 3
        out.append((x, y))
    return out


def host_grads_and_buffers(model: esper.GrowableModel) -> dict[str, torch.Tensor]:
    """Gradients of the host's parameters and its fossils', and every buffer outside the live seeds."""
    live = {id(t) for sid in model.live_seeds() for t in model.seed_parameters(sid)}
    out = {f"grad:{n}": p.grad.clone() for n, p in model.named_parameters() if id(p) not in live}
    return out | {f"buffer:{n}": b.clone() for n, b in model.named_buffers() if ".live." not in n}


def test_resnet18_grows_on_the_users_own_batches(tmp_path, monkeypatch):
    checked = []
    train_step = Trainer.train_step

    def checked_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> None:
        """The step as the trainer takes it, compared with the same step of a twin whose training seeds are culled."""
        model = trainer.model
        if not model.training_seeds() or len(checked) >= CHECKED_STEPS:
            return train_step(trainer, x, y)
        twin = copy.deepcopy(model)
        for sid in twin.training_seeds():
            twin.cull(sid)
        for p in twin.parameters():
            p.grad = None
        F.cross_entropy(twin(x), y).backward()
        train_step(trainer, x, y)  # forward, backward, each training seed's isolated pass, optimizer steps
        mine, twins = host_grads_and_buffers(model), host_grads_and_buffers(twin)
        assert mine.keys() == twins.keys()
        assert all(torch.equal(mine[k], twins[k]) for k in mine), [k for k in mine if not torch.equal(mine[k], twins[k])]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for sid in model.training_seeds()
                   for p in model.seed_parameters(sid)[:1]), "a training seed learned nothing"
        checked.append(model.training_seeds())

    monkeypatch.setattr(Trainer, "train_step", checked_step)
    import torchvision  # here, not at the top: its import costs every test worker ~2 s of collection

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    grown = esper.grow(model, slots=["layer1", "layer2", "layer3"], example=torch.zeros(2, 3, 32, 32))
    result = esper.fit(grown, train=cifar_like(3, seed=1), val=cifar_like(2, seed=2), epochs=8,
                       heuristic={"warmup_epochs": 1, "finish_epochs": 0, "min_gain": 1.0},
                       blueprints=["norm", "conv_light"], workspace=str(tmp_path))
    assert len(checked) == CHECKED_STEPS
    assert result.seeds.get("FOSSILIZED", 0) >= 1, result.seeds
    assert result.params > sum(p.numel() for p in model.parameters())  # the fossils joined the host
    replay = invoke("replay", result.run_id, "--json", workspace=tmp_path)
    assert replay.exit_code == 0, replay.stderr
    state = json.loads(replay.stdout)
    assert state["status"] == "finished" and state["stage_counts"].get("FOSSILIZED", 0) >= 1
