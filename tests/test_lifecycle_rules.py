"""The lifecycle's rules (DESIGN.md, Seed lifecycle), asserted over generated runs with generated configs.

The test feeds the garden commands and telemetry; every expectation is re-derived here, from the events the
garden emitted and the numbers the test fed in, as DESIGN.md states the rules. Nothing in
`esper.leyline.lifecycle` is called or read (no gate, condition or transition table), so a machine whose gate
is always open, whose embargo is an epoch short or whose cap is not checked fails these tests.

`Ledger` is the test's own fold of the emitted events. Each event is checked as it arrives (evidence equals
what the ledger recomputes and satisfies its thresholds; sizes and the cap; the embargo's length) and each
decision of the garden is compared with the one the ledger expects (commands accepted or refused by the
right rule, the automatic transitions of every tick). `ModelRulesMachine` drives a real Kasmina model with
the events, as the trainer does, and compares the model's stages with the garden's after every step.
"""

import bisect
import math
from collections import OrderedDict

import hypothesis.strategies as st
import msgspec
import pytest
import torch
import torch.nn.functional as F
from torch import nn
import strategies as gen
from tiers import examples
from hypothesis import HealthCheck, event, given, note, settings

from esper.kasmina import BLUEPRINTS as FAMILIES
from esper.kasmina import build_host, grow
from esper.leyline import (
    Advance,
    CommandRejected,
    Cull,
    EpochEnded,
    Germinate,
    LifecycleConfig,
    RunConfig,
    RunStarted,
    SeedGerminated,
    SeedStage,
    SeedTelemetry,
    SeedTransitioned,
)
from esper.leyline.garden import Garden
from esper.tolaria.tasks import TASKS

MNIST1D = TASKS["mnist1d"]
SLOTS = ["early", "mid", "late"]
BLUEPRINTS = ["conv_light", "conv_heavy", "norm"]

# DESIGN.md's lifecycle table, written out: (from, trigger) -> to.
MOVES = {
    ("DORMANT", "germinate"): "GERMINATED",
    ("GERMINATED", "start_training"): "TRAINING",
    ("TRAINING", "advance"): "BLENDING",
    ("TRAINING", "cull"): "CULLED",
    ("BLENDING", "advance"): "FOSSILIZED",
    ("BLENDING", "cull"): "CULLED",
    ("CULLED", "cleanup"): "EMBARGOED",
    ("EMBARGOED", "cooldown_complete"): "DORMANT",
    ("DORMANT", "build"): "FOSSILIZED",
}
WORKING = ("TRAINING", "BLENDING")
OCCUPYING = ("GERMINATED", "TRAINING", "BLENDING", "CULLED", "EMBARGOED")
"""Stages in which a seed holds its slot."""
COUNTED = ("GERMINATED", "TRAINING", "BLENDING", "FOSSILIZED")
"""Stages whose seeds `max_params` counts."""


def embargo_length(config: LifecycleConfig) -> int:
    """Epochs an embargo lasts. Cleanup and cooldown are two ticks, so an embargo of 0 epochs still spans the
    one epoch between them (`test_an_embargo_of_zero_epochs_lasts_one`)."""
    return max(1, config.embargo_epochs)


class Seed:
    def __init__(self, slot: str, blueprint: str, params: int, at: int):
        self.slot, self.blueprint, self.params = slot, blueprint, params
        self.stage = "DORMANT"
        self.entered = at
        """History index of the event that put the seed in its stage."""


