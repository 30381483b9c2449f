"""Projections: incremental catch-up gives exactly what a rebuild from zero gives, table by table."""

import subprocess
import sys
from pathlib import Path

import duckdb
import msgspec
import pytest
from fake_runs import FakeWriter, plan_run, run_id_for, write_comparison, write_run

from esper.leyline import SeedTransitioned
from esper.nissa.projector import PROJECTION_DIR, PROJECTION_FILE, Projector, caught_up
from esper.nissa.readmodels import BlueprintStats, EpochMetrics, default_projections
from esper.nissa.tables import Table
from esper.store import Recorder, Workspace

HEURISTIC = run_id_for("heuristic", 0)
POLICY = run_id_for("policy", 0)
STATIC = run_id_for("static", 0)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("projections")
    write_comparison(root)
    return Workspace.at(root)


class EpochMetricsV2(EpochMetrics):
    """The epoch metrics projection at its next version, as a newer Esper would bring it."""

    version = EpochMetrics.version + 1


def dump(projector: Projector) -> dict[str, list[tuple]]:
    """Every read-model table and the checkpoints, as sorted rows."""
    out = {}
    for name in projector.table_names():
        rows = projector.con.execute(f"SELECT * FROM {name}").fetchall()
        out[name] = sorted(rows, key=repr)
    return out


def rebuilt(workspace: Workspace) -> dict[str, list[tuple]]:
    with workspace.reader() as reader, Projector.memory() as projector:
        projector.rebuild(reader)
        return dump(projector)


def assert_same_tables(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], f"table {name} differs"


def test_incremental_catch_up_while_runs_are_written_equals_a_rebuild(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    writers = []
    recorders = []
    for controller, seed in (("heuristic", 0), ("policy", 1), ("static", 2)):
        recorder = Recorder(ws.store_path(f"{controller}-{seed}"))
        recorders.append(recorder)
        writers.append(FakeWriter(recorder, run_id_for(controller, seed), plan_run(controller, seed)))
    steps = [(1, 0, 3), (5, 2, 0), (4, 9, 7), (11, 1, 0), (0, 14, 20)]
    path = ws.root / PROJECTION_DIR / PROJECTION_FILE
    try:
        for step in steps:
            for writer, n in zip(writers, step):
                writer.write(n)
            # A new projector process each step: state must survive in the file, not in memory.
            # The recorders hold their files open, so the reader works from snapshots (live runs).
            with ws.reader() as reader, Projector.open(path) as projector:
                assert reader.live_files
                projector.catch_up(reader)
        for writer in writers:
            writer.write()
        with ws.reader() as reader, Projector.open(path) as projector:
            folded = projector.catch_up(reader)
            assert 0 < folded < sum(len(b) for w in writers for b in w.batches)  # only what was new
            incremental = dump(projector)
    finally:
        for recorder in recorders:
            recorder.close()
    assert_same_tables(incremental, rebuilt(ws))
    assert len(incremental["run_summary"]) == 3


def test_catch_up_in_steps_of_a_few_events_equals_a_rebuild(workspace):
    with workspace.reader() as reader, Projector.memory() as projector:
        steps = 0
        while projector.catch_up(reader, max_events=7):
            steps += 1
        assert steps > 20  # the steps cut batches in the middle (a command without its result yet)
        assert_same_tables(dump(projector), rebuilt(workspace))


def test_catch_up_reads_only_events_after_its_checkpoints(tmp_path):
    ws = Workspace.at(tmp_path)
    batches = plan_run("heuristic", 0)
    with Recorder(ws.store_path("one")) as recorder:
        writer = FakeWriter(recorder, "r1", batches)
        writer.write(10)
    with ws.reader() as reader, Projector.open(tmp_path / PROJECTION_DIR / PROJECTION_FILE) as projector:
        assert projector.catch_up(reader) == sum(len(b) for b in batches[:10])
        assert projector.catch_up(reader) == 0
    with Recorder(ws.store_path("one")) as recorder:
        writer.recorder = recorder
        writer.write(1)
    with ws.reader() as reader, Projector.open(tmp_path / PROJECTION_DIR / PROJECTION_FILE) as projector:
        assert projector.catch_up(reader) == len(batches[10])
        assert [r["epoch"] for r in projector.fetch("epoch_metrics", "r1")] == list(range(1, 11))


def test_a_changed_or_vanished_log_is_folded_again(tmp_path):
    ws = Workspace.at(tmp_path)
    write_run(tmp_path, "heuristic", 0, run_id="r1", store="a")
    write_run(tmp_path, "static", 0, run_id="r2", store="b")
    path = tmp_path / PROJECTION_DIR / PROJECTION_FILE
    with ws.reader() as reader, Projector.open(path) as projector:
        projector.catch_up(reader)
    # r1 is replaced by a different (shorter) run under the same id, r2 disappears.
    ws.store_path("a").unlink()
    ws.store_path("b").unlink()
    write_run(tmp_path, "policy", 3, epochs=10, run_id="r1", store="c")
    with ws.reader() as reader, Projector.open(path) as projector:
        projector.catch_up(reader)
        tables = dump(projector)
        summary = projector.fetch("run_summary")
    assert [(s["run_id"], s["controller"], s["epochs"]) for s in summary] == [("r1", "policy", 10)]
    assert_same_tables(tables, rebuilt(ws))


def projected_file(root) -> tuple[Workspace, Path]:
    """A workspace of one run, and its projection file, caught up."""
    write_run(root, "heuristic", 0)
    ws = Workspace.at(root)
    path = root / PROJECTION_DIR / PROJECTION_FILE
    with ws.reader() as reader, Projector.open(path) as projector:
        projector.catch_up(reader)
    return ws, path


def columns_of(projector: Projector, table: str) -> list[tuple[str, str]]:
    return projector.con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ?"
                                 " ORDER BY column_index", [table]).fetchall()


