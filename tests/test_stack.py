"""`benchmarks/stack.py`'s growth step: the transformer stacked deeper, its copies and their Adam state."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import stack  # noqa: E402


def trained(depth: int) -> tuple[torch.nn.Module, torch.optim.Adam, torch.Tensor]:
    torch.manual_seed(0)
    host = stack.transformer(depth)
    optimizer = torch.optim.Adam(host.parameters(), lr=1e-2)
    x = torch.randint(0, 256, (2, 64))
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


def test_copies_blended_in_start_from_the_shallower_models_function():
    host, optimizer, x = trained(3)
    with torch.no_grad():
        before = host(x)
    deeper, _ = stack.stack(host, 6, optimizer, "interleave", blend_steps=4)
    with torch.no_grad():
        assert torch.equal(deeper(x), before)
        for module in deeper.stages:
            if isinstance(module, stack.Entering):
                module.step = 4
        assert not torch.allclose(deeper(x), before)


def test_the_step_costs_grow_with_depth():
    assert stack.step_flops(2) < stack.step_flops(3) < stack.step_flops(6)