class Ledger:
    """The test's own fold of what the garden emitted; checks each event as it arrives."""

    def __init__(self, start: RunStarted):
        self.start = start
        self.config = start.config.lifecycle
        self.history: list = [start]
        self.epoch_at: list[int] = []
        """History indices of the EpochEnded events."""
        self.seeds: dict[str, Seed] = {}
        self.telemetry: dict[str, list[tuple[int, SeedTelemetry]]] = {}
        self.embargoes: list[tuple[str, int]] = []
        """(slot, epochs) of every embargo that ended: how many EpochEnded lay between cleanup and cooldown."""

    # ---- what the history says -----------------------------------------------------------------

    def epochs_between(self, a: int, b: int) -> int:
        """EpochEnded events strictly between history indices a and b."""
        return bisect.bisect_left(self.epoch_at, b) - bisect.bisect_right(self.epoch_at, a)

    def val_accuracy_before(self, at: int) -> float | None:
        i = bisect.bisect_left(self.epoch_at, at)
        return self.history[self.epoch_at[i - 1]].val_accuracy if i else None

    def reports(self, seed_id: str, since: int = -1, before: int | None = None) -> list[SeedTelemetry]:
        before = len(self.history) if before is None else before
        return [t for i, t in self.telemetry.get(seed_id, []) if since < i < before]

    def latest(self, seed_id: str, before: int) -> SeedTelemetry | None:
        seen = self.reports(seed_id, before=before)
        return seen[-1] if seen else None

    def params(self) -> int:
        return self.start.host_params + sum(s.params for s in self.seeds.values() if s.stage in COUNTED)

    def size(self, slot: str, blueprint: str) -> int:
        return self.start.seed_sizes[slot][blueprint]

    # ---- the rules, as DESIGN.md states them ---------------------------------------------------

    def training_evidence(self, seed_id: str, at: int) -> tuple[bool, dict]:
        """TRAINING → BLENDING: gradient health ≥ threshold, min epochs in TRAINING, seed loss below its first."""
        seed, cfg, last = self.seeds[seed_id], self.config, self.latest(seed_id, at)
        losses = [t.seed_loss for t in self.reports(seed_id, seed.entered, at) if t.seed_loss is not None]
        evidence = {
            "gradient_health": last.gradient_health if last else 0.0,
            "gradient_health_threshold": cfg.gradient_health_threshold,
            "epochs_in_stage": self.epochs_between(seed.entered, at),
            "min_training_epochs": cfg.min_training_epochs,
            "seed_loss": last.seed_loss if last else None,
            "seed_loss_at_entry": losses[0] if losses else None,
        }
        return self.training_gate_holds(evidence), evidence

    @staticmethod
    def training_gate_holds(e: dict) -> bool:
        improving = e["seed_loss"] is not None and e["seed_loss_at_entry"] is not None and e["seed_loss"] < e["seed_loss_at_entry"]
        return (e["gradient_health"] >= e["gradient_health_threshold"]
                and e["epochs_in_stage"] >= e["min_training_epochs"] and improving)

    def fossilize_evidence(self, seed_id: str, at: int) -> tuple[bool, dict]:
        """BLENDING → FOSSILIZED: α = 1, held for the stability window, accuracy not regressed beyond tolerance."""
        seed, cfg, last = self.seeds[seed_id], self.config, self.latest(seed_id, at)
        evidence = {
            "alpha": last.alpha if last else 0.0,
            "epochs_at_full_alpha": sum(t.alpha >= 1.0 for t in self.reports(seed_id, seed.entered, at)),
            "stability_window": cfg.stability_window,
            "val_accuracy": self.val_accuracy_before(at),
            "val_accuracy_at_blend_start": self.val_accuracy_before(seed.entered),
            "regression_tolerance": cfg.regression_tolerance,
        }
        return self.fossilize_gate_holds(evidence), evidence

    @staticmethod
    def fossilize_gate_holds(e: dict) -> bool:
        if e["val_accuracy"] is None or e["val_accuracy_at_blend_start"] is None:
            return False
        regression = e["val_accuracy_at_blend_start"] - e["val_accuracy"]
        return (e["alpha"] >= 1.0 and e["epochs_at_full_alpha"] >= e["stability_window"]
                and regression <= e["regression_tolerance"])

    def embargo_evidence(self, seed_id: str, at: int) -> tuple[bool, dict]:
        served = self.epochs_between(self.seeds[seed_id].entered, at)
        return served >= self.config.embargo_epochs, {"epochs_in_stage": served, "embargo_epochs": self.config.embargo_epochs}

    def cull_due(self, seed_id: str, at: int) -> bool:
        """Automatic culls: a training seed whose gradients died or loss diverged (after an epoch in TRAINING);
        a blending seed whose contribution, measured while blending, stays below the floor at full α."""
        seed, cfg, last = self.seeds[seed_id], self.config, self.latest(seed_id, at)
        if last is None:
            return False
        if seed.stage == "TRAINING":
            diverged = last.seed_loss is not None and not math.isfinite(last.seed_loss)
            return self.epochs_between(seed.entered, at) > 0 and (diverged or last.gradient_health <= 0.0)
        blending = self.reports(seed_id, seed.entered, at)
        full = sum(t.alpha >= 1.0 for t in blending)
        contribution = blending[-1].contribution if blending else None
        return contribution is not None and full >= cfg.auto_cull_patience and contribution < cfg.auto_cull_contribution

    def germination_refusal(self, slot: str, blueprint: str) -> str | None:
        """The rule a Germinate breaks, in DESIGN.md's order, or None when it must be accepted."""
        if slot not in self.start.slots:
            return "unknown_slot"
        offered = self.start.seed_sizes.get(slot)  # what the slot's family holds, when the run recorded it
        if blueprint not in self.start.blueprints or (offered is not None and blueprint not in offered):
            return "unknown_blueprint"
        holder = [s for s in self.seeds.values() if s.slot == slot and s.stage in OCCUPYING]
        if holder:
            return "embargo" if holder[0].stage in ("CULLED", "EMBARGOED") else "slot_occupied"
        cap = self.config.max_params
        if cap and self.params() + self.size(slot, blueprint) > cap:
            return "max_params"
        return None

    def expected_tick(self) -> list[tuple[str, str]]:
        """(seed, trigger) of every automatic transition due now, in germination order."""
        at, due = len(self.history), []
        for seed_id, seed in self.seeds.items():
            if seed.stage == "GERMINATED":
                due.append((seed_id, "start_training"))
            elif seed.stage == "CULLED":
                due.append((seed_id, "cleanup"))
            elif seed.stage == "EMBARGOED" and self.embargo_evidence(seed_id, at)[0]:
                due.append((seed_id, "cooldown_complete"))
            elif seed.stage in WORKING and self.cull_due(seed_id, at):
                due.append((seed_id, "cull"))
        return due

    # ---- the fold, checking every event --------------------------------------------------------

    def record(self, event) -> None:
        at = len(self.history)
        self.history.append(event)
        if isinstance(event, EpochEnded):
            self.epoch_at.append(at)
            for t in event.seeds:
                self.telemetry.setdefault(t.seed_id, []).append((at, t))
            for seed_id, seed in self.seeds.items():
                if seed.stage == "EMBARGOED":  # freed at the first tick it may be: never serves an epoch more
                    served = self.epochs_between(seed.entered, at + 1)
                    assert served <= embargo_length(self.config), f"{seed_id} still embargoed after {served} epochs"
        elif isinstance(event, SeedGerminated):
            assert event.params == self.size(event.slot, event.blueprint), "a seed's size is not the run's"
            assert self.germination_refusal(event.slot, event.blueprint) is None, f"germination of {event.seed_id} breaks a rule"
            assert event.seed_id not in self.seeds
            self.seeds[event.seed_id] = Seed(event.slot, event.blueprint, event.params, at)
        elif isinstance(event, SeedTransitioned):
            self._check_transition(event, at)
            seed = self.seeds[event.seed_id]
            seed.stage, seed.entered = event.to_stage, at
        if self.config.max_params:
            assert self.params() <= self.config.max_params, f"{self.params():,} parameters over the cap"

    def _check_transition(self, event: SeedTransitioned, at: int) -> None:
        seed = self.seeds[event.seed_id]
        assert event.from_stage == seed.stage, f"{event.seed_id} is {seed.stage}, moved from {event.from_stage}"
        assert MOVES.get((event.from_stage, event.trigger)) == event.to_stage, f"no such move: {event}"
        move, ev = (event.from_stage, event.to_stage), event.evidence
        if move == ("TRAINING", "BLENDING"):
            holds, expected = self.training_evidence(event.seed_id, at)
            assert ev == expected and self.training_gate_holds(ev) and holds, f"training gate: {ev} vs {expected}"
        elif move == ("BLENDING", "FOSSILIZED"):
            holds, expected = self.fossilize_evidence(event.seed_id, at)
            assert ev == expected and self.fossilize_gate_holds(ev) and holds, f"fossilize gate: {ev} vs {expected}"
        elif move == ("EMBARGOED", "DORMANT"):
            holds, expected = self.embargo_evidence(event.seed_id, at)
            assert ev == expected and ev["epochs_in_stage"] >= ev["embargo_epochs"] and holds, f"embargo: {ev} vs {expected}"
            served = self.epochs_between(seed.entered, at)
            assert served == embargo_length(self.config), f"embargo lasted {served} epochs"
            self.embargoes.append((event.slot, served))
        elif event.to_stage == "CULLED":
            if ev.get("automatic"):
                assert self.cull_due(event.seed_id, at), f"automatic cull of {event.seed_id} not due: {ev}"
            else:
                assert isinstance(ev.get("reason"), str) and ev["reason"].strip()


