"""Event store throughput: append, read back, fold, and one aggregate over a million events.

    python benchmarks/store.py                     # ~35 s on 2 cores: a store of 1,000,000 events
    python benchmarks/store.py --run-events 10000  # a quick check, ~20 s: a store of 100,000 events

Progress on stderr, one JSON line on stdout (the last line). It measures throughput on this machine as it is, so
its absolute numbers say how fast, not whether fast enough: its verdicts (`faster_than_baseline`) are the ratios
measured in the same run against the way each design replaced (a load from a snapshot against one from zero, a
checked read in one pass against two). The store holds 10 runs of `--run-events` events each.

What each number is:
* `append_<n>_events_per_s`: `Recorder.append` of batches of n events (bare events, as the training loop
  appends them; the store draws their ids). Batch sizes 1 and 100 go to a fresh store file, as a run's
  epochs do; batch size 10,000 builds the million-event store (10 × `--run-events`) the aggregate then reads.
* `append_10000_unchained_events_per_s`: the same appends without the hash chain (a benchmark-only switch
  on the Recorder), interleaved run by run with the chained ones so both see the store at the same sizes;
  `chain_cost_ratio` is chained / unchained throughput. DuckDB checkpoints the file inside an append now and then
  (every ~17 batches here, 0.1-0.7 s each), and where those land decides much of that ratio from one run of the
  benchmark to the next: `append_10000_median_events_per_s` (and `_unchained_median_`, `chain_cost_ratio_median`)
  are the median single append's, which no checkpoint moves.
* `append_10000_duckdb_floor_events_per_s`: DuckDB's own share of the same appends: the Arrow tables built
  beforehand (untimed), then one INSERT and one commit per batch into a fresh store file with the Recorder's
  settings, the heads left out. No append through `Recorder.append` can beat it on this machine;
  `floor_ratio` is the chained append's throughput over it (1.0: Esper's own work costs nothing).
* `append_10000_pending_events_per_s`: the same with `Pending` events (caller-chosen ids), which adds the
  idempotency check against every id already stored; measured on the last batches, as the store nears full.
* `read_events_per_s`: `Recorder.read` of one run (`--run-events`, default 100,000): SQL, Python rows, payloads
  decoded.
* `fold_events_per_s`: `Garden.apply` over the events of a realistic 150-epoch run (decided by the Garden
  itself: ticks, telemetry, commands; every stage is reached), folded again and again into fresh gardens.
* `load_from_zero_events_per_s`, `load_from_snapshot_events_per_s`: `load_run_state` of the LONG-epoch run
  (events of the run / seconds: read, decode, fold) from a store written by a `StoreSink` without snapshots, and
  from one written with a snapshot every 10 epochs (the latest snapshot decoded, the tail after it folded);
  `snapshot_load_speedup` is the second over the first. Best of 5 each.
* `checked_read_events_per_s`: `Reader.read_checked` of one sealed run of the store (hash chain and heads
  checked, payloads decoded, one pass); `checked_read_speedup` is it over the two passes it replaced
  (`check_run`, then `read_run`), best of 3 each, alternated.
* `aggregate_s`: `select type, count(*) from events group by 1` through `Workspace(...).reader()` after
  `lock_down()`, over the whole store (`store_events`): the first query on a fresh reader. Opening that
  reader (attach, views, lock-down) is `open_reader_s`.
"""

import argparse
import datetime
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from msgspec.structs import replace

from esper.leyline import (
    Advance,
    CommandIssued,
    Cull,
    EpochEnded,
    Event,
    Germinate,
    RunConfig,
    RunStarted,
    SeedStage,
    SeedTelemetry,
    SeedTransitioned,
    Wait,
)
from esper.leyline.garden import Garden
from esper.nissa.snapshot import load_run_state
from esper.store import Pending, Recorder, Workspace
from esper.tolaria.loop import StoreSink
from esper.tolaria.tasks import TASKS
from script import Parser, run, say

MNIST1D = TASKS["mnist1d"]

SLOTS = ["early", "mid", "late"]
LONG = 600
"""Epochs of the run whose events are appended (its events repeat with epochs moved on by LONG per pass)."""
BLUEPRINTS = ["conv_light", "conv_heavy", "attention", "mlp"]
BATCH = 10_000
"""Events per append of the big store's runs."""


# ---- a plausible run, decided by the Garden -----------------------------------------------------


