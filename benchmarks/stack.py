"""Growth by depth, outside the lifecycle: the text transformer stacked deeper during training against the deep one
from the start.

    .venv/bin/python benchmarks/stack.py               # ~1.5 min a run of the deep model on one core; ~12 min in all
    .venv/bin/python benchmarks/stack.py --grow 3:6@12 --order interleave --blend-epochs 2 --seeds 0 1 2

Issue 27's grown-vs-scratch target asks for scratch's accuracy at 25 % less compute. On mnist1d, where every model
is fitted to near-zero training loss, capacity that arrives during training generalises worse, whichever way it
arrives (residual seeds, width: benchmarks/widen.py). The text task is the other regime: the transformer underfits
its corpus. There the growth that is known to save compute is by depth, stacking a trained network's blocks on top
of themselves (the new blocks start as copies, so the deeper model starts from what the shallower one learned).
Whether that meets the target on this task is cheap to measure in plain torch, before building a blueprint for it:
the text preset's recipe (Adam at its rate, its batch size, windows and epochs, the rates annealed as the trainer
does), the transformer host with `depth` blocks, and at each growth epoch the blocks are stacked: block `i` of the
deeper model is a copy of block `i mod depth` of the shallower one (`--order top`; `interleave` puts each copy
right after its block, as a `repeat` seed in the slot after it does), and so is its Adam state (restarting Adam at
a growth step did worse for width, benchmarks/widen.py). With `--blend-epochs` the copies enter as seeds blend in.

Compute is each epoch's training FLOPs as Esper counts a run's (a step's forward and backward pass, on the meta
device), summed over the epochs, and `saved` is the share below the deepest model trained for every epoch.
Accuracy is next-byte accuracy, as the text task reports it. Runs on the tuning seeds 100–102 by default: the
evaluation seeds stay untouched. Prints one JSON line per growth plan (the last one the deepest model throughout).
"""

import argparse
import copy
import functools
import json
import statistics

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from esper.kasmina.hosts import Transformer
from esper.tolaria.data import load_task_data
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import anneal_scale
from widen import plan  # the same notation, of depths: `3:6@12` is 3 blocks, 6 from epoch 12 on

TUNING_SEEDS = [100, 101, 102]
TASK = "text"


