"""What pinning torch's CPU kernels to AVX2 (esper/_kernels.py) costs: epoch time with and without it.

Each measurement is a fresh process (the libraries read their setting once, at their first kernel), running
the same short mnist1d run; pinned and unpinned alternate, and each pair's ratio is taken, because this
machine's speed drifts minute to minute. Also reports whether both computed the same bits (the final
validation loss), which they do where the CPU's own best kernels are AVX2. Prints one JSON object.

    .venv/bin/python benchmarks/kernels.py [--epochs 6] [--pairs 4]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from esper._kernels import PINNED, has_avx2

CHILD = """
import json, sys, time
from esper.leyline import RunConfig
from esper.tamiyo.controllers import make_controller
from esper.tolaria.loop import ListSink, execute
config = RunConfig(seed=0, epochs=int(sys.argv[1]))
sink = ListSink()
start = time.perf_counter()
execute(config, make_controller("heuristic", 0), sink)
seconds = time.perf_counter() - start
last = [e for e in sink.events if type(e).__name__ == "EpochEnded"][-1]
print(json.dumps({"epoch_s": seconds / config.epochs, "val_loss": repr(last.val_loss)}))
"""


UNPINNED = {"ATEN_CPU_CAPABILITY": "", "ONEDNN_MAX_CPU_ISA": "ALL", "MKL_CBWR": "AUTO"}
"""Values that leave each library its own choice (set, so that importing esper does not pin them; torch warns
that it ignores the empty value, on the child's stderr)."""


def measure(epochs: int, pinned: bool) -> dict:
    env = {**os.environ, **(PINNED if pinned else UNPINNED)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(epochs)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    ratios, same = [], True
    for i in range(args.pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        runs = {pinned: measure(args.epochs, pinned) for pinned in order}
        ratios.append(runs[True]["epoch_s"] / runs[False]["epoch_s"])
        same = same and runs[True]["val_loss"] == runs[False]["val_loss"]
    print(json.dumps({
        "cpu_has_avx2": has_avx2(), "epochs": args.epochs, "pairs": args.pairs,
        "pinned_over_unpinned_epoch_time": {"median": round(statistics.median(ratios), 3),
                                            "all": [round(r, 3) for r in ratios]},
        "same_bits": same,
    }))


if __name__ == "__main__":
    main()
