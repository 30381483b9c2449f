"""Ray against one process, on mnist1d: PPO's rollouts (`--workers`) and many seeds at once (`esper run --seeds`).

Rollouts: the same PPO job (`--episodes` episodes of `--epochs` epochs, `--n-envs` in lock-step, one update per
n-envs episodes) runs with 1 worker (here, no Ray) and with `--workers` Ray workers, alternating, `--repeats` times,
each into a fresh workspace. Reported: median wall seconds of the whole job (Ray's start and its workers' first
torch import included) and median environment-steps/s of its rollouts (PPO's own `env_steps_per_s`, mean over the
job's updates). `busy_share` says where the Ray job's rollouts lose time: the share of each update the workers
spend playing episodes (from the episodes' event timestamps); an update waits for its last episode, so with
`--n-envs` episodes of unequal length over `--workers` workers some worker idles at the end of most updates.
Seeds: `--seeds` runs of the task preset (`--seed-epochs`, 0: its budget) trained one after another in this
process, then fanned out on Ray (`esper.app.seeds`, Ray's start included), `--repeats` times (`speedup`: no
interpreter start or data generation is counted on either side). Then as a user runs them, as commands: `esper run
--seed S` for each seed one after another, against one `esper run --seeds 0-N` (`speedup_commands`: each command
starts Python, imports torch and makes its data). Every speedup is the median over the repeats of each repeat's own
ratio: its two jobs ran back to back, on the machine as it was then.
A CPU run trains on one thread, so on a machine with c idle cores both should approach min(c, workers) times
faster, less Ray's start-up (`ray_start_s`, measured alone). What the cores give this work is measured too:
`run_scaling` is how many times one process's throughput `--workers` plain processes reach (spawned, no Ray), each
training one run of the preset (`--seed-epochs`) at once, against one such run alone. It is the ceiling of both
speedups here: below `--workers` where the cores share caches, memory bandwidth or a clock that drops when both are
busy, or where the host lends its cores to others. `*_of_run_scaling` is a speedup over it, the share of the
machine's parallelism Ray turns into speed. The load average of the machine before and after says how idle its
cores were. Prints one JSON object.

    .venv/bin/python benchmarks/workers.py [--workers 2] [--episodes 16] [--n-envs 4] [--epochs 10] [--seeds 4]
                                           [--seed-epochs 0] [--repeats 2] [--only rollouts|seeds]
"""

import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import msgspec

from esper.app import runs
from esper.app import seeds as fanout
from esper.simic.ppo import PPOConfig, train
from esper.store import Workspace
from esper.tolaria import cluster
from script import Parser, non_negative_int, positive_int, run, say


def ppo_job(cfg: PPOConfig) -> tuple[float, float, float | None]:
    """Wall seconds of one PPO job, its rollouts' environment-steps/s (mean over its updates' `PolicyUpdated`) and,
    on Ray, its workers' busy share (`busy_share`)."""
    with tempfile.TemporaryDirectory(prefix="esper-workers-bench-") as tmp:
        ws = Workspace.at(tmp)
        started = time.perf_counter()
        result = train(cfg, Path(tmp) / "ppo.pt", ws)
        wall = time.perf_counter() - started
        with ws.reader() as reader:
            rates = reader.con.execute(
                "SELECT (payload->'$.stats'->>'env_steps_per_s')::DOUBLE FROM events "
                "WHERE type = 'PolicyUpdated' AND run_id = ?", [result["learner"]]).fetchall()
            spans = reader.con.execute(
                "SELECT regexp_extract(run_id, '-u([0-9]+)-e', 1), epoch_us(min(ts)), epoch_us(max(ts)) FROM events "
                "WHERE regexp_matches(run_id, ?) GROUP BY run_id",
                ["^" + result["runs"].removesuffix("*") + "[0-9]+-e[0-9]+$"]).fetchall()
        busy = busy_share(spans, cfg.workers) if cfg.workers > 1 else None
        return wall, statistics.mean(rate for rate, in rates), busy


