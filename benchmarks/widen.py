"""Growth by width, outside the lifecycle: the cnn1d host widened during training against the wide host from the start.

    .venv/bin/python benchmarks/widen.py                                   # ~4 min on one core
    .venv/bin/python benchmarks/widen.py --grow 8:24@9 16:24@13 --init fresh --seeds 100 101

Issue 27's grown-vs-scratch target asks for scratch's accuracy at 25 % less compute. Esper's seeds are residual
branches that spend epochs in TRAINING and BLENDING before they count; a host that grows by width instead gets its
capacity at once, function-preserving, with no lifecycle in between. Whether that would close the gap is cheap to
measure in plain torch, before building blueprints for it: the mnist1d preset's recipe (Adam at the preset's rate,
its batch size, its epochs, the rates annealed as the trainer does), the cnn1d host with `channels=c` for each
width, and at each growth epoch the host is replaced by a wider one computing the same function:

* `split` (Net2Net's wider operation): each new channel copies an existing one, the copies share its outgoing
  weights, and `--noise` (relative, Gaussian) on the outgoing weights breaks their symmetry;
* `fresh`: the new channels are initialised as a new layer's are, with zero outgoing weights.

Adam's moments are carried over to the wider host (a copy's scaled as its gradients are, new units' at zero).
Compute is each epoch's training FLOPs as Esper counts a run's (`esper.tolaria.flops`: a step's forward and
backward pass), summed over the epochs, and `saved` is the share below the widest host trained for every epoch.
Runs on the tuning seeds 100–109 by default: the evaluation seeds stay untouched. Prints one JSON line per growth
plan (the last one the static widest host).
"""

import functools
import json
import statistics

import torch
from torch import nn

from esper.errors import BadInput
from esper.kasmina.hosts import CNN1D, build_host
from esper.tolaria.data import Split, TaskData, load_task_data
from esper.tolaria.flops import _step_flops
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import anneal_scale
from script import TUNING_SEEDS, Parser, non_negative_float, non_negative_int, run


@functools.cache
def step_flops(channels: int) -> float:
    """FLOPs of one training step of a batch of the preset's size on the cnn1d host with `channels` channels, counted
    as Esper counts a run's (on the meta device: nothing is computed)."""
    with torch.device("meta"):
        host = build_host("cnn1d", channels=channels)
    return _step_flops(host, get_task("mnist1d").batch_size)[0]


def convs(host: CNN1D) -> list[nn.Conv1d]:
    return [stage[0] for stage in host.stages]


def widen(host: CNN1D, width: int, init: str, noise: float, generator: torch.Generator,
          optimizer: torch.optim.Adam) -> tuple[CNN1D, torch.optim.Adam]:
    """A cnn1d host of `width` channels computing the same function as `host` (up to `noise`, for `split`), and an
    Adam over it whose moments are the old ones carried over (`split`: a copy's as its original's, scaled as its
    gradients are; new units' moments start at zero)."""
    old = convs(host)[0].out_channels
    wide = CNN1D(channels=width)
    if init == "split":
        source = torch.cat([torch.arange(old), torch.randint(0, old, (width - old,), generator=generator)])
    else:
        source = torch.arange(old)
    copies = torch.bincount(source, minlength=old).float()[source]
    share = 1 / copies  # a split unit's outgoing weights are shared among its copies, and so are its gradients
    layers = [*convs(host), host.head[1]], [*convs(wide), wide.head[1]]
    moved = {}
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(*layers)):
            rows = source if i < 3 else None  # a convolution's output channels; the head's classes stay
            cols = source if i > 0 else None  # the input channels: the previous layer's units
            for name in ("weight", "bias"):
                p_old, p_new = getattr(a, name), getattr(b, name)
                shape = p_new.shape if name == "bias" or i < 3 else (p_new.shape[0], width, -1)
                old_shape = p_old.shape if name == "bias" or i < 3 else (p_old.shape[0], old, -1)
                cols_here = cols if name == "weight" else None
                view = p_new.view(shape)
                if init == "fresh" and cols_here is not None:
                    view[:, old:] = 0  # what the new units feed into starts at zero
                _place(view, p_old.view(old_shape), rows, cols_here, row_scale=None, col_scale=share)
                if init == "split" and cols_here is not None:  # break the symmetry of the copies' outgoing weights
                    spread = (copies > 1).float().view(1, -1, *[1] * (view.dim() - 2))
                    view.mul_(1 + spread * noise * torch.randn(view.shape, generator=generator))
                moved[p_new] = (p_old, old_shape, shape, rows, cols_here)
    wider = torch.optim.Adam(wide.parameters(), lr=optimizer.param_groups[0]["lr"])
    for p_new, (p_old, old_shape, shape, rows, cols) in moved.items():
        state = optimizer.state.get(p_old)
        if not state:
            continue
        carried = {"step": state["step"].clone()}
        for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
            fresh = torch.zeros_like(p_new)
            _place(fresh.view(shape), state[key].view(old_shape), rows, cols, row_scale=share ** power, col_scale=None)
            carried[key] = fresh
        wider.state[p_new] = carried
    return wide, wider


