"""Lock-step environments vs the same environments one after another: environment-epochs per second.

For each n, the same n runs (same config and seed, one heuristic controller each, events into a real
DuckDB store) are trained two ways in this process, back to back, `--repeats` times (the order alternates):
* lockstep: one `esper.simic.env.VecEnv` of n runs over shared batches (CUDA streams on GPU);
* sequential: n calls of `esper.tolaria.loop.execute`, one after another.
Both write exactly the same events (checked). Prints one JSON object; per n: median environment-epochs/s
of each mode (wall clock), and the speed-up (sequential time / lock-step time) of each back-to-back pair:
its median, a bootstrap 95 % interval of that median, and in how many pairs lock-step was at least as fast;
the same in process CPU time (less disturbed by other processes on a shared machine). Pairing matters on a
noisy machine: one run's time can swing ±10 % from one minute to the next, and a pair shares the minute.
On CPU lock-step should be no slower; on GPU the target is ≥ 3× at n = 8.

    .venv/bin/python benchmarks/vectorized.py [--epochs 10] [--repeats 10] [--device cpu|cuda] [--ns 1,2,4]
"""

import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from esper.leyline import RunConfig
from esper.leyline.events import encode
from esper.simic.env import VecEnv, configs_round_robin, play
from esper.store import Recorder
from esper.tamiyo.controllers import HeuristicController
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import StoreSink, execute, resolve_config
from esper.tolaria.trainer import resolve_device
from script import Parser, integers, positive_int, run, say


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def lockstep(config: RunConfig, n: int, devices: list[str], recorder: Recorder, tag: str, data) -> tuple[float, float, list]:
    sinks = [StoreSink(recorder, f"{tag}-lock-{i}") for i in range(n)]
    sync(devices[0])
    start, cpu = time.perf_counter(), time.process_time()
    vec = VecEnv(configs_round_robin(config, n, devices), sinks, data)
    play(vec, [HeuristicController() for _ in range(n)])
    sync(devices[0])
    return time.perf_counter() - start, time.process_time() - cpu, [s.run_id for s in sinks]


def sequential(config: RunConfig, n: int, devices: list[str], recorder: Recorder, tag: str, data) -> tuple[float, float, list]:
    sinks = [StoreSink(recorder, f"{tag}-seq-{i}") for i in range(n)]
    sync(devices[0])
    start, cpu = time.perf_counter(), time.process_time()
    for c, sink in zip(configs_round_robin(config, n, devices), sinks):
        execute(c, HeuristicController(), sink, data=data)
    sync(devices[0])
    return time.perf_counter() - start, time.process_time() - cpu, [s.run_id for s in sinks]


def paired_speedup(sequential: list[float], lockstep: list[float]) -> dict:
    """Median of the pairs' speed-ups, its bootstrap 95 % interval, and the pairs lock-step won or tied."""
    ratios = [s / l for s, l in zip(sequential, lockstep)]
    draw = random.Random(0)
    medians = sorted(statistics.median(draw.choices(ratios, k=len(ratios))) for _ in range(2000))
    return {"median": round(statistics.median(ratios), 3), "ci95": [round(medians[50], 3), round(medians[1949], 3)],
            "lockstep_not_slower": f"{sum(r >= 1 for r in ratios)}/{len(ratios)}"}


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--repeats", type=positive_int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or a comma-separated list used round-robin")
    parser.add_argument("--ns", type=integers(1), default=None,
                        help="environment counts, comma-separated (default 1,2,4 on CPU, 1..8 on GPU)")
    args = parser.parse_args()
    devices = args.device.split(",")
    for device in devices:  # a device this machine lacks is one line now, not a traceback after the CPU's part
        resolve_device(device)
    on_gpu = devices[0].startswith("cuda")
    ns = args.ns or ([1, 2, 3, 4, 5, 6, 7, 8] if on_gpu else [1, 2, 4])
    config = resolve_config(RunConfig(controller="heuristic", epochs=args.epochs, seed=7, device=devices[0]))
    data = load_task_data(config.task, config.data_seed)
    results = []
    identical = True
    with tempfile.TemporaryDirectory() as tmp, Recorder(Path(tmp) / "vectorized.duckdb") as recorder:
        lockstep(config, 1, devices, recorder, "warmup", data)
        sequential(config, 1, devices, recorder, "warmup", data)
        for n in ns:
            times = {"lockstep": [], "sequential": [], "lockstep_cpu": [], "sequential_cpu": []}
            for r in range(args.repeats):
                order = [("lockstep", lockstep), ("sequential", sequential)]
                for name, fn in order if r % 2 == 0 else order[::-1]:
                    seconds, cpu_seconds, run_ids = fn(config, n, devices, recorder, f"n{n}-r{r}", data)
                    times[name].append(seconds)
                    times[f"{name}_cpu"].append(cpu_seconds)
                    if r == 0:
                        times.setdefault(f"{name}_runs", run_ids)
            for a, b in zip(times["lockstep_runs"], times["sequential_runs"]):
                left = [encode(x.event) for x in recorder.read(a)]
                right = [encode(x.event) for x in recorder.read(b)]
                identical &= left == right
            lock = n * args.epochs / statistics.median(times["lockstep"])
            seq = n * args.epochs / statistics.median(times["sequential"])
            wall = paired_speedup(times["sequential"], times["lockstep"])
            cpu = paired_speedup(times["sequential_cpu"], times["lockstep_cpu"])
            results.append({"n": n, "lockstep_env_epochs_per_s": round(lock, 2),
                            "sequential_env_epochs_per_s": round(seq, 2), "speedup": wall, "speedup_cpu_time": cpu})
            say(f"n={n}: lockstep {lock:.1f}  sequential {seq:.1f} env-epochs/s  "
                f"×{wall['median']:.3f} {wall['ci95']} (CPU time ×{cpu['median']:.3f} {cpu['ci95']})")
    print(json.dumps({
        "device": args.device if not on_gpu else f"{args.device} ({torch.cuda.get_device_name(0)})",
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "epochs_per_env": args.epochs,
        "repeats": args.repeats,
        "events_identical": identical,
        "results": results,
    }))


if __name__ == "__main__":
    run(main)
