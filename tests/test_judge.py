"""One judge: replay re-judges every recorded decision through the one lifecycle machine.

A short real run is exported once; each forged copy (through `tests/forge.py`) breaks one rule and must be
refused by `esper replay FILE.jsonl` with exit 1 and one line naming the rule. Also: the model refuses moves
the machine does not make, a controller cannot change a run through what it is shown, the scratch baseline's
architecture is in its log, and the garden's parameter counts are the model's.
"""

import copy
from pathlib import Path

import msgspec
import pytest

from esper.errors import RunFailed
from esper.kasmina import build_host
from esper.leyline import Germinate, RunConfig, RunStarted, SeedStage
from esper.leyline.config import HeuristicConfig
from esper.leyline.events import SeedGerminated, SeedTransitioned, encode
from esper.leyline.garden import Garden
from esper.nissa.narrative import narrate
from esper.nissa.runstate import RunState
from esper.store import Recorder
from esper.tamiyo.controllers import HeuristicController, ScratchController
from esper.tolaria.loop import ListSink, Session, StoreSink, execute
from esper.tolaria.tasks import get_task
from esper.tolaria.verify import verify_run
from esper.tolaria.tasks import TASKS

MNIST1D = TASKS["mnist1d"]
from cli_runner import invoke, one_line_error
from forge import forge, index_of, one, payloads

pytestmark = pytest.mark.slow  # real training runs or subprocesses of the CLI