def telemetry(garden: Garden, epoch: int) -> list[SeedTelemetry]:
    """What Tolaria would measure: healthy, improving seeds, except `attention`, whose gradients die."""
    out = []
    for seed in garden.active_seeds():
        stage, n = seed.stage, seed.epochs_in_stage
        dying = seed.blueprint == "attention" and stage is SeedStage.TRAINING and n >= 1
        alpha = min(1.0, (n + 1) / garden.config.blend_epochs) if stage is SeedStage.BLENDING else 0.0
        out.append(SeedTelemetry(
            seed_id=seed.seed_id,
            alpha=alpha,
            gradient_health=0.0 if dying else 0.8,
            seed_loss=1.0 / (n + 2),
            contribution=0.01 + 0.001 * (epoch % 5) if stage is SeedStage.BLENDING else None,
        ))
    return out


def decide(garden: Garden, epoch: int):
    """A small heuristic controller: finish what is blending, push or cull what trains, else grow."""
    for seed in garden.active_seeds():
        if seed.stage is SeedStage.BLENDING:
            return Advance(seed.seed_id)
    for seed in garden.active_seeds():
        if seed.stage is SeedStage.TRAINING and seed.epochs_in_stage >= 2:
            return Cull(seed.seed_id, "not helping") if seed.blueprint == "conv_heavy" else Advance(seed.seed_id)
    for i, slot in enumerate(SLOTS):
        if garden.live_seed(slot) is None:
            return Germinate(slot, BLUEPRINTS[(epoch + i) % len(BLUEPRINTS)])
    return Wait()


def simulate_run(epochs: int) -> list[Event]:
    """The events of one run, every lifecycle event decided by `Garden.handle`/`tick` and folded as it goes."""
    garden = Garden()
    events: list[Event] = []

    def emit(batch: list[Event]) -> None:
        for event in batch:
            garden.apply(event)
            events.append(event)

    emit([RunStarted(preset=MNIST1D, config=RunConfig(epochs=epochs), host_params=12_288, slots=SLOTS, blueprints=BLUEPRINTS)])
    for epoch in range(epochs):
        emit(garden.tick(epoch))
        accuracy = 0.6 + 0.3 * (1 - 1 / (1 + epoch / 10))
        emit([EpochEnded(
            epoch=epoch, train_loss=1.0 / (epoch + 1), val_loss=1.1 / (epoch + 1), val_accuracy=accuracy,
            params=12_288 + 500 * len(garden.active_seeds()), seeds=telemetry(garden, epoch),
            diagnostics={"grad_norm/host": 0.5, "lr": 0.001},
        )])
        command = decide(garden, epoch)
        emit([CommandIssued(epoch=epoch, command=command, controller="heuristic")])
        emit(garden.handle(command, epoch))
    return events


# ---- measurements -------------------------------------------------------------------------------


def append_timed(recorder: Recorder, run_id: str, batches: Iterable[list],
                 each: list[float] | None = None) -> tuple[int, float]:
    """Append the batches to a new run: (events, seconds spent inside `append`; building batches is not timed).
    `each`, if given, gets every append's events/s."""
    last, n, took = 0, 0, 0.0
    for batch in batches:
        start = time.perf_counter()
        last = recorder.append(run_id, batch, last)
        seconds = time.perf_counter() - start
        took += seconds
        n += len(batch)
        if each is not None:
            each.append(len(batch) / seconds)
    return n, took


def rate(timed: tuple[int, float]) -> float:
    return timed[0] / timed[1]


