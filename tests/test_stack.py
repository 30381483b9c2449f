"""`benchmarks/stack.py`'s growth step: the transformer (or mnist1d's residual cnn) stacked deeper, its copies and
their Adam state."""

import sys
from pathlib import Path

import msgspec
import pytest
import torch

from esper.tolaria.data import Split, TaskData
from esper.tolaria.tasks import get_task

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import stack  # noqa: E402


def tiny_mnist1d(seed: int) -> TaskData:
    """Random signals of mnist1d's shape: 150 training examples (two batches of the preset's 100), 20 val, 20 test."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        return Split(torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g))

    return TaskData(task="mnist1d", train=split(150), val=split(20), test=split(20), num_classes=10)


def trained(depth: int, task: str = "text") -> tuple[torch.nn.Module, torch.optim.Adam, torch.Tensor]:
    torch.manual_seed(0)
    host = stack.deep_host(task, depth, channels=4)
    optimizer = torch.optim.Adam(host.parameters(), lr=1e-2)
    x = torch.randint(0, 256, (2, 64)) if task == "text" else torch.randn(2, 1, 40)
    host(x).sum().backward()
    optimizer.step()
    return host, optimizer, x


@pytest.mark.parametrize("order, sources", [("top", [0, 1, 2, 0, 1, 2]), ("interleave", [0, 0, 1, 1, 2, 2])])
def test_the_deeper_model_copies_the_blocks_and_their_adam_state(order, sources):
    host, optimizer, x = trained(3)
    old = list(host.stages)
    deeper, adam = stack.stack(host, 6, optimizer, order, blend_steps=0)
    assert len(deeper.stages) == 6
    for block, source in zip(deeper.stages, sources):
        assert all(torch.equal(a, b) for a, b in zip(block.parameters(), old[source].parameters()))
        first = next(block.parameters())
        assert torch.equal(adam.state[first]["exp_avg"], optimizer.state[next(old[source].parameters())]["exp_avg"])
    copies = [deeper.stages[i] for i in range(6) if deeper.stages[i] not in old]
    originals = {id(p) for b in old for p in b.parameters()}
    assert len(copies) == 3 and not {id(p) for c in copies for p in c.parameters()} & originals
    assert set(adam.state) == set(deeper.parameters())


@pytest.mark.parametrize("task", ["text", "mnist1d"])
def test_copies_blended_in_start_from_the_shallower_models_function(task):
    host, optimizer, x = trained(3, task)
    with torch.no_grad():
        before = host(x)
    deeper, _ = stack.stack(host, 6, optimizer, "interleave", blend_steps=4)
    with torch.no_grad():
        assert torch.equal(deeper(x), before)
        for module in deeper.stages:
            if isinstance(module, stack.Entering):
                module.step = 4
        assert not torch.allclose(deeper(x), before)


@pytest.mark.parametrize("task", ["text", "mnist1d"])
def test_the_step_costs_grow_with_depth(task):
    assert stack.step_flops(task, 2) < stack.step_flops(task, 3) < stack.step_flops(task, 6)


def test_a_run_reports_what_the_deepest_host_would_have_spent(monkeypatch):
    monkeypatch.setattr(stack, "get_task", lambda task: msgspec.structs.replace(get_task(task), epochs=2, anneal_epochs=1))
    monkeypatch.setattr(stack, "load_task_data", lambda task, seed: tiny_mnist1d(seed))
    grown = stack.train("mnist1d", 0, {1: 1, 2: 2}, "interleave", blend_epochs=1, channels=4)
    steps = tiny_mnist1d(0).steps(get_task("mnist1d").batch_size)
    assert grown["deepest"] == 2 * steps * stack.step_flops("mnist1d", 2, 4)
    assert grown["flops"] == steps * (stack.step_flops("mnist1d", 1, 4) + stack.step_flops("mnist1d", 2, 4))
    assert 0 <= grown["val"] <= 1 and stack.summary("1:2@2", [grown])["saved"] > 0
