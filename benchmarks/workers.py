"""PPO's rollouts in one process vs split over worker processes (`PPOConfig.workers`), on mnist1d.

The same PPO job (`--episodes` episodes of `--epochs` epochs, `--n-envs` in lock-step, one update per
n-envs episodes) runs with 1 worker and with `--workers` workers, alternating, `--repeats` times, each into
a fresh workspace. Prints one JSON object: median wall seconds of the whole job (worker start-up included)
and median environment-steps/s of its rollouts (PPO's own `env_steps_per_s`), per worker count, and the
speed-ups over one process. A CPU run trains on one thread, so on a machine with c idle cores the rollouts
should approach min(c, workers, n-envs) times faster.

    .venv/bin/python benchmarks/workers.py [--workers 2] [--episodes 8] [--n-envs 4] [--epochs 10] [--repeats 2]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from esper.simic.ppo import PPOConfig, train
from esper.store import Workspace


def job(cfg: PPOConfig) -> tuple[float, float]:
    """Wall seconds of one PPO job and its rollouts' environment-steps/s (mean over its updates' `PolicyUpdated`)."""
    with tempfile.TemporaryDirectory(prefix="esper-workers-bench-") as tmp:
        ws = Workspace.at(tmp)
        started = time.perf_counter()
        result = train(cfg, Path(tmp) / "ppo.pt", ws)
        wall = time.perf_counter() - started
        with ws.reader() as reader:
            rates = reader.con.execute(
                "SELECT (payload->'$.stats'->>'env_steps_per_s')::DOUBLE FROM events "
                "WHERE type = 'PolicyUpdated' AND run_id = ?", [result["learner"]]).fetchall()
        return wall, statistics.mean(rate for rate, in rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    base = PPOConfig(episodes=args.episodes, n_envs=args.n_envs, epochs=args.epochs)
    measured: dict[int, list[tuple[float, float]]] = {1: [], args.workers: []}
    for r in range(args.repeats):
        for workers in measured:
            wall, rate = job(msgspec.structs.replace(base, workers=workers))
            measured[workers].append((wall, rate))
            print(f"repeat {r + 1}: {workers} worker(s) {wall:6.1f} s, {rate:5.2f} env-steps/s", file=sys.stderr, flush=True)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "episodes": args.episodes,
              "n_envs": args.n_envs, "epochs": args.epochs, "repeats": args.repeats}
    for workers, rows in measured.items():
        report[f"workers_{workers}"] = {"job_s": round(statistics.median(w for w, _ in rows), 2),
                                        "env_steps_per_s": round(statistics.median(r for _, r in rows), 3)}
    one, many = report["workers_1"], report[f"workers_{args.workers}"]
    report["speedup_job"] = round(one["job_s"] / many["job_s"], 2)
    report["speedup_rollouts"] = round(many["env_steps_per_s"] / one["env_steps_per_s"], 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