def batches(run: list[Event], epochs: int, size: int, count: int) -> Iterator[list[Event]]:
    """`count` batches of `size` events: the run's events over and over, each pass with its epochs moved on,
    so no two payloads are the same (repeated payloads would compress better than a real log does)."""
    for k in range(count):
        batch = []
        for i in range(k * size, (k + 1) * size):
            event, shift = run[i % len(run)], (i // len(run)) * epochs
            batch.append(event if event.epoch is None or not shift else replace(event, epoch=event.epoch + shift))
        yield batch


def load_rates(root: Path, run: list[Event], every: int = 10, repeats: int = 5) -> tuple[float, float]:
    """Events/s of `load_run_state` of `run` from zero and from its latest snapshot (see the module docstring)."""
    rates = []
    for snapshot_every in (0, every):
        ws = Workspace(root / f"load-{snapshot_every}")
        with Recorder(ws.store_path("long")) as rec:
            sink = StoreSink(rec, "long", snapshot_every=snapshot_every)
            for batch in epoch_batches(run):
                sink.append(batch)
        best = float("inf")
        with ws.reader() as reader:
            assert bool(reader.snapshots("long", matching=True)) == bool(snapshot_every)
            for _ in range(repeats):
                start = time.perf_counter()
                state = load_run_state(reader, "long")
                best = min(best, time.perf_counter() - start)
            assert state.last_seq == len(run)
        rates.append(len(run) / best)
    return rates[0], rates[1]


def duckdb_floor(root: Path, run: list[Event], size: int, count: int) -> tuple[int, float]:
    """(events, seconds) of inserting and committing prebuilt batches: the floor under `Recorder.append`.
    Reaches into the Recorder's connection and Arrow builder on purpose: only the database's work is timed."""
    from esper.store.recorder import _to_arrow
    from esper.store.schema import INSERT_FROM_BATCH

    tables, first = [], 1
    for batch in batches(run, LONG, size, count):
        tables.append(_to_arrow(batch, first_seq=first, first_position=first, prev_hash=None)[0])
        first += len(batch)
    with Recorder(root / "floor.duckdb") as rec:
        con, took = rec._con, 0.0
        stamp = {"run_id": "floor", "ts": datetime.datetime.now(datetime.timezone.utc)}
        for table in tables:
            start = time.perf_counter()
            con.begin()
            con.register("batch", table)
            con.execute(INSERT_FROM_BATCH, stamp).fetchall()
            con.unregister("batch")
            con.commit()
            took += time.perf_counter() - start
    return first - 1, took


def checked_read_rates(reader, run_id: str, events: int, repeats: int = 3) -> tuple[float, float]:
    """Events/s of `Reader.read_checked` of a sealed run, and of the two passes it replaces (`check_run`, then
    `read_run`), alternated, best of `repeats` each."""
    one, two = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        assert len(reader.read_checked(run_id).recorded) == events
        one.append(time.perf_counter() - start)
        start = time.perf_counter()
        reader.check_run(run_id)
        assert len(reader.read_run(run_id)) == events
        two.append(time.perf_counter() - start)
    return events / min(one), events / min(two)


def epoch_batches(run: list[Event]) -> Iterator[list[Event]]:
    """The run's events as the training loop appends them: RunStarted alone, then one batch per epoch."""
    batch: list[Event] = []
    for event in run:
        if batch and event.epoch != batch[-1].epoch:
            yield batch
            batch = []
        batch.append(event)
    yield batch


def run_events(text: str) -> int:
    """The type of `--run-events`: whole batches of `BATCH` events."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < BATCH or value % BATCH:
        raise argparse.ArgumentTypeError(f"give a multiple of {BATCH:,} (a run is appended in batches of that many), "
                                         f"got {text}")
    return value


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--run-events", type=run_events, default=100_000,
                        help="events of each of the big store's 10 runs (default 100,000: a million in all)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    result: dict[str, float | int | dict] = {}

    short = simulate_run(epochs=150)  # the run that is folded
    long_run = simulate_run(epochs=LONG)  # the source of the appended events
    reached = Counter(e.to_stage for e in short if isinstance(e, SeedTransitioned))
    missing = {s.value for s in SeedStage} - set(reached)  # DORMANT is reached by cooldown_complete
    assert not missing, f"the simulated run never reached {missing}"
    mix = Counter(type(e).__name__ for e in short)
    say(f"simulated run: {len(short)} events, {dict(mix)}; transitions to {dict(reached)}")
    say(f"appended events: {dict(Counter(type(e).__name__ for e in long_run))}, shifted in epoch on every pass")

    with tempfile.TemporaryDirectory(prefix="esper-bench-") as tmp:
        root = Path(tmp)

        with Recorder(root / "small.duckdb") as rec:
            result["append_1_events_per_s"] = rate(append_timed(rec, "b1", batches(long_run, LONG, 1, 300)))
            say(f"append, batch 1:      {result['append_1_events_per_s']:>12,.0f} events/s (300 appends)")
            result["append_100_events_per_s"] = rate(append_timed(rec, "b100", batches(long_run, LONG, 100, 100)))
            say(f"append, batch 100:    {result['append_100_events_per_s']:>12,.0f} events/s (100 appends)")

        big = Workspace(root / "ws")
        runs, per_run, size = 10, args.run_events, BATCH
        with Recorder(big.store_path("million")) as rec:
            timed = {True: (0, 0.0), False: (0, 0.0)}  # sealed → (events, seconds)
            each: dict[bool, list[float]] = {True: [], False: []}  # sealed → every append's events/s
            for r in range(runs - 1):
                sealed = r % 2 == 0
                rec._seal = sealed  # benchmark-only: what the same appends cost without the chain
                n_run, took_run = append_timed(rec, f"run-{r:02d}", batches(long_run, LONG, size, per_run // size),
                                               each[sealed])
                timed[sealed] = (timed[sealed][0] + n_run, timed[sealed][1] + took_run)
                say(f"  {(r + 1) * per_run:>9,} events stored ({'chained' if sealed else 'unchained'}: "
                    f"{n_run / took_run:,.0f} events/s)")
            rec._seal = True
            n = timed[True][0]
            result["append_10000_events_per_s"] = rate(timed[True])
            result["append_10000_unchained_events_per_s"] = rate(timed[False])
            result["chain_cost_ratio"] = result["append_10000_events_per_s"] / result["append_10000_unchained_events_per_s"]
            result["append_10000_median_events_per_s"] = statistics.median(each[True])
            result["append_10000_unchained_median_events_per_s"] = statistics.median(each[False])
            result["chain_cost_ratio_median"] = (result["append_10000_median_events_per_s"]
                                                 / result["append_10000_unchained_median_events_per_s"])
            # The last run's batches carry caller-chosen ids (`Pending`), checked against every id stored.
            keyed = ([Pending(e) for e in batch] for batch in batches(long_run, LONG, size, per_run // size))
            result["append_10000_pending_events_per_s"] = rate(append_timed(rec, f"run-{runs - 1:02d}", keyed))
            say(f"  {runs * per_run:>9,} events stored")
            say(f"append, batch 10000:  {result['append_10000_events_per_s']:>12,.0f} events/s ({n:,} events, chained)")
            say(f"  unchained:          {result['append_10000_unchained_events_per_s']:>12,.0f} events/s "
                f"(chained/unchained = {result['chain_cost_ratio']:.3f})")
            say(f"  median append:      {result['append_10000_median_events_per_s']:>12,.0f} events/s chained, "
                f"{result['append_10000_unchained_median_events_per_s']:,.0f} unchained "
                f"(ratio {result['chain_cost_ratio_median']:.3f}; no checkpoint in a median append)")
            say(f"  with Pending ids:   {result['append_10000_pending_events_per_s']:>12,.0f} events/s ({per_run:,})")
        floor = duckdb_floor(root, long_run, size, timed[True][0] // size)  # as many batches as the chained appends
        result["append_10000_duckdb_floor_events_per_s"] = rate(floor)
        result["floor_ratio"] = result["append_10000_events_per_s"] / result["append_10000_duckdb_floor_events_per_s"]
        say(f"  DuckDB's floor:     {result['append_10000_duckdb_floor_events_per_s']:>12,.0f} events/s "
            f"(insert + commit of prebuilt batches; chained/floor = {result['floor_ratio']:.3f})")
        with Recorder(big.store_path("million")) as rec:

            start = time.perf_counter()
            read = rec.read("run-03")
            result["read_events_per_s"] = len(read) / (time.perf_counter() - start)
            assert len(read) == per_run
            say(f"read back + decode:   {result['read_events_per_s']:>12,.0f} events/s ({len(read):,} events)")

        folded, start = 0, time.perf_counter()
        while folded < 200_000:
            garden = Garden()
            for event in short:
                garden.apply(event)
            folded += len(short)
        result["fold_events_per_s"] = folded / (time.perf_counter() - start)
        say(f"fold (Garden.apply):  {result['fold_events_per_s']:>12,.0f} events/s ({folded:,} events)")

        zero, snap = load_rates(root, long_run)
        result["load_from_zero_events_per_s"], result["load_from_snapshot_events_per_s"] = zero, snap
        result["snapshot_load_speedup"] = snap / zero
        say(f"load_run_state, {len(long_run):,} events: from zero {zero:,.0f} events/s, from a snapshot "
            f"{snap:,.0f} events/s ({snap / zero:.1f}x)")

        start = time.perf_counter()
        reader = big.reader()
        reader.lock_down()
        result["open_reader_s"] = time.perf_counter() - start
        with reader:
            start = time.perf_counter()
            counts = reader.con.execute("select type, count(*) from events group by 1").fetchall()
            result["aggregate_s"] = time.perf_counter() - start
            assert sum(n for _, n in counts) == runs * per_run, counts
            say(f"aggregate over {runs * per_run:,}: {result['aggregate_s']:>8.3f} s (reader opened in "
                f"{result['open_reader_s']:.3f} s)")
            checked, twice = checked_read_rates(reader, "run-00", per_run)
        result["checked_read_events_per_s"], result["checked_read_speedup"] = checked, checked / twice
        say(f"checked read:         {checked:>12,.0f} events/s in one pass, {twice:,.0f} checking and then reading "
            f"({checked / twice:.2f}x)")

    result["store_events"] = runs * per_run
    result["faster_than_baseline"] = {"load_from_snapshot": result["snapshot_load_speedup"] > 1,
                                      "checked_read": result["checked_read_speedup"] > 1}
    result["total_s"] = time.perf_counter() - t0
    say(f"total {result['total_s']:.1f} s")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    run(main)
