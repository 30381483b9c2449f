"""Growth by depth, outside the lifecycle: the text transformer stacked deeper during training against the deep one
from the start.

    .venv/bin/python benchmarks/stack.py               # ~1.5 min a run of the deep model on one core; ~12 min in all
    .venv/bin/python benchmarks/stack.py --grow 3:6@12 --order interleave --blend-epochs 2 --seeds 0 1 2
    .venv/bin/python benchmarks/stack.py --task mnist1d --grow 2:6@12 6 --order interleave --blend-epochs 2

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

`--task mnist1d` asks the same of mnist1d, whose cnn1d host cannot grow by copies (its stages change shape): a
residual cnn of `--channels` channels (`ResidualCNN1D`) whose blocks keep theirs, at the mnist1d preset's recipe, on
the tuning seeds 100–109.
"""

import copy
import functools
import json
import statistics

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from esper.errors import BadInput
from esper.kasmina.hosts import Transformer, input_dtype
from esper.tolaria.data import load_task_data
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import anneal_scale
from script import TUNING_SEEDS, Parser, non_negative_int, positive_int, run
from widen import plan  # the same notation, of depths: `3:6@12` is 3 blocks, 6 from epoch 12 on

SEEDS = {"text": TUNING_SEEDS[:3], "mnist1d": TUNING_SEEDS}  # a text run costs ~25 mnist1d runs