# Germinates at epoch 1 and 2, culls every blending seed at alpha 0.5: germinations, gates, culls and an
# embargo within 8 epochs.
KNOBS = ["warmup_epochs=1", "min_gain=1.0", "finish_epochs=3", "cull_contribution=1.0"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("judge")
    args = ["run", "--epochs", "8", "--seed", "1", "--json"]
    for knob in KNOBS:
        args += ["--heuristic", knob]
    result = invoke(*args, workspace=ws)
    assert result.exit_code == 0, result.stderr
    run_id = msgspec.json.decode(result.stdout.strip().splitlines()[-1])["run_id"]
    out = ws / "clean.jsonl"
    assert invoke("export", run_id, "--format", "jsonl", "--out", out, workspace=ws).exit_code == 0
    return out


def test_the_clean_export_replays(clean, tmp_path):
    result = invoke("replay", clean, "--json", workspace=tmp_path)
    assert result.exit_code == 0, result.stderr
    state = msgspec.json.decode(result.stdout)
    assert state["status"] == "finished" and state["stage_counts"]
    copied = forge(clean, tmp_path / "copy.jsonl", lambda rows: None)  # the forging itself breaks nothing
    assert invoke("replay", copied, workspace=tmp_path).exit_code == 0


def first_germination(rows):
    return payloads(rows, "SeedGerminated")[0]


def unknown_slot(rows):
    first_germination(rows)["slot"] = "nowhere"


def unknown_blueprint(rows):
    first_germination(rows)["blueprint"] = "tree"


def wrong_params(rows):
    first_germination(rows)["params"] = 1


def over_the_cap(rows):
    start = one(rows, "RunStarted")
    start["config"]["lifecycle"]["max_params"] = start["host_params"] + 100


def during_embargo(rows):
    """A germination into a slot the moment its culled seed is embargoed."""
    cleanup = payloads(rows, "SeedTransitioned", trigger="cleanup")[0]
    slot, epoch = cleanup["slot"], cleanup["epoch"]
    decision = one(rows, "CommandIssued", epoch=epoch)
    decision["command"] = {"op": "Germinate", "slot": slot, "blueprint": "norm"}
    size = one(rows, "RunStarted")["seed_sizes"][slot]["norm"]
    germinated = {"type": "SeedGerminated", "schema_version": 1, "epoch": epoch, "seed_id": f"s9-{slot}",
                  "slot": slot, "blueprint": "norm", "params": size}
    transition = {"type": "SeedTransitioned", "schema_version": 1, "epoch": epoch, "seed_id": f"s9-{slot}",
                  "slot": slot, "from_stage": "DORMANT", "to_stage": "GERMINATED", "trigger": "germinate",
                  "evidence": {"blueprint": "norm"}}
    at = index_of(rows, decision) + 1
    rows[at:at] = [{"payload": germinated}, {"payload": transition}]


def first_advance(rows):
    return payloads(rows, "SeedTransitioned", trigger="advance", from_stage="TRAINING")[0]


def advance_not_commanded(rows):
    """An advance no controller asked for: the command before it removed."""
    advance = first_advance(rows)
    rows.pop(index_of(rows, one(rows, "CommandIssued", epoch=advance["epoch"])))


def advance_left_out(rows):
    """A command whose effect is missing: the advance it led to removed."""
    rows.pop(index_of(rows, first_advance(rows)))


def gate_shut(rows):
    """TRAINING → BLENDING with gradient health below the threshold in the evidence and in the telemetry."""
    advance = first_advance(rows)
    advance["evidence"]["gradient_health"] = 0.1
    epoch = one(rows, "EpochEnded", epoch=advance["epoch"])
    for t in epoch["seeds"]:
        if t["seed_id"] == advance["seed_id"]:
            t["gradient_health"] = 0.1


def evidence_differs(rows):
    first_advance(rows)["evidence"]["gradient_health"] = 0.1


def cull_without_reason(rows):
    cull = payloads(rows, "SeedTransitioned", trigger="cull")[0]
    cull["evidence"] = {}
    one(rows, "CommandIssued", epoch=cull["epoch"])["command"]["reason"] = ""


def automatic_cull_not_due(rows):
    cull = payloads(rows, "SeedTransitioned", trigger="cull")[0]
    cull["evidence"] = {"automatic": True, "why": "regression", "contribution": -0.5,
                        "auto_cull_contribution": -0.02, "epochs_at_full_alpha": 2}


def skipped_stage(rows):
    advance = first_advance(rows)
    advance["to_stage"] = "FOSSILIZED"


def skipped_tick(rows):
    """An automatic transition the lifecycle's clock decided, removed (nothing later needs the slot it frees)."""
    cooldown = payloads(rows, "SeedTransitioned", trigger="cooldown_complete")[-1]
    rows.pop(index_of(rows, cooldown))


def start_left_out(rows):
    """The first seed's start of training, due before the next epoch trains (the only transition due then), removed."""
    rows.pop(index_of(rows, payloads(rows, "SeedTransitioned", trigger="start_training")[0]))


FORGERIES = {
    "unknown_slot": (unknown_slot, ["unknown slot 'nowhere'"]),
    "unknown_blueprint": (unknown_blueprint, ["unknown blueprint 'tree'"]),
    "params": (wrong_params, ["records 1 parameters"]),
    "max_params": (over_the_cap, ["over max_params"]),
    "embargo": (during_embargo, ["EMBARGOED"]),
    "training_gate": (gate_shut, ["gate closed", "gradient_health=0.1", "gradient_health_threshold=0.3"]),
    "evidence": (evidence_differs, ["gradient_health recorded 0.1, the fold recomputes"]),
    "cull_reason": (cull_without_reason, ["a cull needs a reason"]),
    "auto_cull": (automatic_cull_not_due, ["automatic cull not due", "contribution"]),
    "illegal_move": (skipped_stage, ["TRAINING → FOSSILIZED"]),
    "tick": (skipped_tick, ["cooldown_complete", "the lifecycle's clock"]),
    "tick/before_the_epoch": (start_left_out, ["start_training", "was due before epoch", "trained and is missing"]),
    "command/unasked": (advance_not_commanded, ["transitioned advance", "with no command that leads to it"]),
    "command/effect_missing": (advance_left_out, ["transitioned advance", "is missing after its command"]),
}


@pytest.mark.parametrize("rule", FORGERIES)
def test_a_forged_export_is_refused_naming_the_rule(clean, tmp_path, rule):
    edit, words = FORGERIES[rule]
    forged = forge(clean, tmp_path / "forged.jsonl", edit)
    line = one_line_error(invoke("replay", forged, workspace=tmp_path), code=1)
    assert f"rule {rule.split('/')[0]}:" in line, line
    for word in words:
        assert word in line, line
    assert "internal error" not in line


# ---- Kasmina carries out, never decides --------------------------------------------------------------------


def test_the_trainer_fails_the_run_when_the_model_disagrees_with_the_gardens_count():
    session = Session(RunConfig(epochs=1), ListSink())
    try:
        garden = session.projection.garden
        seed, transition = garden.handle(Germinate(slot="mid", blueprint="norm"), 1)
        assert seed.params == session.trainer.model.seed_sizes()["mid"]["norm"] > 0
        session.trainer.realize(msgspec.structs.replace(seed, params=seed.params + 1))
        with pytest.raises(RunFailed, match="counted 17 parameters for norm in mid, the model built 16"):
            session.trainer.realize(transition)
    finally:
        session.close()


def test_germination_params_counted_by_the_garden_equal_the_models():
    preset = get_task("mnist1d")
    model = build_host(preset.host)
    garden = Garden()
    garden.apply(RunStarted(preset=MNIST1D, config=RunConfig(), host_params=model.param_count(), slots=model.slot_names,
                            blueprints=list(preset.blueprints), seed_sizes=model.seed_sizes()))
    for slot in model.slot_names:
        for blueprint in preset.blueprints:
            [germinated, _] = garden.handle(Germinate(slot=slot, blueprint=blueprint))
            assert germinated.params == model.germinate(slot, "probe", blueprint)
            model.start_training("probe")
            model.cull("probe")


# ---- controllers see a detached copy ---------------------------------------------------------------------


class LookAhead(HeuristicController):
    """Decides as the heuristic does, after scribbling on everything it was shown."""

    def decide(self, obs):
        command = super().decide(obs)
        garden = obs.garden
        free = [s for s in garden.slots if garden.live_seed(s) is None]
        if free:  # fold a look-ahead germination into the garden it was given
            for event in garden.handle(Germinate(slot=free[0], blueprint=garden.blueprints[0]), obs.epoch):
                garden.apply(event)
        for seed in garden.seeds.values():
            seed.stage = SeedStage.FOSSILIZED
        garden.slots.clear()
        garden.config = msgspec.structs.replace(garden.config, max_params=1)
        return command


def test_a_controller_that_mutates_its_observation_cannot_change_the_run():
    knobs = msgspec.convert(dict(k.split("=") for k in KNOBS), type=HeuristicConfig, strict=False)
    config = RunConfig(epochs=4, seed=1, heuristic=knobs)
    honest, meddler = ListSink(), ListSink()
    execute(config, HeuristicController(config.heuristic), honest)
    execute(config, LookAhead(config.heuristic), meddler)
    assert any(isinstance(e, SeedGerminated) for e in honest.events)
    assert [encode(e) for e in meddler.events] == [encode(e) for e in honest.events]


def test_a_garden_snapshot_is_detached_and_cheap():
    garden = Garden()
    garden.apply(RunStarted(preset=MNIST1D, config=RunConfig(), slots=["early", "mid", "late"], blueprints=["norm"]))
    for slot in ("early", "mid", "late"):
        for event in garden.handle(Germinate(slot=slot, blueprint="norm"), 1):
            garden.apply(event)
    snapshot = garden.snapshot()
    snapshot.seeds["s1-early"].stage = SeedStage.CULLED
    assert garden.seeds["s1-early"].stage is SeedStage.GERMINATED
    import timeit

    assert timeit.timeit(garden.snapshot, number=100) / 100 < 0.005  # well under a millisecond in practice


# ---- the scratch baseline's architecture is in its log --------------------------------------------------------


ARCHITECTURE = [("mid", "conv_light"), ("late", "norm"), ("mid", "norm")]


def test_a_scratch_run_logs_its_built_seeds_and_replays_them():
    config = RunConfig(controller="scratch", like="grown-run", architecture=ARCHITECTURE, epochs=1)
    with Recorder(":memory:") as recorder:
        result = execute(config, ScratchController(), StoreSink(recorder, "scratch"))
        recorded = recorder.read("scratch")
    builds = [r.event for r in recorded if isinstance(r.event, SeedTransitioned)]
    assert [(e.slot, e.trigger, e.from_stage, e.to_stage, e.epoch) for e in builds] == [
        (slot, "build", "DORMANT", "FOSSILIZED", 0) for slot, _ in ARCHITECTURE]
    assert [e.evidence for e in builds] == [{"blueprint": bp, "like": "grown-run", "architecture_index": i}
                                            for i, (_, bp) in enumerate(ARCHITECTURE)]
    summary = RunState.fold(recorded).summary()
    assert [(s["slot"], s["blueprint"], s["stage"]) for s in summary["seeds"].values()] == [
        (slot, bp, "FOSSILIZED") for slot, bp in ARCHITECTURE]
    host = recorded[0].event.host_params
    assert result.params == host + sum(s["params"] for s in summary["seeds"].values())
    assert result.seeds == {"FOSSILIZED": 3}
    assert any("built1-mid built into the host from run grown-run" in line for line in narrate(recorded))
    assert verify_run(recorded).events == len(recorded)


def test_build_is_legal_only_for_the_configs_architecture():
    garden = Garden()
    garden.apply(RunStarted(preset=MNIST1D, config=RunConfig(architecture=[("mid", "norm")], like="g"), slots=["mid", "late"],
                            blueprints=["norm"]))
    [germinated, built] = garden.build(0)
    forged = [msgspec.structs.replace(germinated, slot="late", seed_id="x"),
              msgspec.structs.replace(built, slot="late", seed_id="x")]
    twice = copy.deepcopy(garden)
    for event in (germinated, built):
        twice.apply(event)
    for g, events, why in [(garden, forged, "architecture\\[0\\] is \\('mid', 'norm'\\)"),
                           (twice, [msgspec.structs.replace(germinated, seed_id="y"),
                                    msgspec.structs.replace(built, seed_id="y")], "built already")]:
        g.apply(events[0])
        with pytest.raises(Exception, match=f"rule build: build refused: .*{why}"):
            g.apply(events[1])
    plain = Garden()
    plain.apply(RunStarted(preset=MNIST1D, config=RunConfig(), slots=["mid"], blueprints=["norm"]))
    plain.apply(germinated)
    with pytest.raises(Exception, match="names no architecture"):
        plain.apply(built)
    two = Garden()  # JSON's true is no index, though Python would read True as architecture[1]
    two.apply(RunStarted(preset=MNIST1D, config=RunConfig(architecture=[("mid", "norm"), ("late", "norm")], like="g"),
                         slots=["mid", "late"], blueprints=["norm"]))
    [germinated, built] = copy.deepcopy(two).build(1)
    two.apply(germinated)
    with pytest.raises(Exception, match="architecture_index True is not one of the config's 2"):
        two.apply(msgspec.structs.replace(built, evidence={**built.evidence, "architecture_index": True}))


def test_an_old_scratch_log_without_build_events_still_replays_and_verifies():
    """Logs written before `build` existed built the architecture inside the trainer, without events."""
    config = RunConfig(controller="scratch", like="grown-run", architecture=ARCHITECTURE[:1], epochs=1)
    with Recorder(":memory:") as recorder:
        execute(config, ScratchController(), StoreSink(recorder, "old"), build_events=False)
        recorded = recorder.read("old")
    assert not any(isinstance(r.event, (SeedGerminated, SeedTransitioned)) for r in recorded)
    assert RunState.fold(recorded).summary()["seeds"] == {}
    assert verify_run(recorded).events == len(recorded)
