"""What the portable CPU kernel set (esper/_kernels.py) costs against the fast one: time per training step of
each task's host at its preset's batch size, and per epoch of the default mnist1d run.

Each measurement is a fresh process (the libraries read their setting once, at their first kernel); portable
and fast alternate, and each pair's ratio is taken, because this machine's speed drifts minute to minute. Also
reports whether each set computed the same bits (every epoch's validation loss) when oneDNN is told to pick
other kernels, as on another CPU. Prints one JSON object.

    .venv/bin/python benchmarks/kernels.py [--pairs 3]
"""

import json
import os
import statistics
import subprocess
import sys

from esper._kernels import KERNEL_SETS
from script import Parser, positive_int, run

STEPS = """
import json, sys, time
import torch
from esper.kasmina import preset_host
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import settle_kernels
preset, steps = get_task(sys.argv[1]), int(sys.argv[2])
settle_kernels(torch.device("cpu"))
torch.manual_seed(0)
model = preset_host(preset)
shape = model.host.input_shape
x = torch.randint(0, 64, (preset.batch_size, *shape)) if preset.host == "transformer" else torch.randn(preset.batch_size, *shape)
optimizer = torch.optim.Adam(model.parameters(), 1e-3)
def step():
    optimizer.zero_grad()
    model(x).float().pow(2).mean().backward()
    optimizer.step()
step()
start = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"seconds": (time.perf_counter() - start) / steps}))
"""

EPOCHS = """
import json, sys, time
from esper.leyline import RunConfig
from esper.tamiyo.controllers import make_controller
from esper.tolaria.loop import ListSink, execute
config = RunConfig(seed=0, epochs=int(sys.argv[1]))
sink = ListSink()
start = time.perf_counter()
execute(config, make_controller("heuristic", 0), sink)
losses = [repr(e.val_loss) for e in sink.events if type(e).__name__ == "EpochEnded"]
print(json.dumps({"seconds": (time.perf_counter() - start) / config.epochs, "val_losses": losses}))
"""

MEASURES = {  # name: (child, its arguments)
    "mnist1d epoch (the default run)": (EPOCHS, ["6"]),
    "cnn1d step (mnist1d)": (STEPS, ["mnist1d", "200"]),
    "transformer step (text)": (STEPS, ["text", "20"]),
    "resnet step (cifar10)": (STEPS, ["cifar10", "3"]),
}


def measure(child: str, args: list[str], kernels: str, **variables: str) -> dict:
    env = {**os.environ, **KERNEL_SETS[kernels], "ESPER_CPU_KERNELS": kernels, **variables}
    out = subprocess.run([sys.executable, "-c", child, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--pairs", type=positive_int, default=3, help="portable-and-fast pairs of each measurement")
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {name: [] for name in MEASURES}
    for i in range(args.pairs):
        for name, (child, child_args) in MEASURES.items():
            order = ("portable", "fast") if i % 2 == 0 else ("fast", "portable")
            seconds = {kernels: measure(child, child_args, kernels)["seconds"] for kernels in order}
            ratios[name].append(seconds["portable"] / seconds["fast"])
    child, child_args = MEASURES["mnist1d epoch (the default run)"]
    print(json.dumps({
        "pairs": args.pairs,
        "portable_over_fast_time": {name: {"median": round(statistics.median(r), 2), "all": [round(x, 2) for x in r]}
                                    for name, r in ratios.items()},
        "same_bits_when_onednn_picks_other_kernels": {
            kernels: measure(child, child_args, kernels, ONEDNN_MAX_CPU_ISA="SSE41")["val_losses"] ==
            measure(child, child_args, kernels)["val_losses"] for kernels in ("portable", "fast")},
    }))


if __name__ == "__main__":
    run(main)
