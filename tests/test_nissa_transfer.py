"""Export → import keeps every column of every event exactly; import is idempotent; bad files are bad input."""

import json
import re
import shutil
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_runs import FakeWriter, plan_run, run_id_for, write_comparison, write_run

from esper.errors import BadInput, LogAltered
from esper.nissa import transfer
from esper.nissa.transfer import EXPORT_SCHEMA, export_runs, format_for, import_file, read_file
from esper.store import Recorder, Workspace

HEURISTIC = run_id_for("heuristic", 0)
POLICY = run_id_for("policy", 0)
ALL_COLUMNS = "position, run_id, seq, event_id, ts, type, epoch, seed_id, slot, payload::VARCHAR, hash"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("source")
    write_comparison(root)
    return Workspace.at(root)


def rows(ws: Workspace, *runs: str) -> list[tuple]:
    with ws.reader() as reader:
        return reader.con.execute(
            f"SELECT {ALL_COLUMNS} FROM events WHERE run_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY run_id, seq",
            [list(runs)],
        ).fetchall()


def export(ws: Workspace, runs: list[str], path, fmt: str) -> int:
    with ws.reader() as reader:
        return export_runs(reader, runs, path, fmt)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_round_trip_keeps_every_column(source, tmp_path, fmt):
    path = tmp_path / f"heuristic.{fmt}"
    assert export(source, [HEURISTIC], path, fmt) == 70
    fresh = Workspace.at(tmp_path / "new" / "fresh")  # made on import, with the folder above it
    result = import_file(fresh, path)
    assert (result.imported, result.skipped, result.runs) == (70, 0, [HEURISTIC])
    assert [p.name for p in result.stores] == ["imported-heuristic.duckdb"]
    original, imported = rows(source, HEURISTIC), rows(fresh, HEURISTIC)
    assert imported == original  # position, run_id, seq, event_id, ts (µs), type, epoch, seed_id, slot, payload text, hash
    assert all(r[-1] is not None and len(r[-1]) == 64 for r in imported)
    assert len({r[4] for r in imported}) > 1  # timestamps really differ between batches, and survived


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_runs_from_several_stores_keep_their_positions_in_one_file_each(source, tmp_path, fmt):
    path = tmp_path / f"two.{fmt}"
    export(source, [HEURISTIC, POLICY], path, fmt)
    fresh = Workspace.at(tmp_path / "fresh")
    result = import_file(fresh, path)
    assert len(result.stores) == 2  # both stores numbered their events from position 1
    assert rows(fresh, HEURISTIC, POLICY) == rows(source, HEURISTIC, POLICY)


def test_runs_of_one_store_go_into_one_file(tmp_path):
    src = Workspace.at(tmp_path / "src")
    write_run(src.root, "heuristic", 0, run_id="a", store="shared")
    write_run(src.root, "policy", 0, run_id="b", store="shared")
    path = tmp_path / "shared.jsonl"
    export(src, ["a", "b"], path, "jsonl")
    fresh = Workspace.at(tmp_path / "fresh")
    assert len(import_file(fresh, path).stores) == 1
    assert rows(fresh, "a", "b") == rows(src, "a", "b")


def _row(run: str, seq: int, position: int) -> transfer.Row:
    return transfer.Row(position, run, seq, f"{run}-{seq}", None, "EpochEnded", seq, None, None, "{}")


def _groups(rows: list[transfer.Row]) -> list[tuple[str, list[tuple[str, int, int]]]]:
    return [(name, [(r.run_id, r.seq, r.position) for r in mine]) for name, mine in transfer.store_groups(rows)]


