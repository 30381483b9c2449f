"""Tamper evidence (esper.store.chain): a log edited behind Esper's back is named by replay, refused by import,
and not served by Nissa; logs written before the chain still replay, with a note."""

import hashlib
import json
import re
from pathlib import Path

import duckdb
import pytest
from cli_runner import invoke, one_line_error
from fake_runs import run_id_for, write_run

from esper.errors import BadInput, LogAltered
from esper.leyline import PolicyUpdated, RunConfig, RunStarted, encode
from esper.nissa.projector import Projector
from esper.nissa.transfer import export_runs
from esper.store import Recorder, Workspace, chain
from esper.tolaria.tasks import TASKS

MNIST1D = TASKS["mnist1d"]

RUN = run_id_for("heuristic", 0)  # 70 events


@pytest.fixture
def ws(tmp_path) -> Workspace:
    write_run(tmp_path / "ws", "heuristic", 0)
    return Workspace.at(tmp_path / "ws")


def store(ws: Workspace) -> Path:
    (path,) = ws.store_files()
    return path


def sql(path: Path, statement: str, params=()) -> list[tuple]:
    con = duckdb.connect(str(path))
    try:
        return con.execute(statement, list(params)).fetchall()
    finally:
        con.close()


def epoch_seq(path: Path, epoch: int = 5) -> int:
    return sql(path, "SELECT seq FROM events WHERE type = 'EpochEnded' AND epoch = ?", [epoch])[0][0]


def altered(ws: Workspace, run: str = RUN) -> str:
    """What replay says of the altered run; `esper runs` must list it as altered, with the same words."""
    line = one_line_error(invoke("replay", run, workspace=ws.root), code=1)
    assert "log altered" in line
    listed = invoke("runs", "--json", workspace=ws.root)
    assert listed.exit_code == 0, listed.stderr
    status = {r["run_id"]: r["status"] for r in json.loads(listed.stdout)}
    assert status.get(run, "altered") == "altered"  # a run the runs view still lists (not one whose RunStarted went)
    if run in status:
        assert f"note: {line.removeprefix('esper: ')}" in listed.stderr.splitlines()
    return line


def test_runs_lists_an_untouched_run_beside_an_altered_one_as_it_ended(ws):
    write_run(ws.root, "static", 1)
    path = next(p for p in ws.store_files() if RUN in p.name)
    sql(path, "DELETE FROM events WHERE seq = ?", [epoch_seq(path)])
    listed = invoke("runs", "--json", workspace=ws.root)
    status = {r["run_id"]: r["status"] for r in json.loads(listed.stdout)}
    assert status == {RUN: "altered", run_id_for("static", 1): "finished"}


def test_the_chain_is_sha256_of_the_previous_hash_the_seq_and_the_payload_as_stored(ws):
    rows = sql(store(ws), "SELECT seq, payload::VARCHAR, hash FROM events WHERE run_id = ? ORDER BY seq", [RUN])
    prev = hashlib.sha256(b"esper run " + RUN.encode()).digest()
    for seq, payload, hash_ in rows:
        prev = hashlib.sha256(prev + seq.to_bytes(8, "big") + payload.encode()).digest()
        assert hash_ == prev  # the store keeps the 32 bytes
    assert sql(store(ws), "SELECT run_id, seq, hash FROM heads") == [(RUN, 70, prev.hex())]
    with ws.reader() as reader:  # what users' SQL sees: lowercase hex
        assert reader.con.execute("SELECT hash FROM events WHERE seq = 70").fetchall() == [(prev.hex(),)]
    assert invoke("replay", RUN, workspace=ws.root).exit_code == 0


def test_a_checked_read_returns_the_events_read_run_returns_and_refuses_an_altered_log(ws):
    """`read_checked` decodes the rows it checked: the events are those an unchecked read gives, and an edit that
    the unchecked read would serve is refused."""
    with ws.reader() as reader:
        checked = reader.read_checked(RUN)
        assert checked.recorded == reader.read_run(RUN) and len(checked.recorded) == 70
        assert checked.unsealed is None
    path = store(ws)
    seq = epoch_seq(path)
    sql(path, "UPDATE events SET payload = replace(payload::VARCHAR, '\"val_loss\":', '\"val_loss\":9,\"x\":')::JSON"
              " WHERE seq = ?", [seq])
    with ws.reader() as reader:
        assert len(reader.read_run(RUN)) == 70
        with pytest.raises(LogAltered, match=f"log altered at seq {seq} "):
            reader.read_checked(RUN)