def _place(new: torch.Tensor, old: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None,
           row_scale: torch.Tensor | None, col_scale: torch.Tensor | None) -> None:
    """Write `old`, its rows (dim 0) and columns (dim 1) taken by `rows` and `cols`, into the leading corner of `new`;
    each row times `row_scale`, each column times `col_scale` (where given, and where that dim is taken)."""
    t = old
    if rows is not None:
        t = t[rows]
        if row_scale is not None:
            t = t * row_scale.view(-1, *[1] * (t.dim() - 1))
    if cols is not None:
        t = t[:, cols]
        if col_scale is not None:
            t = t * col_scale.view(1, -1, *[1] * (t.dim() - 2))
    new[tuple(slice(0, n) for n in t.shape)] = t


def accuracy(host: nn.Module, data: TaskData, split: Split) -> float:
    host.eval()
    with torch.no_grad():
        return data.correct(host(split.x), split.y).item() / len(split)


def train(seed: int, widths: dict[int, int], init: str, noise: float) -> dict[str, float]:
    """One run: `widths[e]` is the host's width from epoch `e` on (epoch 1 included)."""
    preset = get_task("mnist1d")
    data = load_task_data("mnist1d", seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    host = CNN1D(channels=widths[1])
    optimizer = torch.optim.Adam(host.parameters(), lr=preset.lr)
    spent = 0
    for epoch in range(1, preset.epochs + 1):
        if epoch > 1 and epoch in widths:
            host, optimizer = widen(host, widths[epoch], init, noise, generator, optimizer)
        for group in optimizer.param_groups:
            group["lr"] = preset.lr * anneal_scale(epoch, preset.epochs, preset.anneal_epochs)
        host.train()
        for x, y in data.batches("train", preset.batch_size, generator):
            loss = data.loss(host(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        spent += step_flops(convs(host)[0].out_channels)
    return {"val": accuracy(host, data, data.val), "test": accuracy(host, data, data.test), "flops": spent}


def plan(text: str, epochs: int) -> dict[int, int]:
    """`8:24@9` (8 channels, 24 from epoch 9 on) or `8:16@6:24@11` as {epoch: width} (or depth, benchmarks/stack.py),
    for runs of `epochs` epochs. `BadInput` for a plan no run can follow: sizes below 1 or shrinking, growth epochs
    not rising within 2..`epochs` (epoch 1 is the start; one past the last would never come)."""
    first, *steps = text.split(":")
    try:
        sizes = {1: int(first)}
        for step in steps:
            size, at, epoch = step.partition("@")
            if not at:
                raise ValueError
            if int(epoch) <= max(sizes):
                raise BadInput(f"--grow {text}: its growth epochs must rise, each within 2..{epochs} (epoch 1 is "
                               "the start)")
            sizes[int(epoch)] = int(size)
    except ValueError:
        raise BadInput(f"--grow {text}: give SIZE[:SIZE@EPOCH]..., e.g. 8:24@9 (8, then 24 from epoch 9 on)") from None
    grown = list(sizes.values())
    if min(grown) < 1 or any(b < a for a, b in zip(grown, grown[1:])):
        raise BadInput(f"--grow {text}: sizes must be at least 1 and never shrink")
    if max(sizes) > epochs:
        raise BadInput(f"--grow {text}: epoch {max(sizes)} is past the runs' last ({epochs}), so it would never grow")
    return sizes


def summary(name: str, runs: list[dict[str, float]], widest: int, epochs: int) -> dict:
    def pct(key: str) -> list[float]:
        return [round(100 * run[key], 2) for run in runs]

    saved = 1 - runs[0]["flops"] / (epochs * step_flops(widest))
    spread = round(statistics.stdev(pct("val")), 2) if len(runs) > 1 else None
    return {"plan": name, "val": round(statistics.fmean(pct("val")), 2), "val_sd": spread,
            "test": round(statistics.fmean(pct("test")), 2), "saved": round(saved, 3), "val_per_seed": pct("val")}


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--grow", nargs="+", default=["8:24@9", "16:24@13", "16:24@6"],
                        help="growth plans: WIDTH[:WIDTH@EPOCH]...")
    parser.add_argument("--init", choices=("split", "fresh"), default="split")
    parser.add_argument("--noise", type=non_negative_float, default=0.3,
                        help="relative noise on a split copy's outgoing weights")
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=TUNING_SEEDS,
                        help="default: the tuning seeds 100-109 (the evaluation seeds 0-19 confirm a finding)")
    args = parser.parse_args()
    epochs = get_task("mnist1d").epochs
    plans = {text: plan(text, epochs) for text in args.grow}
    torch.set_num_threads(1)  # as a CPU run of the preset trains
    widest = max(max(widths.values()) for widths in plans.values())
    plans[f"{widest}"] = {1: widest}
    for name, widths in plans.items():
        runs = [train(seed, widths, args.init, args.noise) for seed in args.seeds]
        print(json.dumps(summary(name, runs, widest, epochs)), flush=True)


if __name__ == "__main__":
    run(main)