def transformer(depth: int) -> Transformer:
    """The text preset's host with `depth` blocks instead of three."""
    preset = get_task(TASK)
    host = Transformer(**preset.host_options)
    width = host.embed.tokens.embedding_dim
    block = type(host.stages[0])
    host.stages = nn.Sequential(*(block(width, host.stages[0].mlp[0].out_features // width) for _ in range(depth)))
    return host


@functools.cache
def step_flops(depth: int) -> float:
    """FLOPs of one training step of a batch of the preset's size on the host with `depth` blocks (nothing is
    computed: the model lives on the meta device)."""
    preset = get_task(TASK)
    with torch.device("meta"):
        host = transformer(depth)
        x = torch.zeros(preset.batch_size, *host.input_shape, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        host(x).sum().backward()
    return float(counter.get_total_flops())


class Entering(nn.Module):
    """A block that enters the network blended, as a seed does in BLENDING: `x + alpha * (block(x) - x)`, alpha rising
    from 0 (the block left out: the deeper network computes what the shallower one did) to 1 (the block)."""

    def __init__(self, block: nn.Module, steps: int):
        super().__init__()
        self.block, self.steps, self.step = block, steps, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = min(1.0, self.step / self.steps)
        return x + alpha * (self.block(x) - x)


def stack(host: Transformer, depth: int, optimizer: torch.optim.Adam, order: str,
          blend_steps: int) -> tuple[Transformer, torch.optim.Adam]:
    """`host` with `depth` blocks, and an Adam over it whose state is the old one, a copied block's copied with it.
    `order` "top": block `i` is a copy of block `i mod` the old depth (the copies stacked on top); "interleave": each
    block is followed by its copies (`depth` a multiple of the old depth). With `blend_steps`, each copy enters
    blended over that many steps (`Entering`), else at once."""
    old = list(host.stages)
    if order == "top":
        sources = [old[i % len(old)] for i in range(depth)]
    else:
        sources = [block for block in old for _ in range(depth // len(old))]
    blocks, seen = [], set()
    for source in sources:
        block = source
        if id(source) in seen:  # a copy; the first use of a block is the block itself
            block = copy.deepcopy(source)
            block = Entering(block, blend_steps) if blend_steps else block
        blocks.append(block)
        seen.add(id(source))
    state = {}
    for block, source in zip(blocks, sources):
        for p_new, p_old in zip(block.parameters(), source.parameters()):
            if p_old in optimizer.state:
                state[p_new] = {k: v.clone() for k, v in optimizer.state[p_old].items()}
    for module in (host.embed, host.head):
        for p in module.parameters():
            if p in optimizer.state:
                state[p] = optimizer.state[p]
    host.stages = nn.Sequential(*blocks)
    deeper = torch.optim.Adam(host.parameters(), lr=optimizer.param_groups[0]["lr"])
    deeper.state.update(state)
    return host, deeper


def accuracy(host: nn.Module, data, split: str) -> float:
    host.eval()
    correct = n = 0
    with torch.no_grad():
        for x, y in data.batches(split, 1024):
            correct += data.correct(host(x), y).item()
            n += len(y)
    host.train()
    return correct / n


def train(seed: int, depths: dict[int, int], order: str, blend_epochs: int) -> dict[str, float]:
    """One run: `depths[e]` is the host's depth from epoch `e` on (epoch 1 included)."""
    preset = get_task(TASK)
    data = load_task_data(TASK, seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    host = transformer(depths[1])
    optimizer = torch.optim.Adam(host.parameters(), lr=preset.lr)
    spent = 0.0
    for epoch in range(1, preset.epochs + 1):
        if epoch > 1 and epoch in depths:
            host, optimizer = stack(host, depths[epoch], optimizer, order, blend_epochs * data.steps(preset.batch_size))
        for group in optimizer.param_groups:
            group["lr"] = preset.lr * anneal_scale(epoch, preset.epochs, preset.anneal_epochs)
        for x, y in data.batches("train", preset.batch_size, generator):
            loss = data.loss(host(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for module in host.stages:
                if isinstance(module, Entering):
                    module.step += 1
        spent += step_flops(len(host.stages)) * data.steps(preset.batch_size)
    return {"val": accuracy(host, data, "val"), "test": accuracy(host, data, "test"), "flops": spent}


def summary(name: str, runs: list[dict[str, float]], deepest: int) -> dict:
    def pct(key: str) -> list[float]:
        return [round(100 * run[key], 2) for run in runs]

    preset = get_task(TASK)
    steps = -(-preset.epoch_windows // preset.batch_size)
    saved = 1 - runs[0]["flops"] / (preset.epochs * steps * step_flops(deepest))
    return {"plan": name, "val": round(statistics.fmean(pct("val")), 2), "test": round(statistics.fmean(pct("test")), 2),
            "saved": round(saved, 3), "gflops": round(runs[0]["flops"] / 1e9, 1), "val_per_seed": pct("val"),
            "test_per_seed": pct("test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grow", nargs="+", default=["3:6@12", "2:4@7:6@13"], help="growth plans: DEPTH[:DEPTH@EPOCH]...")
    parser.add_argument("--order", choices=("top", "interleave"), default="top",
                        help="where the copies go: on top of the blocks, or each after the block it copies")
    parser.add_argument("--blend-epochs", type=int, default=0,
                        help="each copy enters blended over this many epochs, as a seed does (0: at once)")
    parser.add_argument("--seeds", type=int, nargs="+", default=TUNING_SEEDS)
    args = parser.parse_args()
    torch.set_num_threads(get_task(TASK).cpu_threads)  # as a CPU run of the preset trains
    plans = {text: plan(text) for text in args.grow}
    deepest = max(max(depths.values()) for depths in plans.values())
    plans.setdefault(f"{deepest}", {1: deepest})
    for name, depths in plans.items():
        runs = [train(seed, depths, args.order, args.blend_epochs) for seed in args.seeds]
        print(json.dumps(summary(name, runs, deepest)), flush=True)


if __name__ == "__main__":
    main()