def test_an_updated_payload_is_named_by_replay(ws):
    path = store(ws)
    seq = epoch_seq(path)
    payload = json.loads(sql(path, "SELECT payload::VARCHAR FROM events WHERE seq = ?", [seq])[0][0])
    payload["val_accuracy"] = 0.99
    sql(path, "UPDATE events SET payload = ? WHERE seq = ?", [json.dumps(payload, separators=(",", ":")), seq])
    assert f"log altered at seq {seq} (EpochEnded)" in altered(ws)


COLUMN_EDITS = {  # a column the store derives from the payload, edited alone: (SET clause, WHERE clause, what is said)
    "epoch": ("epoch = 99", "type = 'EpochEnded' AND epoch = 5", "its epoch column says 99, its payload 5"),
    "epoch erased": ("epoch = NULL", "type = 'EpochEnded' AND epoch = 5", "its epoch column says None, its payload 5"),
    "type": ("type = 'RunFailed'", "type = 'RunFinished'", "its type column says 'RunFailed', its payload 'RunFinished'"),
    "seed_id": ("seed_id = 's9-late'", "type = 'SeedGerminated'", "its seed_id column says 's9-late'"),
    "slot": ("slot = 'nowhere'", "type = 'SeedGerminated'", "its slot column says 'nowhere'"),
}


@pytest.mark.parametrize("edit", COLUMN_EDITS)
def test_an_edited_column_is_named_by_replay_though_the_payload_is_untouched(ws, edit):
    """SQL over `events` reads these columns, not the payload: an edit of one alone is an alteration."""
    setting, where, said = COLUMN_EDITS[edit]
    path = store(ws)
    seq = sql(path, f"SELECT min(seq) FROM events WHERE {where}")[0][0]
    sql(path, f"UPDATE events SET {setting} WHERE seq = ?", [seq])
    assert f"log altered at seq {seq} (" in altered(ws) and said in altered(ws)


def test_a_deleted_middle_event_is_named_by_replay(ws):
    path = store(ws)
    seq = epoch_seq(path)
    sql(path, "DELETE FROM events WHERE seq = ?", [seq])
    assert f"log altered at seq {seq} (missing: the log goes from seq {seq - 1} to seq {seq + 1})" in altered(ws)


def test_a_cut_tail_is_caught_by_the_heads_table(ws):
    sql(store(ws), "DELETE FROM events WHERE seq = 70")
    assert "log altered: the store's head says seq 70, the log ends at seq 69" in altered(ws)


def test_a_cut_tail_with_its_head_removed_too_is_caught(ws):
    sql(store(ws), "DELETE FROM events WHERE seq = 70")
    sql(store(ws), "DELETE FROM heads")
    assert f"the store has no head for run {RUN}, the log ends at seq 69" in altered(ws)


def test_a_cut_tail_with_the_heads_table_dropped_is_caught(ws):
    # a store without a heads table reads as one written before the chain, but a run with hashes never was
    sql(store(ws), "DELETE FROM events WHERE seq = 70")
    sql(store(ws), "DROP TABLE heads")
    assert f"the store has no head for run {RUN}, the log ends at seq 69" in altered(ws)
    assert one_line_error(invoke("export", RUN, "--out", str(store(ws).parent / "x.jsonl"), workspace=ws.root),
                          code=1).startswith("esper: log altered")


def test_an_inserted_event_is_named_by_replay(ws):
    path = store(ws)
    seq = epoch_seq(path)
    # A forged epoch (better accuracy, the real one's hash) pushed in at `seq`, the events after it moved on.
    sql(path, "UPDATE events SET seq = seq + 1, position = position + 1 WHERE seq >= ?", [seq])
    sql(path, "INSERT INTO events SELECT position - 1, run_id, seq - 1, uuid(), ts, type, epoch, seed_id, slot,"
              " replace(payload::VARCHAR, '\"val_accuracy\":', '\"val_accuracy\":0.99,\"was\":')::JSON, hash"
              " FROM events WHERE seq = ?", [seq + 1])
    assert f"log altered at seq {seq} (EpochEnded)" in altered(ws)


