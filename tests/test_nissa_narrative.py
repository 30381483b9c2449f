"""The narrative tells germination, fossilization and culls at the epochs the log says, with their reasons."""

import pytest
from fake_runs import iter_events, plan_run, run_id_for, write_run

from esper.leyline import CommandRejected, LifecycleConfig, RunConfig, RunStarted, SeedGerminated, SeedTransitioned
from esper.nissa.narrative import explain_rejection, narrate
from esper.store import Workspace
from esper.tolaria.tasks import TASKS

MNIST1D = TASKS["mnist1d"]


@pytest.fixture(scope="module")
def heuristic() -> list:
    return list(iter_events(plan_run("heuristic", 0)))


@pytest.fixture(scope="module")
def policy() -> list:
    return list(iter_events(plan_run("policy", 0)))


def line_for(lines: list[str], *fragments: str) -> str:
    found = [line for line in lines if all(f in line for f in fragments)]
    assert len(found) == 1, f"expected one line with {fragments}, got {found}"
    return found[0]


def test_germination_fossilization_and_cull_at_the_epochs_of_the_log(heuristic):
    lines = narrate(heuristic, run_id="h")
    germinated = [e for e in heuristic if isinstance(e, SeedGerminated)]
    assert [e.seed_id for e in germinated] == ["s1-mid", "s2-late", "s3-late"]
    for e in germinated:
        line = line_for(lines, f"as {e.seed_id} ")
        assert line.startswith(f"epoch {e.epoch}: ") and f"germinated {e.blueprint} in slot {e.slot}" in line
    fossil = next(e for e in heuristic if isinstance(e, SeedTransitioned) and e.to_stage == "FOSSILIZED")
    culled = next(e for e in heuristic if isinstance(e, SeedTransitioned) and e.to_stage == "CULLED")
    freed = next(e for e in heuristic if isinstance(e, SeedTransitioned) and e.trigger == "cooldown_complete")
    assert line_for(lines, " fossilized, contribution").startswith(f"epoch {fossil.epoch}: {fossil.seed_id} fossilized")
    cull = line_for(lines, "culled by")
    assert cull.startswith(f"epoch {culled.epoch}: {culled.seed_id} (conv_heavy) culled by the controller")
    assert line_for(lines, "free again").startswith(f"epoch {freed.epoch}: slot {freed.slot} free again")
    # The concrete story of this log.
    assert (
        "epoch 7: heuristic: validation accuracy flat for 3 epochs at 79.0% → germinated conv_light in slot mid"
        " as s1-mid (+2.3k params)"
    ) in lines
    assert ("epoch 9: s1-mid passed the training gate (gradient health 0.82, seed loss 0.96 → 0.768 over 2 epochs)"
            " → blending in") in lines
    assert line_for(lines, " fossilized, contribution") == ("epoch 12: s1-mid fossilized, contribution +6.1 points "
                                                            "(validation accuracy 85.0%, host now 14.6k params)")
    assert "(last contribution -3.1 points)" in cull  # the seed's last measurement, which the cull's evidence lacks
    assert cull.startswith("epoch 20: ") and "contribution -3.1 points at full alpha" in cull
    assert "slot late embargoed for 2 epochs" in cull
    assert lines[0].startswith("run h: mnist1d, controller heuristic, seed 0, 24 epochs")
    assert lines[-1].startswith("epoch 24: finished: validation accuracy ")
    assert "1 fossilized, 1 culled, 1 unfinished (s3-late)" in lines[-1]
    assert "; 19.2k params (+56% over the 12.3k host); " in lines[-1]


def test_refusals_are_told_with_their_reason_and_repeats_folded(heuristic):
    lines = narrate(heuristic)
    refusals = [e for e in heuristic if isinstance(e, CommandRejected)]
    assert len(refusals) == 5
    assert "epochs 21–22: germinate attention in slot late refused 2× (last: slot late holds seed s2-late in EMBARGOED)" in lines
    assert "epoch 8: advance s1-mid refused: gate closed: 1 of 2 training epochs; seed loss not improving (0.96, 0.96 at entry)" in lines


def test_automatic_culls_give_their_evidence(policy):
    lines = narrate(policy)
    diverged = line_for(lines, "seed diverged")
    assert diverged.startswith("epoch 5: s1-early (attention) culled automatically: seed diverged (gradient health 0")
    regression = line_for(lines, "culled automatically: regression")
    assert regression.startswith("epoch 21: s3-late (conv_heavy)") and "contribution -3.1 points" in regression
    assert "validation accuracy 81.9% is 3.2 points below 85.1% at blend start" in line_for(lines, "epochs 19–20")