def transformer(depth: int) -> Transformer:
    """The text preset's host with `depth` blocks instead of three."""
    preset = get_task("text")
    host = Transformer(**preset.host_options)
    width = host.embed.tokens.embedding_dim
    block = type(host.stages[0])
    host.stages = nn.Sequential(*(block(width, host.stages[0].mlp[0].out_features // width) for _ in range(depth)))
    return host


class Residual(nn.Module):
    """A pre-activation residual block of two convolutions that keeps its input's shape: `x + f(x)`."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class ResidualCNN1D(nn.Module):
    """An mnist1d network that can grow by depth: a stem (a convolution, then one of stride 2: (B, c, 20)), `depth`
    residual blocks at that shape, and a head (a convolution of stride 2, then a linear layer on the flattened
    features). Laid out as the transformer is (`embed`, `stages`, `head`), so `stack` grows either."""

    def __init__(self, depth: int, channels: int, length: int = 40, num_classes: int = 10):
        super().__init__()
        c = channels
        self.embed = nn.Sequential(nn.Conv1d(1, c, 5, padding=2), nn.ReLU(), nn.Conv1d(c, c, 3, stride=2, padding=1))
        self.stages = nn.Sequential(*(Residual(c) for _ in range(depth)))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(c, c, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(c * ((length + 3) // 4), num_classes))
        self.input_shape = (1, length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.embed(x)))


def deep_host(task: str, depth: int, channels: int) -> nn.Module:
    """The host `task` grows by depth, with `depth` blocks (`channels` sizes the mnist1d one only)."""
    return transformer(depth) if task == "text" else ResidualCNN1D(depth, channels)


@functools.cache
def step_flops(task: str, depth: int, channels: int = 16) -> float:
    """FLOPs of one training step of a batch of the preset's size on the host with `depth` blocks (nothing is
    computed: the model lives on the meta device)."""
    preset = get_task(task)
    with torch.device("meta"):
        host = deep_host(task, depth, channels)
        x = torch.zeros(preset.batch_size, *host.input_shape, dtype=input_dtype(host))
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


def stack(host: nn.Module, depth: int, optimizer: torch.optim.Adam, order: str,
          blend_steps: int) -> tuple[nn.Module, torch.optim.Adam]:
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


def interleave_problem(text: str, depths: dict[int, int]) -> str | None:
    """Why `--order interleave` cannot follow the plan `text` (None if it can): each block is followed by its copies,
    so each new depth must be a multiple of the one before (else the blocks would not all get their copies)."""
    sizes = [depths[epoch] for epoch in sorted(depths)]
    for old, new in zip(sizes, sizes[1:]):
        if new % old:
            return (f"--grow {text}: with --order interleave each block is followed by its copies, so a depth must be "
                    f"a multiple of the one before ({new} is not of {old}): give such depths (--grow 2:4@7), or "
                    "use --order top")
    return None


def accuracy(host: nn.Module, data, split: str) -> float:
    host.eval()
    correct = n = 0
    with torch.no_grad():
        for x, y in data.batches(split, 1024):
            correct += data.correct(host(x), y).item()
            n += len(y)
    host.train()
    return correct / n


def train(task: str, seed: int, depths: dict[int, int], order: str, blend_epochs: int,
          channels: int) -> dict[str, float]:
    """One run: `depths[e]` is the host's depth from epoch `e` on (epoch 1 included). Its `flops`, and `deepest`:
    what the deepest host of the plan would have spent on every epoch."""
    preset = get_task(task)
    data = load_task_data(task, seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    host = deep_host(task, depths[1], channels)
    steps = data.steps(preset.batch_size)
    optimizer = torch.optim.Adam(host.parameters(), lr=preset.lr)
    spent = 0.0
    for epoch in range(1, preset.epochs + 1):
        if epoch > 1 and epoch in depths:
            host, optimizer = stack(host, depths[epoch], optimizer, order, blend_epochs * steps)
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
        spent += step_flops(task, len(host.stages), channels) * steps
    deepest = preset.epochs * steps * step_flops(task, max(depths.values()), channels)
    return {"val": accuracy(host, data, "val"), "test": accuracy(host, data, "test"), "flops": spent,
            "deepest": deepest}


def summary(name: str, runs: list[dict[str, float]]) -> dict:
    def pct(key: str) -> list[float]:
        return [round(100 * run[key], 2) for run in runs]

    saved = 1 - runs[0]["flops"] / runs[0]["deepest"]
    return {"plan": name, "val": round(statistics.fmean(pct("val")), 2), "test": round(statistics.fmean(pct("test")), 2),
            "saved": round(saved, 3), "gflops": round(runs[0]["flops"] / 1e9, 1), "val_per_seed": pct("val"),
            "test_per_seed": pct("test")}


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--task", choices=("text", "mnist1d"), default="text")
    parser.add_argument("--grow", nargs="+", default=["3:6@12", "2:4@7:6@13"], help="growth plans: DEPTH[:DEPTH@EPOCH]...")
    parser.add_argument("--order", choices=("top", "interleave"), default="top",
                        help="where the copies go: on top of the blocks, or each after the block it copies")
    parser.add_argument("--blend-epochs", type=non_negative_int, default=0,
                        help="each copy enters blended over this many epochs, as a seed does (0: at once)")
    parser.add_argument("--channels", type=positive_int, default=16,
                        help="the mnist1d host's width (text: the preset's)")
    parser.add_argument("--seeds", type=non_negative_int, nargs="+",
                        help="default: the task's tuning seeds (the evaluation seeds 0-19 confirm a finding)")
    args = parser.parse_args()
    seeds = args.seeds or SEEDS[args.task]
    plans = {text: plan(text, get_task(args.task).epochs) for text in args.grow}
    for text, depths in plans.items():
        if args.order == "interleave" and (problem := interleave_problem(text, depths)):
            raise BadInput(problem)
    torch.set_num_threads(get_task(args.task).cpu_threads)  # as a CPU run of the preset trains
    deepest = max(max(depths.values()) for depths in plans.values())
    plans.setdefault(f"{deepest}", {1: deepest})
    for name, depths in plans.items():
        runs = [train(args.task, seed, depths, args.order, args.blend_epochs, args.channels) for seed in seeds]
        print(json.dumps(summary(name, runs)), flush=True)


if __name__ == "__main__":
    run(main)
