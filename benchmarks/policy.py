"""Learned gardeners vs the rule-based one on mnist1d: PPO within a time budget, IQL from logs.

1. datasets: `--dataset-runs` heuristic runs (seeds 100…; its knobs `--dataset-heuristic KEY=VALUE`, default
   none) and as many random runs (seeds 200…), the two controllers in two processes at once; IQL trains on
   them (`--iql-steps`);
2. PPO trains on mnist1d (its runs use seeds ≥ 1000; each update's episodes split over `--workers`
   processes) until `--minutes` have passed: from scratch
   (`--ppo-init scratch`, the budget starts after IQL) or from the IQL policy (`--ppo-init iql`, the
   budget pays for the dataset and IQL too);
3. the greedy PPO policy, the same policy sampling (controller `sampled`, seeded by the run), the greedy
   IQL policy, the heuristic and static train full runs on `--eval-seeds` (never used in training; in
   `--workers` processes) and
   report mean final test and validation accuracy and params. With `--max-params N`, PPO's runs and the
   learned policies' evaluation runs refuse growth beyond N parameters; the heuristic, the target, runs
   without it (and once more with it, as `heuristic_capped`). With `--select-every N`, "PPO" is the policy
   PPO's checkpoint selection kept (the best greedy return on its own training-range runs), not the last one.
Prints one JSON object. The target: greedy PPO at least as accurate as the heuristic with no more parameters.
A default run takes its 20 minutes of PPO, and on top the IQL dataset (40 runs), IQL and the evaluation runs.

    .venv/bin/python benchmarks/policy.py [--minutes 20] [--ppo-init iql] [--param-budget 6000 --reward-params 1.0]
                                          [--max-params 6287] [--workspace DIR]
"""

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import msgspec

from esper.app.learners import iql_job, ppo_job
from esper.leyline import HeuristicConfig, LifecycleConfig, RunConfig
from esper.leyline.config import from_knobs
from esper.simic.config import IQLConfig, PPOConfig
from esper.simic.iql import check as check_iql
from esper.simic.ppo import check_config as check_ppo  # what ppo_job checks first, here before the dataset and IQL
from esper.simic.rewards import RewardConfig
from esper.store import Recorder, Workspace
from esper.tamiyo.controllers import make_controller
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import StoreSink, execute, resolve_config
from script import Parser, integers, non_negative_int, positive_float, positive_int, run, say


def evaluate(name: str, controller: str, seeds: list[int], root: str, policy: str | None = None,
             max_params: int = 0) -> dict:
    """Full runs of `controller` (with `policy` for `policy` and `sampled`) on `seeds`, stored as `eval-{name}-…`
    in the workspace at `root` (a worker process)."""
    ws, data, rows = Workspace.at(root), load_task_data("mnist1d", RunConfig().data_seed), []
    with Recorder(ws.store_path(f"eval-{name}")) as recorder:
        for seed in seeds:
            config = resolve_config(RunConfig(controller=controller, seed=seed, policy=policy,
                                              lifecycle=LifecycleConfig(max_params=max_params)))
            result = execute(config, make_controller(controller, seed, policy), StoreSink(recorder, f"eval-{name}-{seed}"),
                             data=data)
            rows.append({"seed": seed, "test_accuracy": result.test_accuracy, "val_accuracy": result.val_accuracy,
                         "params": result.params, "seeds": result.seeds})
            say(f"  {name:<11} seed {seed}: test {result.test_accuracy * 100:5.1f}%  val {result.val_accuracy * 100:5.1f}%  "
                f"params {result.params:,}")
    return {
        "test_accuracy": round(statistics.mean(r["test_accuracy"] for r in rows), 4),
        "val_accuracy": round(statistics.mean(r["val_accuracy"] for r in rows), 4),
        "params": round(statistics.mean(r["params"] for r in rows), 1),
        "per_seed": rows,
    }


def record_runs(root: str, controller: str, seeds: range, heuristic: HeuristicConfig) -> None:
    """Full runs of `controller` (the heuristic with the knobs `heuristic`) on `seeds` into the workspace's
    `dataset-{controller}` store file (a worker process)."""
    ws, data = Workspace.at(root), load_task_data("mnist1d", RunConfig().data_seed)
    with Recorder(ws.store_path(f"dataset-{controller}")) as recorder:
        for seed in seeds:
            config = resolve_config(RunConfig(controller=controller, seed=seed, heuristic=heuristic))
            execute(config, make_controller(controller, seed, heuristic=heuristic),
                    StoreSink(recorder, f"data-{controller}-{seed}"), data=data)
    say(f"  dataset: {len(seeds)} {controller} runs")