def test_an_event_appended_past_the_head_is_caught_even_with_a_valid_hash(ws):
    path = store(ws)
    last, payload = sql(path, "SELECT hash, payload::VARCHAR FROM events WHERE seq = 70")[0]
    forged = chain.link(last, 71, payload)
    sql(path, "INSERT INTO events SELECT position + 1, run_id, 71, uuid(), ts, type, epoch, seed_id, slot, payload, ?"
              " FROM events WHERE seq = 70", [forged])
    assert "the store's head says seq 70, the log ends at seq 71" in altered(ws)


# ---- exports ------------------------------------------------------------------------------------


def exported(ws: Workspace, tmp_path: Path, fmt: str = "jsonl") -> Path:
    path = tmp_path / f"run.{fmt}"
    with ws.reader() as reader:
        export_runs(reader, [RUN], path, fmt)
    return path


def edit_epoch(path: Path, epoch: int = 5) -> int:
    """Change one EpochEnded's val_accuracy in a jsonl export; returns its seq."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        row = json.loads(line)
        if row.get("type") == "EpochEnded" and row["epoch"] == epoch:
            lines[i] = line.replace('"val_accuracy":', '"val_accuracy":0.99,"was":', 1)
            path.write_text("\n".join(lines) + "\n")
            return row["seq"]
    raise AssertionError("no such epoch")


def test_an_edited_export_line_is_named_by_replay(ws, tmp_path):
    path = exported(ws, tmp_path)
    assert invoke("replay", path).exit_code == 0
    seq = edit_epoch(path)
    line = one_line_error(invoke("replay", path), code=1)
    assert f"log altered at seq {seq} (EpochEnded)" in line


def test_an_export_without_its_trailer_is_altered(ws, tmp_path):
    path = exported(ws, tmp_path)
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    line = one_line_error(invoke("replay", path), code=1)
    assert f"has no trailer with the head of run {RUN}; the log ends at seq 70" in line


def test_an_export_cut_short_is_caught_by_its_trailer(ws, tmp_path):
    path = exported(ws, tmp_path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3] + lines[-1:]) + "\n")
    line = one_line_error(invoke("replay", path), code=1)
    assert "the export's trailer's head says seq 70, the log ends at seq 68" in line


def test_an_edited_parquet_export_is_named_by_replay(ws, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = exported(ws, tmp_path, "parquet")
    table = pq.read_table(path)
    payloads = table.column("payload").to_pylist()
    seq = epoch_seq(store(ws))
    payloads[seq - 1] = payloads[seq - 1].replace('"val_accuracy":', '"val_accuracy":0.99,"was":', 1)
    table = table.set_column(table.column_names.index("payload"), "payload", pa.array(payloads, pa.string()))
    pq.write_table(table, path)
    line = one_line_error(invoke("replay", path), code=1)
    assert f"log altered at seq {seq} (EpochEnded)" in line


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_reseal_export_makes_a_forged_export_chain_again(ws, tmp_path, fmt):
    path = exported(ws, tmp_path, fmt)
    if fmt == "jsonl":
        edit_epoch(path)
    chain.reseal_export(path)
    result = invoke("replay", path, "--json")
    assert result.exit_code == 0, result.stderr
    if fmt == "jsonl":
        assert 0.99 in [m["val_accuracy"] for m in json.loads(result.stdout)["metrics"]]


def test_import_refuses_a_broken_chain_and_writes_nothing(ws, tmp_path):
    path = exported(ws, tmp_path)
    seq = edit_epoch(path)
    target = tmp_path / "target"
    line = one_line_error(invoke("import", path, workspace=target), code=1)
    assert f"log altered at seq {seq} (EpochEnded)" in line
    assert not target.exists() or not list(target.iterdir())


def test_an_export_rewritten_to_the_same_values_says_its_lines_are_checked_as_exported(ws, tmp_path):
    path = exported(ws, tmp_path)
    path.write_text("".join(json.dumps(json.loads(line)) + "\n" for line in path.read_text().splitlines()))
    line = one_line_error(invoke("import", path, workspace=tmp_path / "target"), code=1)
    assert "log altered at seq 1 (RunStarted)" in line, line
    assert "run.jsonl (its lines are checked as exported, byte for byte)" in line, line


def test_import_refuses_an_export_whose_epoch_field_was_edited(ws, tmp_path):
    path = exported(ws, tmp_path)
    lines = path.read_text().splitlines()
    i, row = next((i, json.loads(line)) for i, line in enumerate(lines) if '"type":"EpochEnded"' in line)
    lines[i] = lines[i].replace(f'"epoch":{row["epoch"]},', '"epoch":42,', 1)
    assert lines[i] != path.read_text().splitlines()[i]
    path.write_text("\n".join(lines) + "\n")
    target = tmp_path / "target"
    line = one_line_error(invoke("import", path, workspace=target), code=1)
    assert f"log altered at seq {row['seq']} (EpochEnded: its epoch column says 42, its payload {row['epoch']})" in line
    assert not target.exists() or not list(target.iterdir())


@pytest.mark.parametrize("bad_id", ["../../../tmp/x", "a" * 201, "a\\b", "tab\there", ""])
def test_import_refuses_a_run_id_esper_would_never_write(ws, tmp_path, bad_id):
    path = exported(ws, tmp_path)
    text = path.read_text().replace(json.dumps(RUN), json.dumps(bad_id))
    path.write_text(text)
    chain.reseal_export(path)  # a well-formed chain: the run id itself is what is refused
    target = tmp_path / "target"
    line = one_line_error(invoke("import", path, workspace=target), code=2)
    assert "is not one Esper writes" in line
    assert not target.exists() or not list(target.iterdir())


def test_an_imported_run_keeps_its_chain_and_head(ws, tmp_path):
    path = exported(ws, tmp_path, "parquet")
    target = Workspace.at(tmp_path / "target")
    assert invoke("import", path, workspace=target.root).exit_code == 0
    (imported,) = target.store_files()
    assert sql(imported, "SELECT seq, hash FROM heads") == sql(store(ws), "SELECT seq, hash FROM heads")
    sql(imported, "DELETE FROM events WHERE seq = 70")
    assert "the store's head says seq 70, the log ends at seq 69" in altered(target)


# ---- Nissa --------------------------------------------------------------------------------------


def summary(projector: Projector) -> dict:
    return projector.fetch("run_summary", RUN)[0] if projector.fetch("run_summary", RUN) else {}


def test_catch_up_does_not_keep_serving_an_updated_value(ws):
    path = store(ws)
    last_epoch = sql(path, "SELECT seq, payload::VARCHAR FROM events WHERE type = 'EpochEnded' ORDER BY seq DESC")[0]
    projector = Projector.for_workspace(ws)
    with ws.reader() as reader:
        projector.catch_up(reader)
    old = summary(projector)["best_val_accuracy"]
    projector.close()
    payload = json.loads(last_epoch[1])
    payload["val_accuracy"] = 0.999
    sql(path, "UPDATE events SET payload = ? WHERE seq = ?", [json.dumps(payload, separators=(",", ":")), last_epoch[0]])
    with ws.reader() as reader, Projector.for_workspace(ws) as projector:
        projector.catch_up(reader, check=[RUN])
        assert summary(projector).get("best_val_accuracy") != old
        assert summary(projector) == {}  # its rows are dropped, not rebuilt from the altered log
        assert any(f"log altered at seq {last_epoch[0]} (EpochEnded)" in note for note in projector.notes)
    line = one_line_error(invoke("report", RUN, workspace=ws.root), code=1)
    assert f"log altered at seq {last_epoch[0]} (EpochEnded)" in line


def test_a_drawn_run_is_folded_again_from_its_log_not_served_from_edited_projections(ws):
    with ws.reader() as reader, Projector.for_workspace(ws) as projector:
        projector.catch_up(reader)
        true = summary(projector)["test_accuracy"]
    con = duckdb.connect(str(ws.root / ".nissa" / "projections.duckdb"))
    con.execute("UPDATE run_summary SET test_accuracy = 0.999")
    con.execute("UPDATE epoch_metrics SET val_accuracy = 0.95")
    con.close()
    with ws.reader() as reader, Projector.for_workspace(ws) as projector:
        projector.catch_up(reader)  # no run drawn: the file is trusted, as a cache
        assert summary(projector)["test_accuracy"] == 0.999
        projector.catch_up(reader, check=[RUN])
        assert summary(projector)["test_accuracy"] == true
        assert 0.95 not in {row["val_accuracy"] for row in projector.fetch("epoch_metrics", RUN)}
    result = invoke("report", RUN, workspace=ws.root)
    assert result.exit_code == 0 and "99.9" not in result.output


def test_catch_up_drops_a_run_whose_epoch_column_was_edited(ws):
    path = store(ws)
    with ws.reader() as reader, Projector.for_workspace(ws) as projector:
        projector.catch_up(reader)
        assert summary(projector)
    seq = epoch_seq(path)
    sql(path, "UPDATE events SET epoch = 99 WHERE seq = ?", [seq])
    with ws.reader() as reader, Projector.for_workspace(ws) as projector:
        projector.catch_up(reader, check=[RUN])
        assert summary(projector) == {}
        assert any(f"log altered at seq {seq} (EpochEnded: its epoch column says 99" in n for n in projector.notes)


def test_catch_up_checks_new_events_continue_the_head_it_saw(ws):
    path = store(ws)
    with ws.reader() as reader, Projector.for_workspace(ws) as projector:
        projector.catch_up(reader, max_events=30)  # folded up to seq 30
    sql(path, "UPDATE events SET payload = replace(payload::VARCHAR, '\"val_loss\":', '\"val_loss\":9,\"was\":')::JSON"
              " WHERE seq = (SELECT min(seq) FROM events WHERE seq > 40 AND type = 'EpochEnded')")
    with ws.reader() as reader, Projector.for_workspace(ws) as projector:
        projector.catch_up(reader)
        assert summary(projector) == {}
        assert any("log altered" in note for note in projector.notes)


# ---- logs written before the chain --------------------------------------------------------------

OLD_DDL = """CREATE TABLE events (position BIGINT NOT NULL, run_id VARCHAR NOT NULL, seq BIGINT NOT NULL,
    event_id UUID NOT NULL, ts TIMESTAMPTZ NOT NULL, type VARCHAR NOT NULL, epoch INTEGER, seed_id VARCHAR,
    slot VARCHAR, payload JSON NOT NULL)"""


def make_old(ws: Workspace) -> Path:
    """The workspace's store as Esper wrote it before the chain: no hash column, no heads table."""
    path = store(ws)
    old = path.with_name("old.duckdb")
    con = duckdb.connect(str(old))
    con.execute(OLD_DDL)
    con.execute(f"ATTACH '{path}' AS src (READ_ONLY)")
    con.execute("INSERT INTO events SELECT * EXCLUDE (hash) FROM src.events")
    payload = json.loads(con.execute("SELECT payload::VARCHAR FROM events WHERE type = 'RunStarted'").fetchone()[0])
    payload["schema_version"] = 2  # as the Esper of that time wrote it: no preset, no versions
    del payload["preset"], payload["versions"]
    con.execute("UPDATE events SET payload = ?::JSON WHERE type = 'RunStarted'", [json.dumps(payload)])
    con.close()
    path.unlink()
    return old


