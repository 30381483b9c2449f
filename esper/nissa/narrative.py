"""The story of a run, told from its events: what grew where and why, what stayed, what was culled.

`narrate(events)` is a pure fold over one run's events (plain events or `Recorded`, in `seq` order) and
returns plain text lines, always the same lines for the same log. It reads only the log: the reasons it
gives are the evidence the gates and the controller recorded. Consecutive refusals of the same command
are told once, with the epochs they span.
"""

from typing import Any, Iterable

import attrs

from esper.leyline.commands import Advance, Command, Cull, Germinate, Wait
from esper.leyline.events import (
    CommandIssued,
    CommandRejected,
    EpochEnded,
    Event,
    RunFailed,
    RunFinished,
    RunResumed,
    RunStarted,
    SeedGerminated,
    SeedTransitioned,
)
from esper.leyline.stages import SeedStage
from esper.nissa.fmt import bits, count, number, pct, plural, points
from esper.store import Recorded

FLAT = 0.005
"""An epoch is "flat" when it does not beat the best accuracy before it by half a point."""

_SKIP_EVIDENCE = {"automatic", "why", "reason"}


@attrs.define
class _Seed:
    seed_id: str
    slot: str
    blueprint: str
    params: int
    contribution: float | None = None
    alpha: float = 0.0


@attrs.define
class _Refusals:
    """A run of consecutive refusals of one command."""

    command: str
    first_epoch: int | None
    last_epoch: int | None
    reason: str
    times: int = 1


@attrs.define
class _Story:
    run_id: str | None
    lines: list[str] = attrs.Factory(list)
    accuracies: list[float] = attrs.Factory(list)
    epochs: list[EpochEnded] = attrs.Factory(list)
    seeds: dict[str, _Seed] = attrs.Factory(dict)
    host_params: int | None = None
    embargo: int | None = None
    pending: CommandIssued | None = None
    refusals: _Refusals | None = None
    fossilized: list[str] = attrs.Factory(list)
    culled: list[str] = attrs.Factory(list)
    ended: bool = False

    def say(self, epoch: int | None, text: str) -> None:
        self._flush_refusals()
        self.lines.append(f"epoch {epoch}: {text}" if epoch is not None else text)

    def _flush_refusals(self) -> None:
        r, self.refusals = self.refusals, None
        if r is None:
            return
        if r.times == 1:
            self.lines.append(f"epoch {r.first_epoch}: {r.command} refused: {r.reason}")
        else:
            self.lines.append(
                f"epochs {r.first_epoch}–{r.last_epoch}: {r.command} refused {r.times}× (last: {r.reason})"
            )

    def refuse(self, epoch: int | None, command: str, reason: str) -> None:
        r = self.refusals
        if r is not None and r.command == command:
            r.last_epoch, r.reason, r.times = epoch, reason, r.times + 1
            return
        self._flush_refusals()
        self.refusals = _Refusals(command, epoch, epoch, reason)

    def flat_epochs(self) -> int:
        acc = self.accuracies
        flat = 0
        for i in range(len(acc) - 1, 0, -1):
            if acc[i] - max(acc[:i]) >= FLAT:
                break
            flat += 1
        return flat

    def params_now(self) -> int | None:
        return self.epochs[-1].params if self.epochs else self.host_params


def narrate(events: Iterable[Event | Recorded], run_id: str | None = None) -> list[str]:
    """The run's story, one plain line per thing that happened."""
    story = _Story(run_id)
    for item in events:
        if isinstance(item, Recorded):
            story.run_id = story.run_id or item.run_id
            event = item.event
        else:
            event = item
        _tell(story, event)
    story._flush_refusals()
    if not story.ended and story.lines:
        last = story.epochs[-1] if story.epochs else None
        where = f"after epoch {last.epoch}, validation accuracy {pct(last.val_accuracy)}" if last else "before any epoch"
        story.lines.append(f"(no end recorded yet: {where})")
    return story.lines


