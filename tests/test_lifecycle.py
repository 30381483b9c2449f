"""The lifecycle under random command sequences: invariants hold after every step."""

import copy

import hypothesis.strategies as st
import msgspec
import pytest
from fake_runs import as_recorded
from tiers import examples
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from esper.errors import IllegalEvent
from esper.leyline import (
    Advance,
    CommandIssued,
    CommandRejected,
    Cull,
    EpochEnded,
    Germinate,
    LifecycleConfig,
    RunConfig,
    RunFinished,
    RunStarted,
    SeedStage,
    SeedTelemetry,
    SeedTransitioned,
    Wait,
)
from esper.leyline.garden import Garden
from esper.leyline.lifecycle import same_evidence
from esper.nissa.runstate import RunState
from esper.store import Recorder
from esper.tolaria.tasks import TASKS

MNIST1D = TASKS["mnist1d"]

S = SeedStage
EDGES = {  # DESIGN.md's lifecycle, written out: not read from the machine's own table
    (S.DORMANT, S.GERMINATED), (S.GERMINATED, S.TRAINING), (S.TRAINING, S.BLENDING), (S.TRAINING, S.CULLED),
    (S.BLENDING, S.FOSSILIZED), (S.BLENDING, S.CULLED), (S.CULLED, S.EMBARGOED), (S.EMBARGOED, S.DORMANT),
    (S.DORMANT, S.FOSSILIZED),
}
SLOTS = ["early", "mid", "late"]
BLUEPRINTS = ["conv_light", "conv_heavy"]
CONFIG = LifecycleConfig(
    min_training_epochs=1, gradient_health_threshold=0.5, blend_epochs=2, stability_window=1,
    regression_tolerance=0.05, embargo_epochs=2, auto_cull_contribution=-0.05, auto_cull_patience=1,
)


def observable(garden: Garden) -> dict:
    """What must agree between the live garden and a replay of its log."""
    return {
        sid: (s.slot, s.blueprint, s.stage, s.epochs_in_stage, s.epochs_at_full_alpha, s.first_loss_in_stage,
              s.stage_entry_accuracy, s.telemetry, tuple(s.history))
        for sid, s in garden.seeds.items()
    } | {"_": (garden.epoch, garden.val_accuracy)}


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.recorder = Recorder(":memory:")
        self.garden = Garden()
        self.epoch = 0
        self.seq = 0
        self.transitions_seen = 0
        self.alpha: dict[str, float] = {}
        self.emit([RunStarted(preset=MNIST1D, config=RunConfig(lifecycle=CONFIG), slots=SLOTS, blueprints=BLUEPRINTS)])

    def teardown(self):
        try:
            self.replay_equals_live_and_seq_has_no_gaps()  # once per run: a replay of the whole log
        finally:
            self.recorder.close()

    def emit(self, events):
        for e in events:
            self.garden.apply(e)
            if isinstance(e, SeedTransitioned):
                self.transitions_seen += 1
        self.seq = self.recorder.append("run", events, self.seq)

    def command(self, command):
        before = copy.deepcopy(observable(self.garden))
        outcome = self.garden.handle(command, self.epoch)
        rejected = [e for e in outcome if isinstance(e, CommandRejected)]
        self.emit([CommandIssued(epoch=self.epoch, command=command, controller="test")] + outcome)
        if rejected or isinstance(command, Wait):
            assert observable(self.garden) == before, "a refused command changed state"

    def pick_seed(self, data) -> str:
        """Mostly a training or blending seed, sometimes any seed of the run, sometimes one that does not exist."""
        working = [s.seed_id for s in self.garden.seeds.values() if s.stage in (S.TRAINING, S.BLENDING)]
        pool = data.draw(st.sampled_from(["working", "working", "working", "any", "none"]))
        choices = {"working": working, "any": list(self.garden.seeds), "none": []}[pool]
        return data.draw(st.sampled_from(choices)) if choices else "nope"

    @rule(slot=st.sampled_from(SLOTS + ["nowhere"]), blueprint=st.sampled_from(BLUEPRINTS + ["bogus"]))
    def germinate(self, slot, blueprint):
        self.command(Germinate(slot=slot, blueprint=blueprint))

    @rule(data=st.data())
    def advance(self, data):
        self.command(Advance(seed_id=self.pick_seed(data)))

    @precondition(lambda self: self.epoch % 4 == 3)  # culls are rarer than advances, or nothing would ever blend
    @rule(data=st.data())
    def cull(self, data):
        self.command(Cull(seed_id=self.pick_seed(data), reason="test"))

    @rule()
    def wait(self):
        self.command(Wait())

    @rule(
        health=st.sampled_from([0.0, 0.3, 0.9, 0.9, 0.9, 0.9]), improving=st.booleans(),
        contribution=st.sampled_from([-0.1, 0.05, 0.1]), accuracy=st.sampled_from([0.4, 0.5, 0.52]), data=st.data(),
    )
    def end_epoch(self, health, improving, contribution, accuracy, data):
        self.epoch += 1
        self.emit(self.garden.tick(self.epoch))
        telemetry = []
        for seed in self.garden.active_seeds():
            if seed.stage is S.BLENDING:
                self.alpha[seed.seed_id] = min(1.0, self.alpha.get(seed.seed_id, 0.0) + data.draw(st.sampled_from([0.5, 1.0])))
            telemetry.append(SeedTelemetry(
                seed_id=seed.seed_id, alpha=self.alpha.get(seed.seed_id, 0.0), gradient_health=health,
                seed_loss=1.0 / (self.epoch if improving else 1), contribution=contribution if seed.stage is S.BLENDING else None,
            ))
        self.emit([EpochEnded(epoch=self.epoch, train_loss=1.0, val_loss=1.0, val_accuracy=accuracy,
                              params=100, seeds=telemetry)])

    @invariant()
    def no_stage_is_skipped(self):
        for seed in self.garden.seeds.values():
            stages = [stage for _, stage in seed.history]
            assert stages[0] is S.DORMANT
            for a, b in zip(stages, stages[1:]):
                assert (a, b) in EDGES, f"{seed.seed_id}: {a} → {b}"

    @invariant()
    def fossilized_is_terminal(self):
        for seed in self.garden.seeds.values():
            stages = [stage for _, stage in seed.history]
            if S.FOSSILIZED in stages:
                assert stages.index(S.FOSSILIZED) == len(stages) - 1

    @invariant()
    def culled_passes_embargo_before_slot_frees(self):
        for seed in self.garden.seeds.values():
            stages = [stage for _, stage in seed.history]
            if S.CULLED in stages:
                after = stages[stages.index(S.CULLED) + 1:]
                assert after in ([], [S.EMBARGOED], [S.EMBARGOED, S.DORMANT])
        for slot in SLOTS:  # at most one seed occupies a slot at any time
            live = [s for s in self.garden.seeds.values() if s.slot == slot and s.stage not in (S.DORMANT, S.FOSSILIZED)]
            assert len(live) <= 1

    @invariant()
    def one_event_per_transition(self):
        in_histories = sum(len(s.history) - 1 for s in self.garden.seeds.values())
        assert self.transitions_seen == in_histories

    def replay_equals_live_and_seq_has_no_gaps(self):
        recorded = self.recorder.read("run")
        assert sum(isinstance(r.event, SeedTransitioned) for r in recorded) == self.transitions_seen
        assert [r.seq for r in recorded] == list(range(1, len(recorded) + 1))
        replayed = RunState.fold(recorded).garden
        assert observable(replayed) == observable(self.garden)