def test_a_new_projection_version_rebuilds_its_tables(tmp_path):
    ws, path = projected_file(tmp_path)
    with Projector.open(path) as projector:
        projector.con.execute("DELETE FROM epoch_metrics WHERE epoch > 3")  # damage only this projection

    projections = [EpochMetricsV2()]
    with ws.reader() as reader, Projector.open(path, projections) as projector:
        projector.catch_up(reader)
        assert len(projector.fetch("epoch_metrics")) == 24


def test_a_projection_rebuilt_mid_run_catches_up_beside_ones_ahead_of_it(tmp_path):
    """A new version of one projection while a run is written: it folds the run from its start, the others go on
    from their own checkpoints (never folding an event twice), and the tables equal a rebuild's."""
    ws = Workspace.at(tmp_path / "ws")
    path = ws.root / PROJECTION_DIR / PROJECTION_FILE
    with Recorder(ws.store_path("heuristic-0")) as recorder:
        writer = FakeWriter(recorder, run_id_for("heuristic", 0), plan_run("heuristic", 0))
        writer.write(9)
        with ws.reader() as reader, Projector.open(path) as projector:
            projector.catch_up(reader)

        projections = [EpochMetricsV2() if isinstance(p, EpochMetrics) else p for p in default_projections()]
        writer.write()
        with ws.reader() as reader, Projector.open(path, projections) as projector:
            projector.catch_up(reader)
            caught = {name: rows for name, rows in dump(projector).items() if name != "nissa_checkpoints"}
    assert_same_tables(caught, {name: rows for name, rows in rebuilt(ws).items() if name in caught})


def test_a_new_derived_table_version_rebuilds_and_refills_it_at_once(tmp_path):
    _, path = projected_file(tmp_path)
    with Projector.open(path) as projector:
        expected = projector.fetch("blueprint_stats")
        # As an older Esper left it: other columns, an older version.
        projector.con.execute("DROP TABLE blueprint_stats")
        projector.con.execute("CREATE TABLE blueprint_stats (blueprint VARCHAR, runs INTEGER)")
        projector.con.execute("UPDATE nissa_versions SET version = 1 WHERE projection = 'blueprint_stats'")
    with Projector.open(path) as projector:  # no catch-up: nothing new in the log
        assert columns_of(projector, "blueprint_stats") == BlueprintStats.table.columns
        assert projector.fetch("blueprint_stats") == expected and expected


def test_a_tables_columns_are_its_row_structs_fields():
    class Row(msgspec.Struct):
        epoch: int
        loss: float | None
        name: str
        kept: bool = False

    assert Table("t", Row, ("epoch",)).columns == [
        ("run_id", "VARCHAR"), ("epoch", "BIGINT"), ("loss", "DOUBLE"), ("name", "VARCHAR"), ("kept", "BOOLEAN")]
    assert Table("t", Row, ("epoch",), per_run=False).columns[0] == ("epoch", "BIGINT")

    class Nested(msgspec.Struct):
        stages: dict[str, int]

    with pytest.raises(TypeError, match="not dict"):
        Table("t", Nested, ())


def test_every_table_in_the_file_has_the_columns_its_row_struct_declares(workspace):
    with workspace.reader() as reader, caught_up(workspace, reader) as projector:
        tables = [t for p in projector.projections for t in p.tables] + [d.table for d in projector.derived]
        for table in tables:
            assert columns_of(projector, table.name) == table.columns, table.name
    assert {t.name for t in tables} == set(projector.table_names()) - {"nissa_checkpoints"}


