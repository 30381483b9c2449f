"""Plausible recorded runs for tests, written through the real `Garden` and `Recorder`.

Until the training engine lands, this is how the Nissa tests get logs. The shape is the one real runs
have: `RunStarted`; then one batch per epoch holding the garden's automatic transitions (`tick`), the
`EpochEnded` with telemetry of every live seed, a `CommandIssued` and the events `Garden.handle`
returned for it; then `RunFinished` in a batch of its own. The garden decides every lifecycle event,
so an illegal transition cannot sneak into a fake log either.

Accuracy is a made-up curve that plateaus, plus each seed's contribution × α (blending) or its full
contribution (fossilized). Three blueprints behave differently: `conv_light` helps, `conv_heavy` hurts
once blended, `attention` diverges while training. The controllers are tiny rule sets:

* `heuristic`: germinates when validation accuracy has been flat for 3 epochs, advances whatever it
  can, culls a seed whose contribution is negative at full α. The default run (24 epochs) fossilizes
  s1-mid, culls s2-late (→ EMBARGOED → DORMANT), is refused twice while slot late is embargoed, and
  ends with s3-late training.
* `policy`: germinates on a schedule, never culls itself: the garden culls automatically.
* `static`: never grows anything.
"""

import atexit
import hashlib
import math
import random
import shutil
import tempfile
from pathlib import Path
from itertools import count
from typing import Iterable, Iterator

import attrs
import msgspec

from esper.leyline import (
    Advance,
    CheckpointSaved,
    Command,
    CommandIssued,
    Cull,
    EpochEnded,
    Event,
    Germinate,
    LifecycleConfig,
    RunConfig,
    RunFailed,
    RunFinished,
    RunResumed,
    RunStarted,
    SeedGerminated,
    SeedStage,
    SeedTelemetry,
    Wait,
)
from esper.leyline.garden import Garden
from esper.store import Recorded, Recorder, Workspace
from esper.tolaria.tasks import TASKS

MNIST1D = TASKS["mnist1d"]

SLOTS = ["early", "mid", "late"]
HOST_PARAMS = 12_288
LIFECYCLE = LifecycleConfig(
    min_training_epochs=2, gradient_health_threshold=0.3, blend_epochs=3, stability_window=1,
    regression_tolerance=0.01, auto_cull_contribution=-0.02, auto_cull_patience=2, embargo_epochs=2,
)


@attrs.frozen
class Blueprint:
    params: int
    health: float
    contribution: float
    """Accuracy (fraction) the seed adds at α = 1."""
    diverges_after: int | None = None
    """Epochs of TRAINING after which its gradients vanish (gradient health 0)."""


BLUEPRINTS = {
    "conv_light": Blueprint(params=2_304, health=0.82, contribution=0.061),
    "conv_heavy": Blueprint(params=9_216, health=0.71, contribution=-0.031),
    "attention": Blueprint(params=4_608, health=0.65, contribution=0.02, diverges_after=1),
}

HEURISTIC_PLAN = [("mid", "conv_light"), ("late", "conv_heavy"), ("late", "attention")]
POLICY_PLAN = {2: ("early", "attention"), 6: ("mid", "conv_light"), 14: ("late", "conv_heavy")}


def base_accuracy(epoch: int) -> float:
    return 0.60 + 0.19 * (1.0 - math.exp(-epoch / 1.2))


