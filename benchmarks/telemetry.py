"""The cost of each telemetry profile: epoch time relative to `minimal`, on the default task.

Profiles alternate epoch by epoch (so machine noise hits them alike) on identical grown runs;
prints one JSON object with median epoch seconds per profile and the ratios to minimal.

    .venv/bin/python benchmarks/telemetry.py [--epochs 11]
"""

import argparse
import json
import statistics
import sys
import time

from esper.leyline import RunConfig, Wait
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import ListSink, Session, resolve_config
from esper.tolaria.telemetry import PROFILES, SHARPNESS_EVERY

GROWN = [("early", "conv_light"), ("mid", "conv_heavy"), ("late", "depthwise")]


def epoch(session: Session) -> float:
    started = time.perf_counter()
    session.begin_epoch()
    trainer = session.trainer
    for x, y in trainer.data.batches("train", trainer.preset.batch_size, trainer.generator):
        trainer.train_step(x, y)
    session.end_epoch()
    session.decide(Wait(), "static")
    session.settle()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=11)
    args = parser.parse_args()
    data = None
    sessions = {}
    for profile in PROFILES:
        config = resolve_config(RunConfig(controller="static", epochs=args.epochs, telemetry=profile, architecture=GROWN))
        data = data or load_task_data(config.task, config.data_seed)
        sessions[profile] = Session(config, ListSink(), data=data)
    times: dict[str, list[float]] = {p: [] for p in PROFILES}
    for _ in range(args.epochs):
        for profile, session in sessions.items():
            times[profile].append(epoch(session))
        print("  ".join(f"{p} {times[p][-1] * 1000:.0f} ms" for p in PROFILES), file=sys.stderr)
    # Skip the first epoch (warm-up); the diagnostic profile's mean includes its sharpness epochs.
    median = {p: statistics.median(t[1:]) for p, t in times.items()}
    mean = {p: statistics.fmean(t[1:]) for p, t in times.items()}
    print(json.dumps({
        "epoch_s_median": {p: round(v, 5) for p, v in median.items()},
        "epoch_s_mean": {p: round(v, 5) for p, v in mean.items()},
        "ratio_to_minimal_mean": {p: round(mean[p] / mean["minimal"], 3) for p in PROFILES},
        "sharpness_every_epochs": SHARPNESS_EVERY,
    }))


if __name__ == "__main__":
    main()