def test_projection_file_lives_in_dot_nissa_and_is_not_an_event_store(workspace):
    with workspace.reader() as reader, caught_up(workspace, reader) as projector:
        assert projector.path == workspace.root / ".nissa" / "projections.duckdb"
    assert projector.path.is_file()
    assert all(p.parent == workspace.root and p.name != "projections.duckdb" for p in workspace.store_files())
    assert len(workspace.store_files()) == 3


def test_an_unusable_projection_path_falls_back_to_memory_with_a_note(tmp_path):
    write_run(tmp_path, "heuristic", 0)
    ws = Workspace.at(tmp_path)
    bad = tmp_path / PROJECTION_DIR / PROJECTION_FILE
    bad.mkdir(parents=True)  # not a file: nothing of ours to replace
    with ws.reader() as reader, caught_up(ws, reader) as projector:
        assert projector.path is None
        assert any("projecting in memory" in note for note in projector.notes)
        assert len(projector.fetch("epoch_metrics")) == 24
    assert bad.is_dir()


def test_a_projection_file_whose_table_other_code_changed_is_rebuilt_in_memory(tmp_path):
    """Opened fine, then unusable while catching up (a read model's table of another shape): the read models are
    rebuilt in memory, with a note naming the file, and the file is left as it was."""
    write_run(tmp_path, "heuristic", 0)
    ws = Workspace.at(tmp_path)
    path = tmp_path / PROJECTION_DIR / PROJECTION_FILE
    path.parent.mkdir()
    Projector.open(path).close()
    con = duckdb.connect(str(path))
    con.execute("DROP TABLE epoch_metrics")
    con.execute("CREATE TABLE epoch_metrics (x INTEGER)")
    con.close()
    with ws.reader() as reader, caught_up(ws, reader) as projector:
        assert projector.path is None
        assert any(note.startswith(f"projections {path} unusable (") and note.endswith("); rebuilt in memory")
                   for note in projector.notes), projector.notes
        assert len(projector.fetch("epoch_metrics")) == 24
    assert path.is_file()


def test_a_projection_file_another_process_holds_is_left_alone(tmp_path):
    """Held by another process (a second esper creating it, say): projected in memory, the file never removed."""
    write_run(tmp_path, "heuristic", 0)
    ws = Workspace.at(tmp_path)
    held = tmp_path / PROJECTION_DIR / PROJECTION_FILE
    held.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(60)", str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        inode = held.stat().st_ino
        with ws.reader() as reader, caught_up(ws, reader) as projector:
            assert projector.path is None
            assert any("projecting in memory" in note for note in projector.notes)
        assert held.stat().st_ino == inode
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("content", [b"", b"this is not a duckdb file" * 100])
def test_a_projection_file_that_is_no_database_is_made_again(tmp_path, content):
    """An empty file (its creation cut short by a full disk) or garbage: the projections are derived, so the file is
    made again, once, with a note; it does not send every later command to memory."""
    write_run(tmp_path, "heuristic", 0)
    ws = Workspace.at(tmp_path)
    bad = tmp_path / PROJECTION_DIR / PROJECTION_FILE
    bad.parent.mkdir()
    bad.write_bytes(content)
    with ws.reader() as reader, caught_up(ws, reader) as projector:
        assert projector.path == bad
        assert [note for note in projector.notes if "made again" in note], projector.notes
        assert len(projector.fetch("epoch_metrics")) == 24
    with ws.reader() as reader, caught_up(ws, reader) as projector:
        assert projector.path == bad and projector.notes == []
        assert len(projector.fetch("epoch_metrics")) == 24


def test_seed_lifecycle_read_model(workspace):
    with workspace.reader() as reader, caught_up(workspace, reader) as projector:
        seeds = {s["seed_id"]: s for s in projector.fetch("seed_lifecycle", HEURISTIC)}
        stages = projector.fetch("seed_stages", HEURISTIC)
        events = [r.event for r in reader.read_run(HEURISTIC)]
    s1, s2, s3 = seeds["s1-mid"], seeds["s2-late"], seeds["s3-late"]
    assert (s1["slot"], s1["blueprint"], s1["params"], s1["germinated_epoch"]) == ("mid", "conv_light", 2304, 7)
    assert (s1["final_stage"], s1["ended_epoch"], s1["contribution"]) == ("FOSSILIZED", 12, 0.061)
    assert (s1["epochs_training"], s1["epochs_blending"]) == (2, 3)
    assert (s2["final_stage"], s2["culled_by"], s2["ended_epoch"], s2["contribution"]) == ("DORMANT", "controller", 20, -0.031)
    assert s2["epochs_embargoed"] == 2 and "contribution -3.1 points" in s2["cull_reason"]
    assert (s3["final_stage"], s3["ended_epoch"], s3["contribution"]) == ("TRAINING", None, None)
    # Every stage a seed entered (DORMANT after the embargo excluded) is a row, in the log's order.
    entered = [(e.seed_id, e.to_stage) for e in events if isinstance(e, SeedTransitioned) and e.to_stage != "DORMANT"]
    assert sorted(entered) == sorted((r["seed_id"], r["stage"]) for r in stages)
    blending = next(r for r in stages if r["seed_id"] == "s1-mid" and r["stage"] == "BLENDING")
    assert (blending["entered_after"], blending["left_after"], blending["epochs"]) == (9, 12, 3)


