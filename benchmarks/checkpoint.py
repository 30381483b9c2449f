"""What checkpointing every epoch costs: a run with `--checkpoint-every 1` against the same run without, on mnist1d.

Two sessions of the same grown mnist1d model (host + fossilized seeds, as `overhead.py` trains) run in this
process, epochs alternating (and which goes first too) so that both see the same machine load; each appends its
events to a real DuckDB store, one of them also saves a checkpoint of its whole state every epoch (copied in the
run's thread, written and fsynced by the writer thread). Prints one JSON object: median epoch seconds of each,
their ratio (target ≤ 1.05), the checkpoint's size, and what one checkpoint costs measured alone: the copy in the
run's thread (`capture_ms`) and the serialising, hashing and fsynced writing behind it (`write_ms`).

    .venv/bin/python benchmarks/checkpoint.py [--epochs 30]    # ~30 s on 2 cores
"""

import json
import statistics
import tempfile
import time
from pathlib import Path

from overhead import GROWN, esper_epoch

from esper.leyline import RunConfig
from esper.store import Recorder
from esper.tolaria import checkpoint
from esper.tolaria.checkpoint import Checkpoints, folder_of
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import Session, StoreSink, resolve_config
from script import Parser, integer, run, say


def cost_of_one(session: Session, folder: Path, repeats: int = 20) -> tuple[float, float]:
    """Median milliseconds of capturing the session's state and of writing it."""
    capture, write = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        captured = checkpoint.capture(session.epoch, session.trainer, None, session.projection.garden)
        capture.append(time.perf_counter() - t)
        t = time.perf_counter()
        checkpoint.write(folder, captured)
        write.append(time.perf_counter() - t)
    return statistics.median(capture) * 1000, statistics.median(write) * 1000


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--epochs", type=integer(2), default=30, help="epochs of each run (the first is not timed)")
    args = parser.parse_args()
    config = resolve_config(RunConfig(controller="static", epochs=args.epochs, architecture=GROWN))
    data = load_task_data(config.task, config.data_seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with Recorder(root / "plain.duckdb") as plain_store, Recorder(root / "checkpointed.duckdb") as ckpt_store:
            plain = Session(config, StoreSink(plain_store, "plain"), data=data)
            checkpointed = Session(config, StoreSink(ckpt_store, "checkpointed"), data=data,
                                   checkpoints=Checkpoints(folder_of(root), every=1))
            times: dict[str, list[float]] = {"plain": [], "checkpointed": []}
            for epoch in range(args.epochs):
                pair = (("plain", plain), ("checkpointed", checkpointed))
                for name, session in pair if epoch % 2 else reversed(pair):
                    t = time.perf_counter()
                    esper_epoch(session)
                    times[name].append(time.perf_counter() - t)
                plain_ms, ckpt_ms = times["plain"][-1] * 1000, times["checkpointed"][-1] * 1000
                say(f"plain {plain_ms:.1f} ms   checkpointed {ckpt_ms:.1f} ms")
            for session in (plain, checkpointed):
                session.finish()
        files = list(folder_of(root).glob("*.pt"))
        size = max(p.stat().st_size for p in files)
        capture_ms, write_ms = cost_of_one(checkpointed, root / "alone")
    plain_s, ckpt_s = statistics.median(times["plain"][1:]), statistics.median(times["checkpointed"][1:])
    print(json.dumps({
        "model_params": plain.trainer.model.param_count(),
        "epochs_timed": args.epochs - 1,
        "checkpoints_written": len(files),
        "checkpoint_bytes": size,
        "plain_epoch_s": round(plain_s, 5),
        "checkpointed_epoch_s": round(ckpt_s, 5),
        "checkpoint_ratio": round(ckpt_s / plain_s, 4),
        "capture_ms": round(capture_ms, 3),
        "write_ms": round(write_ms, 3),
        "target_ratio": 1.05,
    }))


if __name__ == "__main__":
    run(main)