TestLifecycle = LifecycleMachine.TestCase
TestLifecycle.settings = settings(max_examples=examples(20), stateful_step_count=40, deadline=None)


def test_every_stage_is_reachable_under_the_rules():
    """A direct walk through every stage, with gate evidence recorded in the events."""
    g = Garden()
    events = []

    def emit(es):
        for e in es:
            g.apply(e)
        events.extend(es)

    emit([RunStarted(preset=MNIST1D, config=RunConfig(lifecycle=CONFIG), slots=SLOTS, blueprints=BLUEPRINTS)])
    emit(g.handle(Germinate(slot="mid", blueprint="conv_light"), 0))
    emit(g.handle(Germinate(slot="late", blueprint="conv_heavy"), 0))
    for epoch, alpha in enumerate([0.0, 0.0, 0.5, 1.0, 1.0], start=1):
        emit(g.tick(epoch))
        tel = [SeedTelemetry(seed_id=s.seed_id, alpha=alpha if s.stage is S.BLENDING else 0.0, gradient_health=0.9,
                             seed_loss=1.0 / epoch, contribution=0.1) for s in g.active_seeds()]
        emit([EpochEnded(epoch=epoch, train_loss=1, val_loss=1, val_accuracy=0.5 + epoch / 100, params=1, seeds=tel)])
        emit(g.handle(Advance(seed_id="s1-mid"), epoch))
    emit(g.handle(Cull(seed_id="s2-late", reason="test"), 6))
    for epoch in range(7, 11):
        emit(g.tick(epoch))
        emit([EpochEnded(epoch=epoch, train_loss=1, val_loss=1, val_accuracy=0.6, params=1)])
    reached = {e.to_stage for e in events if isinstance(e, SeedTransitioned)}
    assert reached == {s.value for s in S}
    to_blend = next(e for e in events if isinstance(e, SeedTransitioned) and e.to_stage == "BLENDING")
    assert to_blend.evidence["gradient_health"] == 0.9 and to_blend.evidence["gradient_health_threshold"] == 0.5