def _tell(story: _Story, event: Event) -> None:
    if isinstance(event, RunStarted):
        c = event.config
        story.host_params, story.embargo = event.host_params, c.lifecycle.embargo_epochs
        epochs = f"{c.epochs} epochs" if c.epochs else "the task's epoch budget"
        name = f"run {story.run_id}" if story.run_id else "run"
        cap = f", at most {c.lifecycle.max_params:,} in all" if c.lifecycle.max_params else ""
        story.say(None, f"{name}: {c.task}, controller {c.controller}, seed {c.seed}, {epochs}; "
                        f"host {count(event.host_params)} params{cap}; slots {', '.join(event.slots) or 'none'}")
    elif isinstance(event, EpochEnded):
        story.epochs.append(event)
        story.accuracies.append(event.val_accuracy)
        for t in event.seeds:
            seed = story.seeds.get(t.seed_id)
            if seed is not None:
                seed.alpha = t.alpha
                if t.contribution is not None:
                    seed.contribution = t.contribution
        story.pending = None
    elif isinstance(event, CommandIssued):
        story.pending = event
    elif isinstance(event, CommandRejected):
        story.refuse(event.epoch, describe_command(event.command), explain_rejection(event.reason, event.evidence))
        story.pending = None
    elif isinstance(event, SeedGerminated):
        story.seeds[event.seed_id] = _Seed(event.seed_id, event.slot, event.blueprint, event.params)
        if event.epoch == 0 and story.pending is None:
            return  # built up front (the scratch baseline): told with its `build` transition
        story.say(event.epoch, f"{_why_germinate(story)} → germinated {event.blueprint} in slot {event.slot} "
                               f"as {event.seed_id} ({count(event.params, sign=True)} params)")
    elif isinstance(event, SeedTransitioned):
        _tell_transition(story, event)
    elif isinstance(event, RunFinished):
        story.ended = True
        _tell_end(story, event)
    elif isinstance(event, RunFailed):
        story.ended = True
        story.say(event.epoch, f"run {event.error}" if event.interrupted else f"run failed: {event.error}")
    elif isinstance(event, RunResumed):
        story.ended = False
        again = f" (epochs {event.checkpoint_epoch + 1}-{event.epoch} trained again, as logged)" \
            if event.checkpoint_epoch < event.epoch else ""
        story.say(event.epoch, f"resumed from its checkpoint of epoch {event.checkpoint_epoch}{again}")


def _why_germinate(story: _Story) -> str:
    issued = story.pending
    who = f"{issued.controller}: " if issued is not None else ""
    if not story.accuracies:
        return f"{who}before the first epoch"
    flat = story.flat_epochs()
    acc = pct(story.accuracies[-1])
    if flat:
        return f"{who}validation accuracy flat for {plural(flat, 'epoch')} at {acc}"
    return f"{who}validation accuracy {acc} and still rising"


def _tell_transition(story: _Story, e: SeedTransitioned) -> None:
    seed = story.seeds.get(e.seed_id)
    ev = e.evidence or {}
    to = e.to_stage
    if e.trigger == "build":
        story.fossilized.append(e.seed_id)
        what = f"{seed.blueprint} in slot {e.slot} ({count(seed.params, sign=True)} params)" if seed else f"slot {e.slot}"
        like = f" from run {ev['like']}'s final architecture" if ev.get("like") else ""
        story.say(e.epoch, f"{e.seed_id} built into the host{like}: {what}")
    elif to == SeedStage.BLENDING.value:
        parts = []
        if "gradient_health" in ev:
            parts.append(f"gradient health {number(ev['gradient_health'])}")
        if ev.get("seed_loss_at_entry") is not None and ev.get("seed_loss") is not None:
            over = f" over {plural(ev['epochs_in_stage'], 'epoch')}" if "epochs_in_stage" in ev else ""
            parts.append(f"seed loss {number(ev['seed_loss_at_entry'])} → {number(ev['seed_loss'])}{over}")
        detail = f" ({', '.join(parts)})" if parts else ""
        story.say(e.epoch, f"{e.seed_id} passed the training gate{detail} → blending in")
    elif to == SeedStage.FOSSILIZED.value:
        story.fossilized.append(e.seed_id)
        contribution = seed.contribution if seed else None
        tail = f"validation accuracy {pct(ev['val_accuracy'])}" if ev.get("val_accuracy") is not None else ""
        host = f"host now {count(story.params_now())} params"
        story.say(e.epoch, f"{e.seed_id} fossilized, contribution {points(contribution)} "
                           f"({', '.join(x for x in (tail, host) if x)})")
    elif to == SeedStage.CULLED.value:
        story.culled.append(e.seed_id)
        what = f"{e.seed_id} ({seed.blueprint})" if seed else e.seed_id
        if ev.get("automatic"):
            cause = f"culled automatically: {ev.get('why', 'forced')}"
        else:
            cause = f"culled by the controller: {ev.get('reason', 'no reason given')}"
        details = _evidence(ev)
        if seed is not None and seed.contribution is not None and "contribution" not in ev:
            details = ", ".join(x for x in (details, f"last contribution {points(seed.contribution)}") if x)
        embargo = f"; slot {e.slot} embargoed for {plural(story.embargo, 'epoch')}" if story.embargo else ""
        story.say(e.epoch, f"{what} {cause}{f' ({details})' if details else ''}{embargo}")
    elif to == SeedStage.DORMANT.value and e.from_stage == SeedStage.EMBARGOED.value:
        story.say(e.epoch, f"slot {e.slot} free again (embargo after {e.seed_id} over)")
    # GERMINATED is told with the germination, TRAINING and EMBARGOED follow automatically.