def test_store_groups_keep_positions_where_they_can_be_a_stores_order():
    """One store's rows stay one file in position order; runs whose positions collide get a file each, keeping
    their positions; a run whose positions do not rise with its seq (spread over stores) is renumbered in seq order."""
    one_store = [_row("a", 2, 3), _row("b", 1, 2), _row("a", 1, 1)]
    assert _groups(one_store) == [("", [("a", 1, 1), ("b", 1, 2), ("a", 2, 3)])]
    colliding = [_row("a", 1, 5), _row("a", 2, 7), _row("b", 1, 5), _row("b", 2, 6)]
    assert _groups(colliding) == [("a", [("a", 1, 5), ("a", 2, 7)]), ("b", [("b", 1, 5), ("b", 2, 6)])]
    spread = [_row("a", 1, 5), _row("a", 2, 7), _row("b", 1, 9), _row("b", 2, 5), _row("b", 3, 6)]
    assert _groups(spread) == [("a", [("a", 1, 5), ("a", 2, 7)]), ("b", [("b", 1, 1), ("b", 2, 2), ("b", 3, 3)])]


def test_a_long_file_name_gives_a_store_name_the_filesystem_takes(source, tmp_path):
    path = tmp_path / f"{'x' * 240}.jsonl"
    export(source, [HEURISTIC], path, "jsonl")
    fresh = Workspace.at(tmp_path / "fresh")
    result = import_file(fresh, path)
    assert [p.name for p in result.stores] == [f"imported-{'x' * 100}.duckdb"]
    assert result.imported == 70 and [p.name for p in fresh.root.iterdir()] == [f"imported-{'x' * 100}.duckdb"]


def test_import_twice_stores_nothing_twice(source, tmp_path):
    path = tmp_path / "h.jsonl"
    export(source, [HEURISTIC], path, "jsonl")
    ws = Workspace.at(tmp_path / "ws")
    import_file(ws, path)
    again = import_file(ws, path)
    assert (again.stores, again.imported, again.skipped) == ([], 0, 70)
    assert len(ws.store_files()) == 1 and len(rows(ws, HEURISTIC)) == 70
    # Importing a run into the very workspace it came from changes nothing either.
    assert import_file(source, path).imported == 0


def test_an_import_never_replaces_a_store_made_under_its_name_meanwhile(source, tmp_path, monkeypatch):
    """Two exports named alike (d1/run.jsonl, d2/run.jsonl) imported at once both want `imported-run.duckdb`: the one
    that comes second takes the next free name, whoever made the first file and whenever, and both runs stay."""
    static = run_id_for("static", 0)
    for folder, run in (("d1", HEURISTIC), ("d2", static)):
        (tmp_path / folder).mkdir()
        export(source, [run], tmp_path / folder / "run.jsonl", "jsonl")
    elsewhere = Workspace.at(tmp_path / "elsewhere")
    first = import_file(elsewhere, tmp_path / "d1" / "run.jsonl").stores[0]
    ws = Workspace.at(tmp_path / "ws")
    write = transfer._write_store_file

    def meanwhile(path, rows):  # while this import writes its store, another one puts d1's under the same name
        write(path, rows)
        shutil.copyfile(first, ws.store_path("imported-run"))

    monkeypatch.setattr(transfer, "_write_store_file", meanwhile)
    result = import_file(ws, tmp_path / "d2" / "run.jsonl")
    assert [p.name for p in result.stores] == ["imported-run-2.duckdb"]
    assert rows(ws, HEURISTIC) == rows(source, HEURISTIC) and rows(ws, static) == rows(source, static)


@pytest.mark.slow  # two import processes at once
def test_two_imports_of_one_file_at_once_store_it_once(source, tmp_path, monkeypatch):
    """The second import waits for the first to write, then finds every event there: one store, the run unaltered."""
    path = tmp_path / "h.jsonl"
    export(source, [HEURISTIC], path, "jsonl")
    ws = Workspace.at(tmp_path / "ws")
    write, second = transfer._write_stores, []
    other = threading.Thread(target=lambda: second.append(import_file(ws, path)))

    def with_another_import(*args):  # the first import has found what to write: the second starts now
        monkeypatch.setattr(transfer, "_write_stores", write)
        other.start()
        other.join(timeout=5)  # without the workspace's lock the second would have written the run by now
        return write(*args)

    monkeypatch.setattr(transfer, "_write_stores", with_another_import)
    first = import_file(ws, path)
    other.join()
    assert (first.imported, second[0].imported, second[0].skipped) == (70, 0, 70)
    assert [p.name for p in ws.store_files()] == ["imported-h.duckdb"]
    with ws.reader() as reader:
        reader.check_run(HEURISTIC)