class Run:
    """One generated run of the garden alone: generated sizes, cap, config, commands and telemetry. Every
    decision the garden takes is compared with the ledger's, every event checked as it is folded."""

    def __init__(self, data):
        self.data = data
        start = self.run_start()
        note(f"RunStarted: host_params={start.host_params}, seed_sizes={start.seed_sizes}, {start.config.lifecycle}")
        self.garden = Garden()
        self.garden.apply(start)
        self.ledger = Ledger(start)
        self.epoch = 0
        self.losses: dict[str, float | None] = {}

    def draw(self, strategy, label: str):
        return self.data.draw(strategy, label=label)

    def run_start(self) -> RunStarted:
        host = self.draw(gen.host_sizes, "host_params")
        sizes = self.draw(gen.seed_size_tables(SLOTS, BLUEPRINTS), "seed_sizes")
        config = self.draw(gen.rule_configs, "lifecycle")
        config = msgspec.structs.replace(config, max_params=self.draw(gen.caps(host, sizes), "max_params"))
        return RunStarted(preset=MNIST1D, config=RunConfig(lifecycle=config), host_params=host, slots=SLOTS,
                          blueprints=BLUEPRINTS, seed_sizes=sizes)

    def play(self, epochs: int) -> None:
        """Each epoch: the tick, training, `EpochEnded`, then up to three commands."""
        for _ in range(epochs):
            self.end_epoch()
            for _ in range(self.draw(st.integers(0, 3), "commands")):
                getattr(self, self.draw(st.sampled_from(["germinate"] * 2 + ["advance"] * 3 + ["cull"]), "command"))()
            self.check()

    def emit(self, events) -> None:
        for e in events:
            note(f"  {e!r}")
            self.ledger.record(e)
            self.garden.apply(e)
            if isinstance(e, SeedTransitioned):  # what the generated runs reach (--hypothesis-show-statistics)
                event(f"{e.trigger} to {e.to_stage}")
            elif isinstance(e, CommandRejected):
                event(f"refused by {e.evidence['rule']}")

    def pick_seed(self) -> str:
        """Mostly a training or blending seed, sometimes any seed of the run, sometimes none."""
        working = [sid for sid, s in self.ledger.seeds.items() if s.stage in WORKING]
        pool = self.draw(st.sampled_from(["working"] * 4 + ["any", "none"]), "pool")
        choices = {"working": working, "any": list(self.ledger.seeds), "none": []}[pool]
        return self.draw(st.sampled_from(choices), "seed") if choices else "nope"

    def refused(self, outcome, rule_name: str) -> CommandRejected:
        assert len(outcome) == 1 and isinstance(outcome[0], CommandRejected), f"accepted, expected {rule_name}: {outcome}"
        assert outcome[0].evidence["rule"] == rule_name, f"refused by {outcome[0].evidence}, expected {rule_name}"
        return outcome[0]

    # ---- commands --------------------------------------------------------------------------------

    def germination_choices(self) -> tuple[list[str], list[str]]:
        return SLOTS + ["nowhere"], BLUEPRINTS + ["bogus"]

    def germinate(self):
        slots, blueprints = self.germination_choices()
        free = [s for s in SLOTS if not any(x.slot == s and x.stage in OCCUPYING for x in self.ledger.seeds.values())]
        slot = self.draw(st.sampled_from(free if free and self.draw(st.booleans(), "free slot") else slots), "slot")
        blueprint = self.draw(st.sampled_from(blueprints[:-1] * 4 + blueprints[-1:]), "blueprint")
        note(f"Germinate({slot}, {blueprint}) at epoch {self.epoch}")
        expected = self.ledger.germination_refusal(slot, blueprint)
        outcome = self.garden.handle(Germinate(slot=slot, blueprint=blueprint), self.epoch)
        if expected:
            self.refused(outcome, expected)
        else:
            assert [type(e) for e in outcome] == [SeedGerminated, SeedTransitioned], f"refused: {outcome}"
            assert outcome[0].params == self.ledger.size(slot, blueprint)
        self.emit(outcome)

    def advance(self):
        seed_id = self.pick_seed()
        note(f"Advance({seed_id}) at epoch {self.epoch}")
        outcome = self.garden.handle(Advance(seed_id=seed_id), self.epoch)
        seed, at = self.ledger.seeds.get(seed_id), len(self.ledger.history)
        if seed is None:
            self.refused(outcome, "unknown_seed")
        elif seed.stage in WORKING:
            gate = "training_gate" if seed.stage == "TRAINING" else "fossilize_gate"
            evaluate = self.ledger.training_evidence if seed.stage == "TRAINING" else self.ledger.fossilize_evidence
            holds, evidence = evaluate(seed_id, at)
            if holds:
                assert len(outcome) == 1 and isinstance(outcome[0], SeedTransitioned), f"{gate} shut, expected open: {outcome}"
            else:
                assert self.refused(outcome, gate).evidence == {"rule": gate, **evidence}
        else:
            self.refused(outcome, "illegal_move")
        self.emit(outcome)

    def cull(self):
        seed_id = self.pick_seed()
        note(f"Cull({seed_id}) at epoch {self.epoch}")
        outcome = self.garden.handle(Cull(seed_id=seed_id, reason="test"), self.epoch)
        seed = self.ledger.seeds.get(seed_id)
        if seed is None:
            self.refused(outcome, "unknown_seed")
        elif seed.stage in WORKING:
            assert len(outcome) == 1 and isinstance(outcome[0], SeedTransitioned) and outcome[0].evidence == {"reason": "test"}
        else:
            self.refused(outcome, "illegal_move")
        self.emit(outcome)

    # ---- epochs ----------------------------------------------------------------------------------

    def train_epoch(self) -> None:
        """What the model does during an epoch (nothing without one)."""

    def alpha(self, seed_id: str) -> float:
        stage = self.ledger.seeds[seed_id].stage
        return self.draw(gen.blend_alphas, "alpha") if stage == "BLENDING" else 0.0

    def seed_loss(self, seed_id: str) -> float | None:
        last = self.losses.get(seed_id) or self.draw(gen.first_losses, "first seed_loss")
        trend = self.draw(gen.loss_trends, "seed_loss trend")
        self.losses[seed_id] = None if trend is None else last * trend
        return self.losses[seed_id]

    def end_epoch(self):
        self.epoch += 1
        note(f"epoch {self.epoch}")
        ticked = self.garden.tick(self.epoch)
        assert [(e.seed_id, e.trigger) for e in ticked] == self.ledger.expected_tick(), f"tick: {ticked}"
        self.emit(ticked)
        self.train_epoch()
        telemetry = []
        for seed_id, seed in self.ledger.seeds.items():
            if seed.stage not in WORKING or not self.draw(st.integers(0, 19), "measured"):  # 1 in 20 unmeasured
                continue
            telemetry.append(SeedTelemetry(
                seed_id=seed_id, alpha=self.alpha(seed_id), gradient_health=self.draw(gen.gradient_healths, "health"),
                seed_loss=self.seed_loss(seed_id), contribution=self.draw(gen.contributions, "contribution"),
            ))
        accuracy = self.val_accuracy()
        self.emit([EpochEnded(epoch=self.epoch, train_loss=1.0, val_loss=1.0, val_accuracy=accuracy,
                              params=self.ledger.params(), seeds=telemetry)])

    def val_accuracy(self) -> float:
        return self.draw(gen.val_accuracies, "val_accuracy")

    def check(self) -> None:
        for seed_id, seed in self.ledger.seeds.items():
            assert self.garden.seeds[seed_id].stage.value == seed.stage
        assert self.garden.params() == self.ledger.params()