def _evidence(ev: dict[str, Any]) -> str:
    out = []
    for key, value in ev.items():
        if key in _SKIP_EVIDENCE or value is None:
            continue
        if key in ("contribution", "auto_cull_contribution") and isinstance(value, (int, float)):
            out.append(f"{key.replace('_', ' ')} {points(value)}")
        else:
            out.append(f"{key.replace('_', ' ')} {number(value)}")
    return ", ".join(out)


def explain_rejection(reason: str, evidence: dict[str, Any] | None = None) -> str:
    """A refusal told from its evidence (`CommandRejected.evidence`), never from the wording of its reason.

    A closed gate names the comparisons that failed: known pairs (value and threshold) become
    "gradient health 0.1 < 0.3". Any other rule is told by its reason, and so is a refusal logged before
    refusals carried evidence.
    """
    prefix = "gate closed: "
    evidence = evidence or {}
    if evidence.get("rule") not in ("training_gate", "fossilize_gate"):
        return reason
    ev = {k: float(v) for k, v in evidence.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    failed = []
    if {"gradient_health", "gradient_health_threshold"} <= ev.keys() and ev["gradient_health"] < ev["gradient_health_threshold"]:
        failed.append(f"gradient health {number(ev['gradient_health'])} < {number(ev['gradient_health_threshold'])}")
    if {"epochs_in_stage", "min_training_epochs"} <= ev.keys() and ev["epochs_in_stage"] < ev["min_training_epochs"]:
        failed.append(f"{int(ev['epochs_in_stage'])} of {int(ev['min_training_epochs'])} training epochs")
    if {"seed_loss", "seed_loss_at_entry"} <= ev.keys() and not ev["seed_loss"] < ev["seed_loss_at_entry"]:
        failed.append(f"seed loss not improving ({number(ev['seed_loss'])}, {number(ev['seed_loss_at_entry'])} at entry)")
    if "alpha" in ev and ev["alpha"] < 1.0:
        failed.append(f"alpha {number(ev['alpha'])} < 1")
    if {"epochs_at_full_alpha", "stability_window"} <= ev.keys() and ev["epochs_at_full_alpha"] < ev["stability_window"]:
        failed.append(f"{int(ev['epochs_at_full_alpha'])} of {int(ev['stability_window'])} epochs at full alpha")
    if {"val_accuracy", "val_accuracy_at_blend_start", "regression_tolerance"} <= ev.keys():
        drop = ev["val_accuracy_at_blend_start"] - ev["val_accuracy"]
        if drop > ev["regression_tolerance"]:
            failed.append(f"validation accuracy {pct(ev['val_accuracy'])} is {100 * drop:.1f} points below "
                          f"{pct(ev['val_accuracy_at_blend_start'])} at blend start "
                          f"(tolerance {100 * ev['regression_tolerance']:.1f})")
    return prefix + "; ".join(failed) if failed else reason


def _tell_end(story: _Story, e: RunFinished) -> None:
    best = max(story.epochs, key=lambda x: x.val_accuracy) if story.epochs else None
    best_text = f", best {pct(best.val_accuracy)} at epoch {best.epoch}" if best else ""
    growth = ""
    if story.host_params and e.params == story.host_params:
        growth = " (the host alone)"
    elif story.host_params:
        growth = f" ({(e.params - story.host_params) / story.host_params:+.0%} over the {count(story.host_params)} host)"
    alive = [s.seed_id for s in story.seeds.values() if s.seed_id not in story.fossilized and s.seed_id not in story.culled]
    seeds = (f"{len(story.seeds)} germinated, {len(story.fossilized)} fossilized, {len(story.culled)} culled"
             + (f", {len(alive)} unfinished ({', '.join(alive)})" if alive else ""))
    measured = "" if e.val_bits_per_char is None else \
        f"; {bits(e.val_bits_per_char)} bits per character (test {bits(e.test_bits_per_char)})"
    story.say(e.epoch, f"finished: validation accuracy {pct(e.val_accuracy)} (test {pct(e.test_accuracy)}){best_text}"
                       f"{measured}; {count(e.params)} params{growth}; seeds: {seeds}")


def describe_command(command: Command) -> str:
    """A command in words, with what it names: `germinate conv_light in slot mid`, `cull s2-mid`."""
    if isinstance(command, Germinate):
        return f"germinate {command.blueprint} in slot {command.slot}"
    if isinstance(command, Advance):
        return f"advance {command.seed_id}"
    if isinstance(command, Cull):
        return f"cull {command.seed_id}"
    if isinstance(command, Wait):
        return "wait"
    return type(command).__name__.lower()