@attrs.define
class _Sim:
    controller: str
    seed: int
    garden: Garden
    rng: random.Random
    accuracies: list[float] = attrs.Factory(list)
    plan: list[tuple[str, str]] = attrs.Factory(list)

    def telemetry(self) -> list[SeedTelemetry]:
        out = []
        for s in self.garden.seeds.values():
            if s.stage not in (SeedStage.TRAINING, SeedStage.BLENDING):
                continue
            bp = BLUEPRINTS[s.blueprint]
            n = s.epochs_in_stage + 1  # the epoch being measured is the n-th in this stage
            loss = round(1.2 * 0.8 ** n, 6)
            if s.stage is SeedStage.TRAINING:
                dead = bp.diverges_after is not None and n > bp.diverges_after
                out.append(SeedTelemetry(seed_id=s.seed_id, gradient_health=0.0 if dead else bp.health, seed_loss=loss))
            else:
                alpha = min(1.0, n / self.garden.config.blend_epochs)
                out.append(SeedTelemetry(
                    seed_id=s.seed_id, alpha=alpha, gradient_health=bp.health, seed_loss=loss,
                    contribution=round(bp.contribution * alpha, 6),
                ))
        return out

    def accuracy(self, epoch: int, telemetry: list[SeedTelemetry]) -> float:
        acc = base_accuracy(epoch) + self.rng.uniform(-0.0008, 0.0008)
        for s in self.garden.seeds.values():
            if s.stage is SeedStage.FOSSILIZED:
                acc += BLUEPRINTS[s.blueprint].contribution
        acc += sum(t.contribution or 0.0 for t in telemetry)
        return round(acc, 6)

    def params(self) -> int:
        grown = SeedStage.FOSSILIZED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.GERMINATED
        return HOST_PARAMS + sum(s.params for s in self.garden.seeds.values() if s.stage in grown)

    def flat_epochs(self) -> int:
        """Consecutive latest epochs that did not beat the best before them by half a point."""
        flat = 0
        for i in range(len(self.accuracies) - 1, 0, -1):
            if self.accuracies[i] - max(self.accuracies[:i]) >= 0.005:
                break
            flat += 1
        return flat

    def decide(self, epoch: int) -> Command:
        if self.controller == "static":
            return Wait()
        for s in self.garden.seeds.values():
            t = s.telemetry
            if s.stage is SeedStage.BLENDING and t is not None and t.alpha >= 1.0:
                if self.controller == "heuristic" and (t.contribution or 0.0) < 0:
                    return Cull(s.seed_id, reason=f"contribution {100 * (t.contribution or 0):+.1f} points at full alpha")
                return Advance(s.seed_id)
        if self.controller == "policy" and epoch in POLICY_PLAN:
            slot, blueprint = POLICY_PLAN[epoch]
            return Germinate(slot, blueprint)
        for s in self.garden.seeds.values():
            if s.stage is SeedStage.TRAINING and s.epochs_in_stage >= 1:
                return Advance(s.seed_id)
        if self.controller == "heuristic" and self.plan and not self.garden.active_seeds() and self.flat_epochs() >= 3:
            slot, blueprint = self.plan[0]
            return Germinate(slot, blueprint)
        return Wait()


def plan_run(controller: str = "heuristic", seed: int = 0, epochs: int = 24) -> list[list[Event]]:
    """The batches of one run, in append order; every lifecycle event decided and folded by a `Garden`."""
    config = RunConfig(task="mnist1d", controller=controller, seed=seed, epochs=epochs, lifecycle=LIFECYCLE)
    garden = Garden()
    sim = _Sim(controller, seed, garden, random.Random(f"{controller}-{seed}"), plan=list(HEURISTIC_PLAN))
    started = RunStarted(preset=MNIST1D, config=config, host_params=HOST_PARAMS, slots=list(SLOTS), blueprints=sorted(BLUEPRINTS))
    garden.apply(started)
    batches: list[list[Event]] = [[started]]
    for epoch in range(1, epochs + 1):
        batch: list[Event] = []
        for event in garden.tick(epoch):
            garden.apply(event)
            batch.append(event)
        telemetry = sim.telemetry()
        acc = sim.accuracy(epoch, telemetry)
        sim.accuracies.append(acc)
        val_loss = round(2.2 * (1.0 - acc) + 0.05, 6)
        ended = EpochEnded(
            epoch=epoch, train_loss=round(val_loss * 0.92, 6), val_loss=val_loss, val_accuracy=acc,
            params=sim.params(), seeds=telemetry, diagnostics={"grad_norm": round(1.0 / epoch, 6)},
        )
        garden.apply(ended)
        batch.append(ended)
        command = sim.decide(epoch)
        issued = CommandIssued(epoch=epoch, command=command, controller=controller)
        if controller == "policy":
            issued = msgspec.structs.replace(issued, log_prob=round(-0.1 * epoch, 6), value=round(acc, 6))
        batch.append(issued)
        for event in garden.handle(command, epoch):
            if isinstance(event, SeedGerminated):  # the engine knows the module's size, the garden does not
                event = msgspec.structs.replace(event, params=BLUEPRINTS[event.blueprint].params)
                if sim.plan and sim.plan[0] == (event.slot, event.blueprint):
                    sim.plan.pop(0)
            garden.apply(event)
            batch.append(event)
        batches.append(batch)
    counts: dict[str, int] = {}
    for s in garden.seeds.values():
        counts[s.stage.value] = counts.get(s.stage.value, 0) + 1
    last = sim.accuracies[-1]
    batches.append([RunFinished(
        epoch=epochs, val_accuracy=last, test_accuracy=round(last - 0.004, 6), params=sim.params(), seeds=counts,
    )])
    return batches


def run_id_for(controller: str, seed: int) -> str:
    return f"{controller}-s{seed}-0a1b2c3d"


