"""Esper's loop vs a plain PyTorch loop over the same grown model: the cost of the engine; and the cost of
a training seed's isolation on a model that is not a chain.

Case `mnist1d` (default): a grown mnist1d model (host + fossilized seeds) trains epochs two ways, alternating:
* plain: `for x, y in batches: loss.backward(); opt.step()` and one validation pass;
* esper: a `Session` epoch: lifecycle tick, `train_step`s, measurements (`EpochEnded`), a controller
  decision, and the epoch's events appended to a real DuckDB store.
Prints one JSON object: median epoch seconds of each and their ratio (target ≤ 1.05).

Case `resnet18`: torchvision's resnet18 grown with `esper.grow` (slots after layer1-3) takes training steps
as the trainer takes them, alternating: the host alone, and the host with a TRAINING seed in layer2, whose
isolated pass reruns the whole model (resnet18 is no chain). The same again on the built-in `resnet` host (a
chain) with the shortcut (only the layers after the slot) and without it. Prints one JSON object: median
step seconds and the ratios `isolation_ratio` (with a training seed / host alone) and `shortcut_ratio`
(shortcut / whole pass).

    .venv/bin/python benchmarks/overhead.py [--epochs 30]      # ~30 s on 2 cores
    .venv/bin/python benchmarks/overhead.py --case resnet18 [--steps 12] [--threads 1]
"""

import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from esper.kasmina import build_host, grow
from esper.leyline import RunConfig, Wait
from esper.store import Recorder
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import Session, StoreSink, resolve_config
from script import Parser, integer, non_negative_int, positive_int, run, say

GROWN = [("early", "conv_light"), ("mid", "conv_heavy"), ("late", "depthwise")]
"""The grown mnist1d model the engine's costs are measured on (here, in checkpoint.py and telemetry.py)."""


def plain_epoch(model, optimizer, data, batch_size, generator) -> float:
    model.train()
    for x, y in data.batches("train", batch_size, generator):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum() for x, y in data.batches("val", 1024))
    model.train()
    return float(correct)


def esper_epoch(session: Session) -> None:
    """One epoch of a `Session` as a run trains it, the controller waiting."""
    session.begin_epoch()
    trainer = session.trainer
    for x, y in trainer.data.batches("train", trainer.preset.batch_size, trainer.generator):
        trainer.train_step(x, y)
    session.end_epoch()
    session.decide(Wait(), "static")
    session.settle()


def train_step(model, host_opt, seed_opt, x, y, shortcut: bool = True) -> None:
    """`Trainer.train_step`'s work: the host's step, and each training seed's isolated pass and step."""
    loss = F.cross_entropy(model(x), y)
    host_opt.zero_grad(set_to_none=True)
    loss.backward()
    for sid in model.training_seeds():
        params = model.seed_parameters(sid)
        isolated = F.cross_entropy(model.isolated_output(sid, x, shortcut=shortcut), y)
        for p, g in zip(params, torch.autograd.grad(isolated, params)):
            p.grad = g
        seed_opt.step()
    host_opt.step()


def timed_pair(plain, seeded, x, y, steps: int, shortcut=(True, True)) -> tuple[float, float]:
    """Median step seconds of two models (each with its optimizers), alternating step by step."""
    times: tuple[list[float], list[float]] = ([], [])
    for step in range(steps + 1):
        for (model, host_opt, seed_opt), cut, out in zip((plain, seeded), shortcut, times):
            t = time.perf_counter()
            train_step(model, host_opt, seed_opt, x, y, shortcut=cut)
            out.append(time.perf_counter() - t)
    return statistics.median(times[0][1:]), statistics.median(times[1][1:])


def with_optimizers(model, seed_id: str | None):
    if seed_id is not None:
        model.start_training(seed_id)
    seed = model.seed_parameters(seed_id) if seed_id is not None else [torch.zeros(1, requires_grad=True)]
    return model, torch.optim.SGD(model.host_parameters(), lr=0.01, momentum=0.9), torch.optim.SGD(seed, lr=0.01)


def resnet18_case(steps: int, batch: int) -> dict:
    import torchvision  # here: the mnist1d case (and checkpoint.py, telemetry.py, which import this) needs none

    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    host = grow(torchvision.models.resnet18(num_classes=10), ["layer1", "layer2", "layer3"], example=x[:2])
    seeded = copy.deepcopy(host)
    seeded.germinate("layer2", "s", "conv_light")
    host_s, seed_s = timed_pair(with_optimizers(host, None), with_optimizers(seeded, "s"), x, y, steps)
    chain = build_host("resnet")
    chain.germinate("mid", "s", "conv_light")
    twin = copy.deepcopy(chain)
    cut_s, whole_s = timed_pair(with_optimizers(chain, "s"), with_optimizers(twin, "s"), x, y, steps, (True, False))
    return {
        "case": "resnet18", "batch": batch, "threads": torch.get_num_threads(), "steps_timed": steps,
        "host_step_s": round(host_s, 4), "training_seed_step_s": round(seed_s, 4),
        "isolation_ratio": round(seed_s / host_s, 3),
        "chain_host": "resnet", "chain_shortcut_step_s": round(cut_s, 4), "chain_whole_pass_step_s": round(whole_s, 4),
        "shortcut_ratio": round(cut_s / whole_s, 3),
    }


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--case", choices=("mnist1d", "resnet18"), default="mnist1d")
    parser.add_argument("--epochs", type=integer(2), default=30, help="Epochs of each loop (the first is not timed).")
    parser.add_argument("--steps", type=positive_int, default=12, help="Timed steps of each model (case resnet18).")
    parser.add_argument("--batch", type=integer(2), default=32,
                        help="Batch size (case resnet18; batch norm trains on 2 examples at least).")
    parser.add_argument("--threads", type=non_negative_int, default=0, help="Torch CPU threads (0: torch's default).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case == "resnet18":
        print(json.dumps(resnet18_case(args.steps, args.batch)))
        return
    config = resolve_config(RunConfig(controller="static", epochs=args.epochs * 2, architecture=GROWN))
    data = load_task_data(config.task, config.data_seed)
    with tempfile.TemporaryDirectory() as tmp, Recorder(Path(tmp) / "overhead.duckdb") as recorder:
        session = Session(config, StoreSink(recorder, "overhead"), data=data)
        trainer = session.trainer
        # The plain loop trains a copy of the very same modules with the same optimizer settings.
        plain_model = copy.deepcopy(trainer.model)
        plain_opt = torch.optim.Adam(plain_model.parameters(), lr=trainer.preset.lr)
        generator = torch.Generator().manual_seed(1)
        plain, engine = [], []
        for _ in range(args.epochs):
            t = time.perf_counter()
            plain_epoch(plain_model, plain_opt, trainer.data, trainer.preset.batch_size, generator)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            esper_epoch(session)
            engine.append(time.perf_counter() - t)
            say(f"plain {plain[-1] * 1000:.1f} ms   esper {engine[-1] * 1000:.1f} ms")
    plain_s, esper_s = statistics.median(plain[1:]), statistics.median(engine[1:])
    print(json.dumps({
        "model_params": trainer.model.param_count(),
        "epochs_timed": args.epochs - 1,
        "plain_epoch_s": round(plain_s, 5),
        "esper_epoch_s": round(esper_s, 5),
        "overhead_ratio": round(esper_s / plain_s, 4),
        "target_ratio": 1.05,
    }))


if __name__ == "__main__":
    run(main)