def make_hex_hashed(ws: Workspace) -> Path:
    """The workspace's store as Esper wrote it when it kept hashes as 64 hex characters (VARCHAR)."""
    path = store(ws)
    old = path.with_name("hex.duckdb")
    con = duckdb.connect(str(old))
    con.execute(OLD_DDL)
    con.execute("ALTER TABLE events ADD COLUMN hash VARCHAR")
    con.execute(f"ATTACH '{path}' AS src (READ_ONLY)")
    con.execute("INSERT INTO events SELECT * EXCLUDE (hash), lower(hex(hash)) FROM src.events")
    con.execute("CREATE TABLE heads AS SELECT * FROM src.heads")
    con.close()
    path.unlink()
    return old


def test_a_store_with_hex_hashes_is_read_checked_and_appended_to_in_its_own_way(ws, tmp_path):
    old = make_hex_hashed(ws)
    assert invoke("replay", RUN, workspace=ws.root).exit_code == 0
    with Recorder(old) as rec:
        last = rec.read(RUN)[-1].event  # appended again: the store does not judge what it holds
        rec.append(RUN, [last], 70)
    (stored,) = sql(old, "SELECT hash FROM events WHERE seq = 71")[0]
    assert isinstance(stored, str) and len(stored) == 64  # the store keeps its way
    with ws.reader() as reader:
        assert reader.check_run(RUN) is None  # the chain goes on across the two appends
        assert reader.con.execute("SELECT hash FROM events WHERE seq = 71").fetchall() == [(stored,)]
    # exported and imported, the run lands in a new store, which keeps bytes; its chain still holds
    path = exported(ws, tmp_path)
    target = Workspace.at(tmp_path / "target")
    assert invoke("import", path, workspace=target.root).exit_code == 0
    (imported,) = target.store_files()
    assert sql(imported, "SELECT hash FROM events WHERE seq = 71") == [(bytes.fromhex(stored),)]
    with target.reader() as reader:
        assert reader.check_run(RUN) is None
    sql(old, "UPDATE events SET payload = replace(payload::VARCHAR, '\"val_loss\":', '\"val_loss\":9,\"was\":')::JSON"
             " WHERE seq = ?", [epoch_seq(old)])
    assert f"log altered at seq {epoch_seq(old)} (EpochEnded)" in altered(ws)