def garden_with_a_seed_in_mid() -> Garden:
    """A run's garden after one germination: seed s1-mid, GERMINATED."""
    g = Garden()
    g.apply(RunStarted(preset=MNIST1D, config=RunConfig(lifecycle=CONFIG), slots=SLOTS, blueprints=BLUEPRINTS))
    for e in g.handle(Germinate(slot="mid", blueprint="conv_light"), 0):
        g.apply(e)
    return g


def test_refused_command_is_logged_with_reason_and_changes_nothing():
    g = garden_with_a_seed_in_mid()
    [rejected] = g.handle(Germinate(slot="mid", blueprint="conv_light"), 0)
    assert isinstance(rejected, CommandRejected) and "holds seed s1-mid" in rejected.reason
    [rejected] = g.handle(Advance(seed_id="s1-mid"), 0)
    assert "not allowed from GERMINATED" in rejected.reason


def test_illegal_transition_in_a_log_is_reported_with_its_position():
    recorder = Recorder(":memory:")
    start = RunStarted(preset=MNIST1D, config=RunConfig(lifecycle=CONFIG), slots=SLOTS, blueprints=BLUEPRINTS)
    g = Garden()
    g.apply(start)
    command = Germinate(slot="mid", blueprint="conv_light")
    germ = [CommandIssued(epoch=0, command=command, controller="test"), *g.handle(command, 0)]
    forged = SeedTransitioned(epoch=0, seed_id="s1-mid", slot="mid", from_stage="GERMINATED", to_stage="FOSSILIZED",
                              trigger="advance")
    recorder.append("run", [start, *germ, forged], 0)
    with pytest.raises(IllegalEvent) as info:
        RunState.fold(recorder.read("run"))
    assert info.value.position == 5
    recorder.close()


def a_whole_run() -> list:
    """The smallest whole log: RunStarted, two epochs without seeds, RunFinished."""
    start = RunStarted(preset=MNIST1D, config=RunConfig(lifecycle=CONFIG), slots=SLOTS, blueprints=BLUEPRINTS)
    epochs = [EpochEnded(epoch=e, train_loss=1.0, val_loss=1.0, val_accuracy=0.5, params=100) for e in (1, 2)]
    return [start, *epochs, RunFinished(epoch=2, val_accuracy=0.5, test_accuracy=0.5, params=100)]


@pytest.mark.parametrize("edit, message, position", [
    (lambda log: log[1:], "seq 1 \\(EpochEnded\\): EpochEnded before RunStarted", 1),
    (lambda log: [log[0], *log], "seq 2 \\(RunStarted\\): a second RunStarted", 2),
    (lambda log: [*log[:2], *log[1:]], "seq 3 \\(EpochEnded\\): epoch 1 after epoch 1", 3),
    (lambda log: [log[0], log[2], log[1], log[3]], "seq 3 \\(EpochEnded\\): epoch 1 after epoch 2", 3),
    (lambda log: [*log, log[-1]], "seq 5 \\(RunFinished\\): RunFinished after the run ended", 5),
])
def test_a_log_out_of_order_is_refused_where_it_goes_wrong(edit, message, position):
    assert RunState.fold(as_recorded(a_whole_run())).status == "finished"
    with pytest.raises(IllegalEvent, match=f"run run, {message}") as info:
        RunState.fold(as_recorded(edit(a_whole_run())))
    assert info.value.position == position


def test_a_gap_in_a_runs_seq_is_refused():
    with pytest.raises(IllegalEvent, match="run run: seq 4 follows 2") as info:
        RunState.fold(as_recorded(a_whole_run()[:3], seqs=[1, 2, 4]))
    assert info.value.position == 3


def test_replayed_evidence_is_compared_as_the_log_keeps_it():
    """A recorded gate's evidence passes only if the fold recomputes it exactly, as JSON holds it."""
    assert same_evidence({"a": (1, [2, 3])}, {"a": [1, (2, 3)]})  # a tuple reads back as a list
    assert same_evidence({"x": 1}, {"x": 1.0})  # JSON does not tell 1 from 1.0
    assert not same_evidence({"automatic": True}, {"automatic": 1})  # but a boolean is no number
    assert not same_evidence({"automatic": 0}, {"automatic": False})
    assert not same_evidence({"a": 1}, [("a", 1)]) and not same_evidence([("a", 1)], {"a": 1})
    assert not same_evidence({"a": 1}, {"a": 1, "b": None}) and not same_evidence([1, 2], [1, 2, 3])


def test_a_recorded_refusal_must_name_the_rule_the_machine_refuses_by():
    g = garden_with_a_seed_in_mid()
    [refused] = g.handle(Germinate(slot="mid", blueprint="conv_light"), 0)
    assert refused.evidence["rule"] == "slot_occupied"
    g.apply(refused)  # the refusal as the machine made it replays
    forged = msgspec.structs.replace(refused, evidence={**refused.evidence, "rule": "max_params"})
    with pytest.raises(IllegalEvent, match="the log refuses by rule max_params, the lifecycle by slot_occupied"):
        g.apply(forged)