@settings(max_examples=examples(80), deadline=None)
@given(data=st.data(), epochs=st.integers(5, 25))
def test_generated_runs_keep_every_rule(data, epochs):
    Run(data).play(epochs)


class EagerRun(Run):
    """A run that asks to advance its seed after every epoch (and germinates one when it has none), so that each
    gate is tried at the first epoch it may open: on its edges, a stability window just filled or a blend that ends
    level with where it began, which commands drawn at random seldom meet."""

    def pick_seed(self) -> str:
        working = [seed_id for seed_id, seed in self.ledger.seeds.items() if seed.stage in WORKING]
        return working[0] if working else "nope"

    def val_accuracy(self) -> float:
        """Often the last epoch's again, so that blends end level with where they began."""
        last = self.ledger.val_accuracy_before(len(self.ledger.history))
        return last if last is not None and self.draw(st.booleans(), "flat") else super().val_accuracy()

    def play(self, epochs: int) -> None:
        for _ in range(epochs):
            self.end_epoch()
            if any(seed.stage in WORKING for seed in self.ledger.seeds.values()):
                self.advance()
            else:
                self.germinate()
            self.check()


@settings(max_examples=examples(60), deadline=None)
@given(data=st.data(), epochs=st.integers(5, 25))
def test_gates_tried_after_every_epoch_open_exactly_when_their_rules_hold(data, epochs):
    EagerRun(data).play(epochs)