def test_policy_run_culls_automatically(workspace):
    with workspace.reader() as reader, caught_up(workspace, reader) as projector:
        seeds = {s["seed_id"]: s for s in projector.fetch("seed_lifecycle", POLICY)}
    assert (seeds["s1-early"]["culled_by"], seeds["s1-early"]["cull_reason"], seeds["s1-early"]["ended_epoch"]) == (
        "automatic", "seed diverged", 5)
    assert (seeds["s3-late"]["cull_reason"], seeds["s3-late"]["contribution"]) == ("regression", -0.031)
    assert seeds["s2-mid"]["final_stage"] == "FOSSILIZED"


def test_epoch_metrics_and_summary_match_the_events(workspace):
    with workspace.reader() as reader, caught_up(workspace, reader) as projector:
        for run_id in (HEURISTIC, POLICY, STATIC):
            events = [r.event for r in reader.read_run(run_id)]
            ended = [e for e in events if type(e).__name__ == "EpochEnded"]
            rows = projector.fetch("epoch_metrics", run_id)
            assert [(r["epoch"], r["val_accuracy"], r["train_loss"], r["val_loss"], r["params"]) for r in rows] == [
                (e.epoch, e.val_accuracy, e.train_loss, e.val_loss, e.params) for e in ended]
            summary = projector.fetch("run_summary", run_id)[0]
            assert summary["status"] == "finished" and summary["events"] == len(events)
        live = [r["live_seeds"] for r in projector.fetch("epoch_metrics", HEURISTIC)]
    assert live[:7] == [0] * 7 and live[7] == 1 and live[20] == 1  # s2-late embargoed still holds its slot


def test_controller_decisions(workspace):
    with workspace.reader() as reader, caught_up(workspace, reader) as projector:
        decisions = projector.fetch("controller_decisions", HEURISTIC)
        issued = [r for r in reader.read_run(HEURISTIC) if type(r.event).__name__ == "CommandIssued"]
    assert [d["seq"] for d in decisions] == [r.seq for r in issued]
    rejected = [(d["epoch"], d["command"]) for d in decisions if d["outcome"] == "rejected"]
    assert rejected == [(8, "Advance"), (16, "Advance"), (21, "Germinate"), (22, "Germinate"), (24, "Advance")]
    assert all(d["reason"] for d in decisions if d["outcome"] == "rejected")
    by_epoch = {d["epoch"]: d for d in decisions}
    assert by_epoch[7]["effect"] == "s1-mid DORMANT → GERMINATED" and by_epoch[7]["seed_id"] == "s1-mid"
    assert by_epoch[20]["command"] == "Cull" and by_epoch[20]["effect"] == "s2-late BLENDING → CULLED"
    assert by_epoch[21]["reason"] == "slot late holds seed s2-late in EMBARGOED"
    assert by_epoch[1]["command"] == "Wait" and by_epoch[1]["outcome"] == "applied"


def test_blueprint_analytics_across_runs(workspace):
    with workspace.reader() as reader, caught_up(workspace, reader) as projector:
        stats = {b["blueprint"]: b for b in projector.fetch("blueprint_stats")}
    light, heavy, attention = stats["conv_light"], stats["conv_heavy"], stats["attention"]
    assert (light["runs"], light["germinations"], light["fossilized"], light["fossilization_rate"]) == (2, 2, 2, 1.0)
    assert light["params_added"] == 2 * 2304 and light["mean_contribution"] == pytest.approx(0.061)
    assert (heavy["culled"], heavy["fossilization_rate"], heavy["params_added"]) == (2, 0.0, 0)
    assert heavy["mean_contribution"] == pytest.approx(-0.031)
    assert (attention["germinations"], attention["culled"], attention["in_progress"]) == (2, 1, 1)


def test_state_round_trips_through_json_exactly(workspace):
    with workspace.reader() as reader, caught_up(workspace, reader) as projector:
        for p in projector.projections:
            state = p.initial()
            for r in reader.read_run(HEURISTIC):
                state = p.apply(state, r)
                assert p.decode(p.encode(state)) == state
            assert msgspec.json.encode(p.decode(p.encode(state))) == msgspec.json.encode(state)