def test_a_repeated_seq_names_the_store_files_that_hold_it(source, tmp_path):
    path = tmp_path / "h.jsonl"
    export(source, [HEURISTIC], path, "jsonl")
    ws = Workspace.at(tmp_path / "ws")
    stored = import_file(ws, path).stores[0]
    shutil.copyfile(stored, ws.store_path("copy"))
    with ws.reader() as reader, pytest.raises(LogAltered) as altered:
        reader.check_run(HEURISTIC)
    assert str(altered.value) == (f"log altered at seq 1 (RunStarted: a second event at this seq, held by "
                                  f"copy.duckdb and imported-h.duckdb) in run {HEURISTIC}")


def test_a_later_export_of_a_growing_run_adds_only_its_tail(tmp_path):
    src = Workspace.at(tmp_path / "src")
    dst = Workspace.at(tmp_path / "dst")
    batches = plan_run("heuristic", 0)
    with Recorder(src.store_path("live")) as recorder:
        writer = FakeWriter(recorder, "grow", batches)
        writer.write(8)
    export(src, ["grow"], tmp_path / "early.jsonl", "jsonl")
    assert import_file(dst, tmp_path / "early.jsonl").imported == sum(len(b) for b in batches[:8])
    with Recorder(src.store_path("live")) as recorder:
        writer.recorder = recorder
        writer.write()
    export(src, ["grow"], tmp_path / "late.parquet", "parquet")
    result = import_file(dst, tmp_path / "late.parquet")
    assert result.skipped == sum(len(b) for b in batches[:8]) and result.imported == sum(len(b) for b in batches[8:])
    assert rows(dst, "grow") == rows(src, "grow")


def test_a_different_run_under_a_stored_id_is_refused(source, tmp_path):
    other = Workspace.at(tmp_path / "other")
    write_run(other.root, "static", 5, run_id=HEURISTIC)
    path = tmp_path / "clash.jsonl"
    export(other, [HEURISTIC], path, "jsonl")
    with pytest.raises(BadInput, match="would not continue the run"):
        import_file(source, path)