def make_dataset(ws: Workspace, runs: int, heuristic: HeuristicConfig) -> float:
    """The heuristic's runs (seeds 100...) and the random controller's (seeds 200...), in two processes at once:
    a mnist1d run trains on one thread, so this takes half the time on two cores."""
    started = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that has started torch's threads
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as pool:
        jobs = [pool.submit(record_runs, str(ws.root), controller, range(base, base + runs), heuristic)
                for controller, base in (("heuristic", 100), ("random", 200))]
        for job in jobs:
            job.result()
    return time.perf_counter() - started


def train_iql_policy(ws: Workspace, runs: int, heuristic: HeuristicConfig, iql_cfg: IQLConfig) -> tuple[str, dict]:
    """Record the heuristic's (with the knobs `heuristic`) and the random controller's datasets, `runs` each, and
    train IQL on them; the policy file and a report."""
    say("IQL dataset ...")
    dataset_s = make_dataset(ws, runs, heuristic)
    started = time.perf_counter()
    path = ws.root / "iql.pt"
    result = iql_job(iql_cfg, path, ws, "controller IN ('heuristic', 'random') AND seed >= 100", progress=say)
    return str(path), {"runs": result["runs"], "transitions": result["transitions"], "steps": iql_cfg.steps,
                       "dataset_heuristic": msgspec.to_builtins(heuristic),
                       "minutes": round((time.perf_counter() - started) / 60, 2), "dataset_minutes": round(dataset_s / 60, 2)}


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--minutes", type=positive_float, default=20.0, help="the whole budget of PPO's training (with "
                        "--ppo-init iql it also pays for the IQL dataset and IQL's training)")
    parser.add_argument("--ppo-init", choices=("scratch", "iql"), default="scratch",
                        help="start PPO from a fresh policy, or from the IQL policy trained first")
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="processes that play PPO's episodes (PPOConfig.workers; "
                        "a run trains on one thread, so the machine's cores)")
    parser.add_argument("--seed", type=int, default=0, help="PPO's seed (its initialisation, sampling and run seeds)")
    parser.add_argument("--shared-baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="advantages relative to the update's other runs at the same epoch (PPOConfig.shared_baseline)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--critic-warmup", type=int, default=0, help="first PPO updates that train only the critic")
    parser.add_argument("--ent-coef", type=float, default=0.01)
    parser.add_argument("--init-temperature", type=float, default=1.0,
                        help="with --ppo-init iql: divide the IQL policy's logits by this (PPOConfig.init_temperature)")
    parser.add_argument("--reward-params", type=float, default=RewardConfig().params)
    parser.add_argument("--reward-contribution", type=float, default=RewardConfig().contribution)
    parser.add_argument("--param-budget", type=int, default=RewardConfig().param_budget,
                        help="parameters that cost nothing; --reward-params charges growth beyond them (0: none)")
    parser.add_argument("--max-params", type=non_negative_int, default=0,
                        help="hard cap on the size of PPO's runs and of the learned policies' evaluation runs; the "
                        "heuristic is evaluated without it, and again with it")
    parser.add_argument("--select-every", type=int, default=0, help="PPO's checkpoint selection: score the greedy "
                        "policy every N updates and evaluate the best (PPOConfig.select_every; 0: the last update's)")
    parser.add_argument("--select-runs", type=int, default=4, help="training-range runs that score the greedy policy")
    parser.add_argument("--eval-seeds", type=integers(0), default="0,1,2,3,4", help="comma-separated: 0,1,2,3,4")
    parser.add_argument("--dataset-runs", type=positive_int, default=20,
                        help="heuristic runs, and as many random runs, for IQL")
    parser.add_argument("--dataset-heuristic", action="append", default=[], metavar="KEY=VALUE",
                        help="a knob of the heuristic whose runs join IQL's dataset (repeatable; e.g. min_gain=1.0: "
                        "germinate once warmed up, not on a plateau). The heuristic evaluated is always the default")
    parser.add_argument("--iql-steps", type=int, default=5000)
    parser.add_argument("--skip-iql", action="store_true", help="with --ppo-init scratch: no IQL at all")
    parser.add_argument("--workspace", default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    if args.ppo_init == "iql" and args.skip_iql:
        parser.error("--skip-iql goes with --ppo-init scratch: --ppo-init iql starts PPO from the IQL policy")
    # every setting checked here, before the dataset, IQL or PPO starts: bad ones stop the benchmark at once
    args.dataset_heuristic = from_knobs(HeuristicConfig, args.dataset_heuristic, "--dataset-heuristic")
    rewards = RewardConfig(params=args.reward_params, contribution=args.reward_contribution,
                           param_budget=args.param_budget)
    iql_cfg = IQLConfig(steps=args.iql_steps, reward=rewards, log_every=1000)
    ppo_cfg = PPOConfig(seed=args.seed, n_envs=args.n_envs, episodes=100_000, learning_rate=args.lr,
                        ent_coef=args.ent_coef, reward=rewards, shared_baseline=args.shared_baseline,
                        critic_warmup=args.critic_warmup, init_temperature=args.init_temperature,
                        max_params=args.max_params, select_every=args.select_every, select_runs=args.select_runs,
                        workers=args.workers)
    if args.ppo_init == "iql" or not args.skip_iql:  # the condition IQL runs under, below
        check_iql(iql_cfg)
    check_ppo(ppo_cfg)
    seeds = args.eval_seeds
    tmp = tempfile.TemporaryDirectory(prefix="esper-policy-bench-")
    ws = Workspace.at(args.workspace or tmp.name)
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "eval_seeds": seeds,
                    "reward": msgspec.to_builtins(rewards)}

    started = time.perf_counter()
    iql_path = None
    if args.ppo_init == "iql" or not args.skip_iql:
        iql_path, report["iql_training"] = train_iql_policy(ws, args.dataset_runs, args.dataset_heuristic, iql_cfg)
    init = iql_path if args.ppo_init == "iql" else None
    budget_start = started if init else time.perf_counter()
    say(f"PPO from {'the IQL policy' if init else 'scratch'} until {args.minutes} minutes have passed ...")
    ppo_path = ws.root / "ppo.pt"
    ppo_started = time.perf_counter()
    result = ppo_job(ppo_cfg, ppo_path, ws, init=init and Path(init), progress=say,
                     deadline=budget_start + args.minutes * 60)
    report["ppo_training"] = {"init": args.ppo_init, "minutes": round((time.perf_counter() - ppo_started) / 60, 2),
                              "minutes_with_iql": round((time.perf_counter() - budget_start) / 60, 2),
                              "episodes": result["episodes"], "updates": result["updates"], "n_envs": args.n_envs,
                              "workers": args.workers,
                              "shared_baseline": args.shared_baseline,
                              "seed": args.seed, "learning_rate": args.lr, "critic_warmup": args.critic_warmup,
                              "init_temperature": args.init_temperature,
                              "max_params": args.max_params, "select_every": args.select_every,
                              "select_runs": args.select_runs, "kept_update": result["kept_update"],
                              "last_update": {k: round(v, 4) for k, v in result["stats"].items()}}

    say("evaluating on unseen seeds ...")
    cap, root = args.max_params, str(ws.root)
    evaluations = {"ppo": ("policy", str(ppo_path), cap), "ppo_sampled": ("sampled", str(ppo_path), cap),
                   "heuristic": ("heuristic", None, 0), "heuristic_capped": ("heuristic", None, cap),
                   "static": ("static", None, 0), "iql": ("policy", iql_path, cap)}
    if not cap:
        del evaluations["heuristic_capped"]
    if not iql_path:
        del evaluations["iql"]
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = {key: pool.submit(evaluate, key.replace("_", "-"), controller, seeds, root, policy, max_params)
                for key, (controller, policy, max_params) in evaluations.items()}
        results = {key: job.result() for key, job in jobs.items()}

    report["results"] = {k: {m: v[m] for m in ("test_accuracy", "val_accuracy", "params")} for k, v in results.items()}
    report["per_seed"] = {k: v["per_seed"] for k, v in results.items()}
    ppo, heuristic = results["ppo"], results["heuristic"]
    report["target_met"] = ppo["test_accuracy"] >= heuristic["test_accuracy"] and ppo["params"] <= heuristic["params"]
    print(json.dumps(report))


if __name__ == "__main__":
    run(main)