# ---- a real model driven by the garden's events ----------------------------------------------------

STEPS_PER_EPOCH = 1


class ModelRun(Run):
    """The same runs on a real cnn1d host, its sizes the model's, its α the model's: the model carries out
    every accepted event the way the trainer does (`Trainer.realize`), and its stages must be the garden's."""

    def run_start(self) -> RunStarted:
        torch.manual_seed(0)
        self.model = build_host("cnn1d", channels=4)
        self.x = torch.randn(2, 1, 40)
        self.announced: dict[str, SeedGerminated] = {}
        self.fossilized: list[str] = []
        """Seed ids in the order the log fossilized them (not the order they germinated in)."""
        host, sizes = self.model.param_count(), self.model.seed_sizes()
        config = self.draw(gen.rule_configs, "lifecycle")
        config = msgspec.structs.replace(config, max_params=self.draw(gen.caps(host, sizes), "max_params"))
        return RunStarted(preset=MNIST1D, config=RunConfig(lifecycle=config), host_params=host,
                          slots=self.model.slot_names, blueprints=list(FAMILIES["conv1d"]), seed_sizes=sizes)

    def germination_choices(self) -> tuple[list[str], list[str]]:
        return SLOTS, list(FAMILIES["conv1d"])

    def emit(self, events) -> None:
        super().emit(events)
        for e in events:
            self.realize(e)
        self.check_model()

    def realize(self, event) -> None:
        """`Trainer.realize`, with the model's public methods."""
        model = self.model
        if isinstance(event, SeedGerminated):
            self.announced[event.seed_id] = event
        elif isinstance(event, SeedTransitioned) and event.trigger == "germinate":
            g = self.announced.pop(event.seed_id)
            assert model.germinate(g.slot, g.seed_id, g.blueprint) == g.params
        elif isinstance(event, SeedTransitioned):
            to = SeedStage(event.to_stage)
            if to is SeedStage.TRAINING:
                model.start_training(event.seed_id)
            elif to is SeedStage.BLENDING:
                model.start_blending(event.seed_id, self.ledger.config.blend_epochs * STEPS_PER_EPOCH)
            elif to is SeedStage.FOSSILIZED:
                model.fossilize(event.seed_id)
                self.fossilized.append(event.seed_id)
            elif to is SeedStage.CULLED:
                model.cull(event.seed_id)

    def train_epoch(self) -> None:
        with torch.no_grad():
            self.model(self.x)
        self.model.step_blending()

    def alpha(self, seed_id: str) -> float:
        return self.model.alpha(seed_id)

    def check_model(self) -> None:
        """The model's stage of every seed is the garden's; culled, embargoed and freed seeds are gone from it."""
        live = {sid for sid, s in self.garden.seeds.items() if s.stage.value in ("GERMINATED", "TRAINING", "BLENDING")}
        assert set(self.model.live_seeds()) == live
        for seed_id, seed in self.garden.seeds.items():
            if seed.stage.value in COUNTED:
                assert self.model.stage(seed_id) is seed.stage, seed_id
            else:
                with pytest.raises(ValueError, match="no seed"):
                    self.model.stage(seed_id)
        assert set(self.fossilized) == {sid for sid, s in self.garden.seeds.items() if s.stage.value == "FOSSILIZED"}
        assert self.model.fossil_order == self.fossilized


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), epochs=st.integers(5, 25))
def test_the_models_stages_are_the_gardens(data, epochs):
    ModelRun(data).play(epochs)