def events_comment(path: Path) -> str | None:
    return sql(path, "SELECT comment FROM duckdb_tables() WHERE table_name = 'events'")[0][0]


def test_a_store_says_its_format_and_one_of_a_newer_esper_is_refused_not_taken_for_tampering(ws, tmp_path):
    path = store(ws)
    assert events_comment(path) == "esper store format 2"
    imported = Workspace.at(tmp_path / "target")
    assert invoke("import", exported(ws, tmp_path), workspace=imported.root).exit_code == 0
    assert [events_comment(p) for p in imported.store_files()] == ["esper store format 2"]
    sql(path, "COMMENT ON TABLE events IS 'esper store format 3'")  # as a later Esper would mark its own
    newer = "written by a newer Esper (store format 3; this one reads formats up to 2): upgrade Esper to read it"
    with ws.reader() as reader:
        assert reader.con.execute("SELECT count(*) FROM events").fetchall() == [(0,)]
        assert reader.notes == [f"skipped {path.name}: {newer}"]
    result = invoke("replay", RUN, workspace=ws.root)
    assert result.exit_code == 2 and newer in result.stderr and "altered" not in result.stderr
    with pytest.raises(BadInput, match=re.escape(f"store {path.name} was {newer}")):
        Recorder(path)
    assert events_comment(path) == "esper store format 3"  # left as it was