@attrs.define
class FakeWriter:
    """Appends a planned run batch by batch, so a test can look at the store between epochs."""

    recorder: Recorder
    run_id: str
    batches: list[list[Event]]
    written: int = 0
    last_seq: int = 0

    def write(self, n: int | None = None) -> int:
        """Append the next `n` batches (all that remain by default); returns the run's last seq."""
        stop = len(self.batches) if n is None else min(len(self.batches), self.written + n)
        for batch in self.batches[self.written:stop]:
            self.last_seq = self.recorder.append(self.run_id, batch, self.last_seq)
        self.written = stop
        return self.last_seq

    @property
    def done(self) -> bool:
        return self.written == len(self.batches)


def write_batches(workspace: str | Path, batches: list[list[Event]], run_id: str, store: str | None = None) -> Workspace:
    """Write the batches as run `run_id` into `<workspace>/<store>.duckdb` (the run id by default).

    A new store file is a copy of one this process wrote for the same run before (each append commits to disk,
    ~12 ms, and a fixture writing one run per test spent a quarter of the fast tier there); the copy's
    timestamps and event ids are the first write's. A run added to an existing store file is appended."""
    ws = Workspace.at(workspace)
    path = ws.store_path(store or run_id)
    if path.exists():
        _write(path, batches, run_id)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_written(batches, run_id), path)
    return ws


def _write(path: Path, batches: list[list[Event]], run_id: str) -> None:
    with Recorder(path) as recorder:
        FakeWriter(recorder, run_id, batches).write()


_WRITTEN: dict[str, Path] = {}
_WRITTEN_DIR = Path(tempfile.mkdtemp(prefix="esper-fake-runs-"))
atexit.register(shutil.rmtree, _WRITTEN_DIR, True)


def _written(batches: list[list[Event]], run_id: str) -> Path:
    """The store file holding only `run_id` written from `batches`, written on the first call for them."""
    key = hashlib.sha256(run_id.encode()
                         + b"".join(b"\n".join(msgspec.json.encode(e) + type(e).__name__.encode() for e in batch)
                                    + b"\0" for batch in batches)).hexdigest()
    if key not in _WRITTEN:
        path = _WRITTEN_DIR / f"{key}.duckdb"
        _write(path, batches, run_id)
        _WRITTEN[key] = path
    return _WRITTEN[key]


def write_run(
    workspace: str | Path, controller: str = "heuristic", seed: int = 0, epochs: int = 24,
    run_id: str | None = None, store: str | None = None,
) -> str:
    """Write one complete fake run into `<workspace>/<store>.duckdb`; returns its run id."""
    run_id = run_id or run_id_for(controller, seed)
    write_batches(workspace, plan_run(controller, seed, epochs), run_id, store)
    return run_id


# ---- interrupted and resumed runs, as `esper run` and `esper run --resume` write them --------------------


def sha(epoch: int) -> str:
    """A made-up checkpoint file's sha256 for `epoch`."""
    return hashlib.sha256(f"epoch {epoch}".encode()).hexdigest()


def checkpointed(batches: list[list[Event]]) -> list[list[Event]]:
    """A planned run with a `CheckpointSaved` closing each epoch's batch, as `esper run` writes it."""
    return [batch + [CheckpointSaved(epoch=i, sha256=sha(i), size=100 + i)] if 0 < i < len(batches) - 1 else batch
            for i, batch in enumerate(batches)]


def interrupted(batches: list[list[Event]], after: int, error: str = "interrupted") -> list[list[Event]]:
    """The run stopped after epoch `after` (`RunFailed`), then resumed from that epoch's checkpoint."""
    resumed = RunResumed(epoch=after, sha256=sha(after), checkpoint_epoch=after)
    return [*batches[:after + 1], [RunFailed(epoch=after + 1, error=error)], [resumed, *batches[after + 1]],
            *batches[after + 2:]]


def write_comparison(workspace: str | Path, seed: int = 0) -> list[str]:
    """Static, heuristic and policy runs of the same seed, each in its own store file."""
    return [write_run(workspace, controller, seed) for controller in ("static", "heuristic", "policy")]


def iter_events(batches: list[list[Event]]) -> Iterator[Event]:
    for batch in batches:
        yield from batch


def as_recorded(events: Iterable[Event], run_id: str = "run", seqs: Iterable[int] | None = None) -> list[Recorded]:
    """Events as a store hands them back, without one: positions 1, 2, 3 ... and seqs alike (or `seqs`)."""
    return [Recorded(position, run_id, seq, None, None, event)
            for position, (seq, event) in enumerate(zip(seqs or count(1), events), start=1)]


class SameSlotEveryEpoch:
    """Germinates into slot early whenever asked: once the slot is taken, every later command is refused."""

    name = "heuristic"  # as the run's config names its controller: the log then re-executes (`esper replay --verify`)

    def __init__(self):
        self.asked = 0

    def decide(self, obs):
        self.asked += 1
        return Germinate(slot="early", blueprint="conv_light")