def busy_share(spans: list[tuple[str, int, int]], workers: int) -> float:
    """How much of each update's rollout time the workers spent playing episodes: the episodes' own spans (first to
    last event, microseconds) summed, over `workers` times each update's span (its first episode's start to its last
    one's end). 1.0: no worker waited; below it, the share lost to workers idling while an update's last episodes
    finish (an update waits for all of them) and between one episode and the next."""
    updates: dict[str, list[tuple[int, int]]] = {}
    for update, first, last in spans:
        updates.setdefault(update, []).append((first, last))
    episodes = sum(last - first for runs in updates.values() for first, last in runs)
    windows = sum(max(last for _, last in runs) - min(first for first, _ in runs) for runs in updates.values())
    return episodes / (workers * windows)


def seeds_job(seeds: list[int], epochs: int, on_ray: bool) -> float:
    """Wall seconds to train `seeds` runs of mnist1d: fanned out on Ray, or one after another here."""
    with tempfile.TemporaryDirectory(prefix="esper-seeds-bench-") as tmp:
        ws = Workspace.at(tmp)
        planned = fanout.plan_seeds(runs.RunRequest(epochs=epochs, telemetry="minimal"), seeds, ws)
        started = time.perf_counter()
        if on_ray:
            fanout.train_seeds(planned, ws)
        else:  # what `esper run --seed S` does for each, in one process (no interpreter start, data loaded once)
            for p in planned:
                runs.start(attrs.evolve(p, data=planned[0].data), ws)
        return time.perf_counter() - started


def commands_job(seeds: list[int], epochs: int, fanned_out: bool) -> float:
    """Wall seconds of the `esper run` commands that train `seeds`: one per seed in turn, or one `--seeds` command."""
    budget = ["--epochs", str(epochs)] if epochs else []
    if fanned_out:
        commands = [["--seeds", ",".join(map(str, seeds))]]
    else:
        commands = [["--seed", str(s)] for s in seeds]
    with tempfile.TemporaryDirectory(prefix="esper-seeds-bench-") as tmp:
        started = time.perf_counter()
        for options in commands:
            subprocess.run([sys.executable, "-m", "esper", "run", *options, *budget], check=True,
                           env=os.environ | {"ESPER_WORKSPACE": tmp}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


def one_run_s(seed: int, epochs: int) -> float:
    """Seconds one run of the preset trains in this process, as one `--seeds` task does."""
    return seeds_job([seed], epochs, on_ray=False)


def run_scaling(processes: int, epochs: int, repeats: int) -> float:
    """How many times one process's throughput `processes` processes reach, each training one run at once (median
    over `repeats`, each alone then together; the processes warm up on a first run, untimed)."""
    ratios = []
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.starmap(one_run_s, [(seed, 1) for seed in range(processes)], chunksize=1)
        for _ in range(repeats):
            alone = pool.apply(one_run_s, (0, epochs))
            together = pool.starmap(one_run_s, [(seed, epochs) for seed in range(processes)], chunksize=1)
            ratios.append(processes * alone / max(together))
    return round(statistics.median(ratios), 2)


def ray_start_s() -> float:
    """Seconds to start a local Ray and shut it down again, alone."""
    started = time.perf_counter()
    with cluster.connected("the benchmark"):
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--episodes", type=positive_int, default=16)
    parser.add_argument("--n-envs", type=positive_int, default=4)
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--seed-epochs", type=non_negative_int, default=0,
                        help="epochs of each seed's run (0: the preset's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=("rollouts", "seeds"), default=None, help="measure this part alone")
    args = parser.parse_args()
    if problem := arguments_problem(args):
        parser.error(problem)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "load_before": os.getloadavg()[0],
              "ray_start_s": round(ray_start_s(), 2),
              "run_scaling": run_scaling(args.workers, args.seed_epochs, args.repeats)}
    say(f"{args.workers} processes reach {report['run_scaling']} times one's throughput, each training a run")
    if args.only in (None, "rollouts"):
        report["rollouts"] = rollouts(args)
        report["rollouts"]["speedup_rollouts_of_run_scaling"] = round(
            report["rollouts"]["speedup_rollouts"] / report["run_scaling"], 2)
    if args.only in (None, "seeds"):
        report["seeds"] = fan_out(args)
        for key in ("speedup", "speedup_commands"):
            report["seeds"][f"{key}_of_run_scaling"] = round(report["seeds"][key] / report["run_scaling"], 2)
    report["load_after"] = os.getloadavg()[0]
    print(json.dumps(report))