def test_a_v2_log_without_hashes_replays_with_a_note(ws):
    old = make_old(ws)
    result = invoke("replay", RUN, workspace=ws.root)
    assert result.exit_code == 0, result.stderr
    assert f"note: run {RUN} is unsealed (written before hash chains); its integrity cannot be checked" in result.stderr
    # A Recorder opening the old store adds the column and the table; the run stays unsealed, now anchored.
    with Recorder(old) as rec:
        assert rec.last_seq(RUN) == 70
    assert sql(old, "SELECT count(*) FROM events WHERE hash IS NULL") == [(70,)]
    assert invoke("replay", RUN, workspace=ws.root).exit_code == 0


def test_appending_to_a_run_of_a_store_written_before_heads_anchors_it_then_moves_its_head(ws):
    old = make_old(ws)
    with Recorder(old) as rec:
        last = rec.read(RUN)[-1].event  # appended again: the store does not judge what it holds
        rec.append(RUN, [last], 70)
    assert sql(old, "SELECT run_id, seq, hash FROM heads") == [(RUN, 71, None)]  # added: unsealed, anchored
    with Recorder(old) as rec:
        rec.append(RUN, [last], 71)
    assert sql(old, "SELECT run_id, seq, hash FROM heads") == [(RUN, 72, None)]  # moved, still one row


def test_a_v2_export_without_hashes_or_trailer_replays_with_a_note(ws, tmp_path):
    make_old(ws)
    path = exported(ws, tmp_path)
    lines = [line.replace(',"hash":null}', "}") for line in path.read_text().splitlines()[:-1]]
    path.write_text("\n".join(lines) + "\n")
    result = invoke("replay", path)
    assert result.exit_code == 0, result.stderr
    assert "is unsealed" in result.stderr
    result = invoke("import", path, workspace=tmp_path / "elsewhere")
    assert result.exit_code == 0, result.stderr
    assert f"note: run {RUN} is unsealed" in result.stderr