def test_jsonl_is_one_readable_line_per_event_with_the_payload_verbatim(source, tmp_path):
    path = tmp_path / "h.jsonl"
    export(source, [HEURISTIC], path, "jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 71  # 70 events and the trailer
    first = json.loads(lines[0])
    assert list(first) == ["position", "run_id", "seq", "event_id", "ts", "type", "epoch", "seed_id", "slot", "payload",
                           "hash"]
    assert first["type"] == "RunStarted" and first["payload"]["config"]["controller"] == "heuristic"
    assert first["ts"].endswith("+00:00")
    stored = rows(source, HEURISTIC)[0][-2]
    assert f'"payload":{stored},"hash":' in lines[0]  # spliced as stored, not re-encoded
    last = rows(source, HEURISTIC)[-1]
    assert json.loads(lines[-1]) == {"trailer": {"heads": {HEURISTIC: {"seq": 70, "hash": last[-1]}}}}


def test_parquet_holds_the_store_columns(source, tmp_path):
    path = tmp_path / "h.parquet"
    export(source, [HEURISTIC], path, "parquet")
    table = pq.read_table(path)
    assert table.schema.remove_metadata() == EXPORT_SCHEMA and table.num_rows == 70


def test_format_for():
    from pathlib import Path

    assert format_for(Path("a.parquet"), None) == "parquet"
    assert format_for(Path("a.jsonl"), None) == "jsonl"
    assert format_for(Path("a"), None) == "jsonl"
    assert format_for(Path("a.PQ"), None) == "parquet"
    assert format_for(Path("a"), "parquet") == "parquet"
    assert format_for(Path("a.json"), "jsonl") == "jsonl"
    assert format_for(Path("a.txt"), "parquet") == "parquet"  # a name that says no format contradicts none
    for name in ("a.csv", "a.CSV", "a.duckdb"):  # a name that says another format is refused, whatever --format says
        for fmt in (None, "jsonl"):
            with pytest.raises(BadInput, match="export writes jsonl or parquet: name it .jsonl or .parquet"):
                format_for(Path(name), fmt)
    with pytest.raises(BadInput, match="unknown format"):
        format_for(Path("a"), "csv")
    for path, fmt in (("a.jsonl", "parquet"), ("a.parquet", "jsonl"), ("a.ndjson", "parquet")):
        with pytest.raises(BadInput, match=f"--format {fmt} but --out {path} names a"):
            format_for(Path(path), fmt)


def _good_lines(source, tmp_path) -> list[str]:
    path = tmp_path / "good.jsonl"
    export(source, [HEURISTIC], path, "jsonl")
    return path.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda lines: lines[:3] + ["{not json"] + lines[4:], r"bad\.jsonl:4: not an exported event"),
        (lambda lines: [lines[0].replace('"seq":1,', '"seq":"one",')] + lines[1:], r"bad\.jsonl:1: not an exported event"),
        (lambda lines: [lines[0].replace('"payload":{"type":"RunStarted"', '"payload":{"type":"Nope"')] + lines[1:],
         r"bad\.jsonl:1: payload is not an Esper event"),
        (lambda lines: lines[:-1] + [lines[-2]] + lines[-1:], r"appears twice"),
        (lambda lines: [re.sub(r'"event_id":"[^"]+"', '"event_id":"xyz"', lines[0])] + lines[1:], r"is not a UUID"),
        (lambda lines: [re.sub(r'"ts":"([^"]+)\+00:00"', r'"ts":"\1"', lines[0])] + lines[1:], r"has no time zone"),
        (lambda lines: [], r"no events in this file"),
        (lambda lines: [lines[0].replace('"position":1,', '"position":0,', 1)] + lines[1:],
         r"bad\.jsonl:1: seq and position start at 1 \(seq 1, position 0\)"),
        (lambda lines: [lines[0].replace('"seq":1,', '"seq":0,', 1)] + lines[1:],
         r"bad\.jsonl:1: seq and position start at 1 \(seq 0, position 1\)"),
    ],
)
def test_malformed_jsonl_is_bad_input_naming_the_row(source, tmp_path, damage, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(damage(_good_lines(source, tmp_path))) + "\n", encoding="utf-8")
    with pytest.raises(BadInput, match=message) as info:
        import_file(Workspace.at(tmp_path / "ws"), bad)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "ws").exists() or not Workspace.at(tmp_path / "ws").store_files()


def test_malformed_parquet_is_bad_input(source, tmp_path):
    good = tmp_path / "good.parquet"
    export(source, [HEURISTIC], good, "parquet")
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(BadInput, match="unreadable parquet"):
        read_file(truncated)
    partial = tmp_path / "partial.parquet"
    pq.write_table(pq.read_table(good).drop_columns(["payload"]), partial)
    with pytest.raises(BadInput, match="missing columns: payload"):
        read_file(partial)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({c: pa.array(["x"] * 2) for c in EXPORT_SCHEMA.names}), wrong)
    with pytest.raises(BadInput, match="wrong type"):
        read_file(wrong)


def test_an_export_with_an_event_removed_is_an_altered_log(source, tmp_path):
    """A sealed run's gap is an alteration (exit 1) wherever it is, as in a store: the chain names the missing seq."""
    bad = tmp_path / "bad.jsonl"
    lines = _good_lines(source, tmp_path)
    bad.write_text("\n".join(lines[:5] + lines[6:]) + "\n", encoding="utf-8")
    with pytest.raises(LogAltered, match=r"log altered at seq 6 \(missing"):
        import_file(Workspace.at(tmp_path / "ws"), bad)