def test_an_embargo_of_zero_epochs_lasts_one():
    """Cleanup and cooldown are two ticks: with `embargo_epochs=0` the slot still refuses germination for the
    one epoch between them."""
    config = LifecycleConfig(embargo_epochs=0, min_training_epochs=0)
    g = Garden()
    g.apply(RunStarted(preset=MNIST1D, config=RunConfig(lifecycle=config), slots=SLOTS, blueprints=BLUEPRINTS,
                       seed_sizes={s: {b: 1 for b in BLUEPRINTS} for s in SLOTS}))
    for decide in (lambda: g.handle(Germinate(slot="mid", blueprint="norm"), 0), lambda: g.tick(1),
                   lambda: g.handle(Cull(seed_id="s1-mid", reason="test"), 1), lambda: g.tick(2)):
        for e in decide():
            g.apply(e)
    assert g.seeds["s1-mid"].stage is SeedStage.EMBARGOED
    assert g.handle(Germinate(slot="mid", blueprint="norm"), 2)[0].evidence["rule"] == "embargo"
    g.apply(EpochEnded(epoch=2, train_loss=1, val_loss=1, val_accuracy=0.5, params=1))
    [freed] = g.tick(3)
    assert freed.trigger == "cooldown_complete" and freed.evidence == {"epochs_in_stage": 1, "embargo_epochs": 0}