def arguments_problem(args) -> str | None:
    """Why the benchmark cannot measure what it was asked to (None if it can), said before Ray starts: each speedup is
    Ray's `--workers` against one process in the same repeat, and the medians need a repeat and a seed at least. (The
    other counts' types refuse what is below their least as they are parsed.)"""
    if args.workers < 2:
        return f"--workers is the Ray side compared with one process: give 2 or more, got {args.workers}"
    if args.repeats < 1 or args.seeds < 1:
        return f"--repeats and --seeds must be at least 1, got {args.repeats} and {args.seeds}"
    return None


def rollouts(args) -> dict:
    base = PPOConfig(episodes=args.episodes, n_envs=args.n_envs, epochs=args.epochs)
    measured: dict[int, list[tuple[float, float]]] = {1: [], args.workers: []}
    busy: list[float] = []
    for r in range(args.repeats):
        for workers in measured:
            wall, rate, share = ppo_job(msgspec.structs.replace(base, workers=workers))
            measured[workers].append((wall, rate))
            busy += [share] if share is not None else []
            say(f"rollouts, repeat {r + 1}: {workers} worker(s) {wall:6.1f} s, {rate:5.2f} env-steps/s"
                + (f", workers busy {share:.0%} of each update" if share is not None else ""))
    out = {"episodes": args.episodes, "n_envs": args.n_envs, "epochs": args.epochs, "repeats": args.repeats}
    for workers, rows in measured.items():
        out[f"workers_{workers}"] = {"job_s": round(statistics.median(w for w, _ in rows), 2),
                                     "env_steps_per_s": round(statistics.median(r for _, r in rows), 3)}
    pairs = list(zip(measured[1], measured[args.workers]))  # each repeat's two jobs ran back to back
    out["speedup_job"] = round(statistics.median(a[0] / b[0] for a, b in pairs), 2)
    out["speedup_rollouts"] = round(statistics.median(b[1] / a[1] for a, b in pairs), 2)
    out["busy_share"] = round(statistics.median(busy), 3)
    return out


def fan_out(args) -> dict:
    seeds = list(range(args.seeds))
    jobs = {"sequential": lambda: seeds_job(seeds, args.seed_epochs, on_ray=False),
            "ray": lambda: seeds_job(seeds, args.seed_epochs, on_ray=True),
            "commands_sequential": lambda: commands_job(seeds, args.seed_epochs, fanned_out=False),
            "commands_seeds": lambda: commands_job(seeds, args.seed_epochs, fanned_out=True)}
    measured: dict[str, list[float]] = {way: [] for way in jobs}
    for r in range(args.repeats):
        for way, job in jobs.items():
            wall = job()
            measured[way].append(wall)
            say(f"seeds 0-{seeds[-1]}, repeat {r + 1}: {way} {wall:6.1f} s")
    out = {"seeds": f"0-{seeds[-1]}", "epochs": args.seed_epochs or "preset", "repeats": args.repeats}
    out |= {f"{way}_s": round(statistics.median(walls), 2) for way, walls in measured.items()}
    out["speedup"] = paired_speedup(measured["sequential"], measured["ray"])
    out["speedup_commands"] = paired_speedup(measured["commands_sequential"], measured["commands_seeds"])
    return out


def paired_speedup(baseline: list[float], faster: list[float]) -> float:
    """The median over repeats of baseline / faster seconds, each repeat's pair measured back to back."""
    return round(statistics.median(a / b for a, b in zip(baseline, faster)), 2)


if __name__ == "__main__":
    run(main)
