"""The cost of each telemetry profile: epoch time relative to `minimal`, on the default task.

Profiles alternate epoch by epoch (so machine noise hits them alike) on identical grown runs;
prints one JSON object with median epoch seconds per profile and the ratios to minimal.

    .venv/bin/python benchmarks/telemetry.py [--epochs 11]     # ~20 s on 2 cores
"""

import json
import statistics
import time

from overhead import GROWN, esper_epoch

from esper.leyline import RunConfig
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import ListSink, Session, resolve_config
from esper.tolaria.telemetry import PROFILES, SHARPNESS_EVERY
from script import Parser, integer, run, say


def epoch(session: Session) -> float:
    started = time.perf_counter()
    esper_epoch(session)
    return time.perf_counter() - started


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--epochs", type=integer(2), default=11, help="epochs of each profile (the first is not timed)")
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
        say("  ".join(f"{p} {times[p][-1] * 1000:.0f} ms" for p in PROFILES))
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
    run(main)