def test_a_sealed_log_stripped_of_its_hashes_is_tampering(tmp_path):
    ws = Workspace.at(tmp_path)
    v3 = RunStarted(preset=MNIST1D, config=RunConfig(), slots=["mid"], blueprints=["conv_light"], schema_version=chain.SEALED_SINCE)
    with Recorder(ws.store_path("v3")) as rec:
        rec.append("v3", [v3], 0)
    assert json.loads(sql(ws.store_path("v3"), "SELECT payload::VARCHAR FROM events")[0][0])["schema_version"] == 3
    sql(ws.store_path("v3"), "UPDATE events SET hash = NULL")
    sql(ws.store_path("v3"), "UPDATE heads SET hash = NULL")
    assert "log altered at seq 1 (RunStarted: its hash is missing)" in altered(ws, "v3")
    # The same log written as v2 is merely unsealed.
    v2 = json.loads(encode(RunStarted(preset=MNIST1D, config=RunConfig())))
    v2["schema_version"] = 2
    del v2["preset"], v2["versions"]
    assert chain.verify("v2", [(1, "RunStarted", json.dumps(v2).encode(), None, (None, None, None))], (1, None)) is False
    with pytest.raises(LogAltered, match="its hash is missing"):
        chain.verify("v3", [(1, "RunStarted", encode(v3), None, (None, None, None))], (1, None))


@pytest.mark.parametrize("recorded_since_v3", ["preset", "versions"])
def test_a_sealed_log_whose_version_was_edited_down_is_still_tampering(ws, recorded_since_v3):
    # hashes stripped and the version written down to one from before the chain: the payload still has what only
    # sealed versions record
    path = store(ws)
    start = json.loads(sql(path, "SELECT payload::VARCHAR FROM events WHERE seq = 1")[0][0])
    start["schema_version"] = 2
    start.pop("preset" if recorded_since_v3 == "versions" else "versions")
    sql(path, "UPDATE events SET payload = ? WHERE seq = 1", [json.dumps(start, separators=(",", ":"))])
    sql(path, "UPDATE events SET hash = NULL")
    sql(path, "DROP TABLE heads")
    assert "log altered at seq 1 (RunStarted: its hash is missing)" in altered(ws)


def test_the_recorder_refuses_a_run_id_it_would_never_write(tmp_path):
    from esper.errors import BadInput

    with Recorder(tmp_path / "s.duckdb") as rec, pytest.raises(BadInput, match="path separator"):
        rec.append("../x", [RunStarted(preset=MNIST1D, config=RunConfig())], 0)


def test_a_learners_stream_stripped_of_its_hashes_is_tampering_unless_written_before_the_chain():
    update = PolicyUpdated(update=1, stats={"loss": 0.5})
    assert update.schema_version == chain.LEARNER_SEALED_SINCE
    with pytest.raises(LogAltered, match="its hash is missing"):
        chain.verify("ppo-0", [(1, "PolicyUpdated", encode(update), None, (None, None, None))], (1, None))
    v1 = json.loads(encode(update))
    v1["schema_version"] = 1  # as an Esper from before the chain wrote it
    v1_row = (1, "PolicyUpdated", json.dumps(v1).encode(), None, (None, None, None))
    assert chain.verify("ppo-0", [v1_row], (1, None)) is False


def test_an_export_of_a_cut_log_is_refused(ws, tmp_path):
    """The trailer is built from the exported rows: without the check, a log cut in the store would export as whole."""
    path = store(ws)
    sql(path, "DELETE FROM events WHERE seq = (SELECT max(seq) FROM events)")
    result = invoke("export", RUN, "--format", "jsonl", "--out", str(tmp_path / "cut.jsonl"), workspace=ws.root)
    assert "the store's head says seq 70" in one_line_error(result, code=1)
    assert not (tmp_path / "cut.jsonl").exists()


@pytest.mark.parametrize("command, code", [
    (["run", "--controller", "scratch", "--like", RUN, "--print-config"], 0),
    (["iql", "--steps", "3", "--batch-size", "4", "--out", "p.pt"], 2),  # the fake run's blueprints are no policy's
])
def test_what_reads_an_unsealed_run_says_so_as_replay_does(ws, tmp_path, monkeypatch, command, code):
    """A baseline built like an old run, or a policy learnt from old runs, rests on events no hash covers."""
    monkeypatch.chdir(tmp_path)
    make_old(ws)
    result = invoke(*command, workspace=ws.root)
    assert result.exit_code == code, result.stderr
    assert f"note: run {RUN} is unsealed (written before hash chains); its integrity cannot be checked" in result.stderr
