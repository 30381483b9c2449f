"""Esper's loop vs a plain PyTorch loop over the same grown model: the cost of the engine.

A grown mnist1d model (host + fossilized seeds) trains epochs two ways, alternating:
* plain: `for x, y in batches: loss.backward(); opt.step()` and one validation pass;
* esper: a `Session` epoch: lifecycle tick, `train_step`s, measurements (`EpochEnded`), a controller
  decision, and the epoch's events appended to a real DuckDB store.
Prints one JSON object: median epoch seconds of each and their ratio (target ≤ 1.05).

    .venv/bin/python benchmarks/overhead.py [--epochs 30]
"""

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from esper.leyline import RunConfig, Wait
from esper.store import Recorder
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import Session, StoreSink, resolve_config

GROWN = [("early", "conv_light"), ("mid", "conv_heavy"), ("late", "depthwise")]


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
    session.begin_epoch()
    trainer = session.trainer
    for x, y in trainer.data.batches("train", trainer.preset.batch_size, trainer.generator):
        trainer.train_step(x, y)
    session.end_epoch()
    session.decide(Wait(), "static")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
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
            print(f"plain {plain[-1] * 1000:.1f} ms   esper {engine[-1] * 1000:.1f} ms", file=sys.stderr)
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
    main()