# ---- a culled slot computes what the host computed before germination -------------------------------

def _image_host(host: str, shape: tuple[int, ...], **kw):
    model = build_host(host, **kw)
    return model, torch.randn(*shape), torch.randint(0, 10, (shape[0],))


def _token_model(causal: bool):
    """A user's model over token ids grown with one (B, T, D) slot "mid": the sequence families' host."""
    layers = nn.Sequential(OrderedDict(embed=nn.Embedding(256, 16), mid=nn.Linear(16, 16), head=nn.Linear(16, 10)))
    x = torch.randint(0, 256, (4, 6))
    return grow(layers, {"mid": "mid"}, example=x, causal=causal), x, torch.randint(0, 10, (4, 6))


def _mlp():
    """A user's MLP grown with one (B, D) slot "mid": the features family's host."""
    layers = nn.Sequential(OrderedDict(inp=nn.Linear(6, 16), mid=nn.ReLU(), head=nn.Linear(16, 10)))
    x = torch.randn(4, 6)
    return grow(layers, {"mid": "mid"}, example=x), x, torch.randint(0, 10, (4,))


HOST_OF_FAMILY = {"conv1d": lambda: _image_host("cnn1d", (8, 1, 40)),
                  "conv2d": lambda: _image_host("resnet", (2, 3, 16, 16), width=4),
                  "sequence": lambda: _token_model(causal=False),
                  "causal_sequence": lambda: _token_model(causal=True),
                  "features": _mlp}


def _loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output.flatten(0, -2), y.flatten())


@pytest.mark.parametrize("family,blueprint", [(f, b) for f in FAMILIES for b in FAMILIES[f]])
def test_a_culled_slot_computes_the_host_before_germination(family, blueprint):
    torch.manual_seed(0)
    model, x, y = HOST_OF_FAMILY[family]()
    model.eval()  # the host's own BatchNorm statistics stay as they are: its output before is the reference
    with torch.no_grad():
        before = model(x)
    model.germinate("mid", "s", blueprint)
    model.start_training("s")
    params = model.seed_parameters("s")
    optimizer = torch.optim.SGD(params, lr=0.5)
    for _ in range(2):  # train the seed in isolation, as the trainer does
        model(x)
        grads = torch.autograd.grad(_loss(model.isolated_output("s", x), y), params)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
    assert any(p.abs().sum() > 0 for p in params)
    model.start_blending("s", steps=4)
    model.step_blending()
    assert 0 < model.alpha("s") < 1
    with torch.no_grad():
        blended = model(x)
    assert not torch.equal(blended, before), "the blended seed changed nothing: the test would prove nothing"
    model.cull("s")
    with torch.no_grad():
        after = model(x)
    assert torch.equal(after, before)
    model.train()
    with torch.no_grad():
        model(x)  # a train-mode pass runs without the culled seed too
    assert model.live_seeds() == {}
