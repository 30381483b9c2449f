"""IQL's gradient steps per second on one CPU thread (what `esper.simic.iql.train` uses) vs all the cores.

The dataset is a few short mnist1d runs (heuristic and random), replayed through the dataset projection.
The same minibatches are stepped with `torch.set_num_threads(1)` and with `os.cpu_count()` threads,
alternating, `--repeats` times, once on an idle machine and once while another process keeps one core
busy (as when two jobs, or a job and the tests, share a small machine). Prints one JSON object: median
steps/s of each and their ratio, per condition.

    .venv/bin/python benchmarks/iql.py [--steps 300] [--repeats 3]   # over a minute on 2 cores
"""

import multiprocessing
import json
import os
import platform
import statistics
import time

import torch

from esper.leyline import RunConfig
from esper.simic.dataset import batch, replay_episode
from esper.simic.features import spec_for_task
from esper.simic.iql import IQLConfig, iql_step, learners
from esper.tamiyo.controllers import make_controller
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import ListSink, execute, resolve_config
from script import Parser, positive_int, run


def dataset(runs: int, epochs: int) -> dict[str, torch.Tensor]:
    spec, data = spec_for_task("mnist1d"), load_task_data("mnist1d", RunConfig().data_seed)
    episodes = []
    for controller in ("heuristic", "random"):
        for seed in range(runs):
            sink = ListSink()
            config = resolve_config(RunConfig(controller=controller, seed=seed, epochs=epochs))
            execute(config, make_controller(controller, seed), sink, data=data)
            episodes.append(replay_episode(sink.events, spec))
    return batch(episodes)


def steps_per_second(threads: int, data: dict[str, torch.Tensor], steps: int, cfg: IQLConfig) -> float:
    net, q, q_target, optimizers = learners(cfg, spec_for_task("mnist1d"))
    generator = torch.Generator().manual_seed(0)
    n = len(data["reward"])
    batches = [torch.randint(0, n, (cfg.batch_size,), generator=generator) for _ in range(steps)]
    torch.set_num_threads(threads)
    started = time.perf_counter()
    for index in batches:
        iql_step(net, q, q_target, optimizers, {k: v[index] for k, v in data.items()}, cfg)
    return steps / (time.perf_counter() - started)


def spin() -> None:
    while True:
        pass


def rates(data: dict[str, torch.Tensor], args, cfg: IQLConfig, cores: int) -> dict[str, float]:
    measured: dict[int, list[float]] = {1: [], cores: []}
    for _ in range(args.repeats):
        for threads in measured:
            measured[threads].append(steps_per_second(threads, data, args.steps, cfg))
    one, many = statistics.median(measured[1]), statistics.median(measured[cores])
    return {"steps_per_s_1_thread": round(one, 1), f"steps_per_s_{cores}_threads": round(many, 1),
            "speedup_of_1_thread": round(one / many, 2)}


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--steps", type=positive_int, default=300)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--runs", type=positive_int, default=2, help="runs of each controller in the dataset")
    parser.add_argument("--epochs", type=positive_int, default=5, help="epochs of each dataset run")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    data = dataset(args.runs, args.epochs)
    cfg = IQLConfig()
    report = {"machine": f"{platform.machine()}, {cores} CPU cores", "torch": torch.__version__,
              "transitions": len(data["reward"]), "batch_size": cfg.batch_size, "steps": args.steps,
              "idle": rates(data, args, cfg, cores)}
    busy = multiprocessing.get_context("spawn").Process(target=spin, daemon=True)
    busy.start()
    try:
        report["one_core_busy"] = rates(data, args, cfg, cores)
    finally:
        busy.terminate()
    print(json.dumps(report))


if __name__ == "__main__":
    run(main)