def test_narrative_is_deterministic_and_the_same_from_the_store(tmp_path, heuristic):
    run_id = write_run(tmp_path, "heuristic", 0)
    with Workspace.at(tmp_path).reader() as reader:
        from_store = narrate(reader.read_run(run_id))
    assert from_store == narrate(heuristic, run_id=run_id_for("heuristic", 0))
    assert narrate(heuristic) == narrate(list(heuristic))
    assert all(isinstance(line, str) and "\n" not in line for line in from_store)


def test_an_unfinished_run_says_so(heuristic):
    lines = narrate(heuristic[:40])
    assert lines[-1].startswith("(no end recorded yet: after epoch ")
    assert narrate([]) == []


def test_static_run_grows_nothing():
    lines = narrate(iter_events(plan_run("static", 0)))
    assert len(lines) == 2
    assert "(the host alone); seeds: 0 germinated" in lines[-1]


@pytest.mark.parametrize(
    "reason, evidence, told",
    [
        ("gate closed: ...", {"rule": "training_gate", "gradient_health": 0.1, "gradient_health_threshold": 0.3,
                              "epochs_in_stage": 3, "min_training_epochs": 2, "seed_loss": 0.5, "seed_loss_at_entry": 0.9},
         "gate closed: gradient health 0.1 < 0.3"),
        ("gate closed: ...", {"rule": "fossilize_gate", "alpha": 0.6667, "epochs_at_full_alpha": 0, "stability_window": 1,
                              "val_accuracy": 0.8, "val_accuracy_at_blend_start": 0.8, "regression_tolerance": 0.01},
         "gate closed: alpha 0.6667 < 1; 0 of 1 epochs at full alpha"),
        ("gate closed: ...", {"rule": "training_gate", "gradient_health": 0.9, "gradient_health_threshold": 0.3,
                              "epochs_in_stage": 3, "min_training_epochs": 2, "seed_loss": None, "seed_loss_at_entry": 0.9},
         "gate closed: ..."),
        # at each threshold the gates pass (>=, and a drop up to the tolerance): nothing is told as failed
        ("gate closed: ...", {"rule": "training_gate", "gradient_health": 0.5, "gradient_health_threshold": 0.5,
                              "epochs_in_stage": 2, "min_training_epochs": 2, "seed_loss": 0.5, "seed_loss_at_entry": 0.75},
         "gate closed: ..."),
        ("gate closed: ...", {"rule": "fossilize_gate", "alpha": 1.0, "epochs_at_full_alpha": 1, "stability_window": 1,
                              "val_accuracy": 0.25, "val_accuracy_at_blend_start": 0.5, "regression_tolerance": 0.25},
         "gate closed: ..."),
        # each comparison alone, its evidence exactly its pair
        ("gate closed: ...", {"rule": "training_gate", "seed_loss": 0.75, "seed_loss_at_entry": 0.75},
         "gate closed: seed loss not improving (0.75, 0.75 at entry)"),
        ("gate closed: ...", {"rule": "training_gate", "gradient_health": 0.25, "gradient_health_threshold": 0.5},
         "gate closed: gradient health 0.25 < 0.5"),
        ("gate closed: ...", {"rule": "training_gate", "epochs_in_stage": 1, "min_training_epochs": 2},
         "gate closed: 1 of 2 training epochs"),
        ("gate closed: ...", {"rule": "fossilize_gate", "epochs_at_full_alpha": 0, "stability_window": 1},
         "gate closed: 0 of 1 epochs at full alpha"),
        ("gate closed: ...", {"rule": "fossilize_gate", "val_accuracy": 0.25, "val_accuracy_at_blend_start": 0.75,
                              "regression_tolerance": 0.25},
         "gate closed: validation accuracy 25.0% is 50.0 points below 75.0% at blend start (tolerance 25.0)"),
        ("slot mid holds seed s1-mid in TRAINING", {"rule": "slot_occupied", "slot": "mid", "seed_id": "s1-mid"},
         "slot mid holds seed s1-mid in TRAINING"),
        # a log written before refusals carried evidence: told by its reason, which is never re-parsed
        ("gate closed: gradient_health=0.1, gradient_health_threshold=0.3", {},
         "gate closed: gradient_health=0.1, gradient_health_threshold=0.3"),
    ],
)
def test_explain_rejection_reads_the_evidence(reason, evidence, told):
    assert explain_rejection(reason, evidence) == told


def test_a_capped_run_says_its_cap():
    start = RunStarted(preset=MNIST1D, config=RunConfig(lifecycle=LifecycleConfig(max_params=6287)), host_params=1258, slots=["mid"])
    assert "host 1.3k params, at most 6,287 in all; slots mid" in narrate([start])[0]
    assert "at most" not in narrate([RunStarted(preset=MNIST1D, config=RunConfig(), host_params=1258)])[0]
