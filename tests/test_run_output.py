"""What `esper run` prints as it trains and when it ends: each line says what happened, in words a user reads."""

import pytest

from esper.cli.progress import epoch_lines
from esper.cli.run import _closing_table, _result_json, _stages
from esper.leyline import Advance, CommandIssued, Cull, Germinate, Wait
from esper.tamiyo.observation import ObservationProjection
from esper.tolaria.loop import RunResult
from esper.tolaria.trainer import EpochStats


@pytest.mark.parametrize("command,said", [
    (Cull(seed_id="s2-mid", reason="hurts"), "→ cull s2-mid"),
    (Advance(seed_id="s1-early"), "→ advance s1-early"),
    (Germinate(slot="late", blueprint="conv_light"), "→ germinate conv_light in slot late"),
    (Wait(), "→ wait"),
])
def test_each_epochs_line_names_what_the_command_acts_on(capsys, command, said):
    report = epoch_lines(25)
    report(16, EpochStats(train_loss=0.5, val_loss=0.6, val_accuracy=0.9, params=6_000, seeds=[]),
           ObservationProjection(), CommandIssued(epoch=16, command=command, controller="heuristic"))
    line = capsys.readouterr().err.strip()
    assert line.startswith("[ 16/25] val  90.0%") and line.endswith(f"{said}  seeds -")  # the seeds after it


def test_a_culled_seed_counts_as_culled_whatever_its_slot_moved_on_to():
    # after a cull the seed's slot is embargoed, then free again (DORMANT): the seed was culled all the same
    assert _stages({"DORMANT": 1, "EMBARGOED": 1, "CULLED": 1, "FOSSILIZED": 3}) == "3 culled, 3 fossilized"
    assert _stages({"BLENDING": 1}) == "1 blending"
    assert _stages({}) == "no seeds"
    result = RunResult(val_accuracy=0.9, test_accuracy=0.9, params=6_000, seeds={"DORMANT": 2, "EMBARGOED": 1,
                                                                                "FOSSILIZED": 3})
    assert _result_json("r", result)["seeds"] == {"CULLED": 3, "FOSSILIZED": 3}  # as the closing table says


def test_the_closing_tables_values_start_in_one_column():
    table = _closing_table("r", RunResult(val_accuracy=0.9475, test_accuracy=0.95, params=6_326,
                                          seeds={"FOSSILIZED": 3, "DORMANT": 1}))
    rows = table.splitlines()[1:]
    assert "  seeds          1 culled, 3 fossilized" in rows
    assert len({len(row) - len(row[2:].split("  ", 1)[1].lstrip()) for row in rows}) == 1, table
