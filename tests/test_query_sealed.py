"""`esper query` cannot change anything: every statement that is not a read is refused before any runs.

DuckDB puts each attached store on the connection's allowed paths, so "external access off" alone still lets
SQL detach a store and attach the same file read-write. Each attempt below must exit 2 with one line, print
nothing, and leave every file in the workspace, the working directory and beside them byte-for-byte as it was."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cli_runner import esper, invoke, one_line_error
from fake_runs import write_run

from esper.errors import BadInput, EsperError
from esper.store import Workspace

NOT_READING = "only reading statements may run"

# (sql, what the one-line error must say); {store} is a store file, {outside} a file beside the workspace.
ESCAPES = [
    ("detach store0; attach '{store}' as w; delete from w.events; select 1", "statement 1 is DETACH"),
    ("attach '{store}' as w", "statement 1 is ATTACH"),
    ("select 1; delete from events", "statement 2 is DELETE"),
    ("/* x */ detach memory", "statement 1 is DETACH"),
    ("select 1; -- \n drop view events", "statement 2 is DROP"),
    ("EXPLAIN ANALYZE COPY (select 1) TO 'f'", "statement 1 is EXPLAIN ANALYZE"),
    ("explain analyze select count(*) from events", "statement 1 is EXPLAIN ANALYZE"),
    ("explain (format json, analyze) select 1", "statement 1 is EXPLAIN ANALYZE"),
    ("explain delete from events", "statement 1 is EXPLAIN DELETE"),
    ("DeLeTe FROM events", "statement 1 is DELETE"),
    ("delete from events", "statement 1 is DELETE"),
    ("insert into events select * from events", "statement 1 is INSERT"),
    ("UPDATE events SET seq = 0", "statement 1 is UPDATE"),
    ("install json", "statement 1 is LOAD"),
    ("load json", "statement 1 is LOAD"),
    ("set threads=1", "statement 1 is SET"),
    ("SET enable_external_access = true", "statement 1 is SET"),
    ("reset threads", "statement 1 is SET"),
    ("use memory", "statement 1 is SET"),
    ("create table t as select 1", "statement 1 is CREATE"),
    ("create view v as select 1", "statement 1 is CREATE"),
    ("create macro m(x) as x", "statement 1 is CREATE"),
    ("drop view events", "statement 1 is DROP"),
    ("alter view events rename to e", "statement 1 is ALTER"),
    ("begin transaction", "statement 1 is TRANSACTION"),
    ("select 1; COMMIT", "statement 2 is TRANSACTION"),
    ("checkpoint", "statement 1 is CALL"),
    ("vacuum", "statement 1 is VACUUM"),
    ("export database 'd'", "statement 1 is EXPORT"),
    ("import database 'd'", ""),  # DuckDB parses it as PRAGMA
    ("copy (select 1) to 'x.csv'", "statement 1 is COPY"),
    ("copy (select 1) to '.tmp/x.csv'", "statement 1 is COPY"),
    ("copy (select 1) to '{store}.wal'", "statement 1 is COPY"),  # on DuckDB's allowed paths
    ("call pragma_version()", "statement 1 is CALL"),
    ("pragma database_list", "statement 1 is PRAGMA"),
    ("select 1; Pragma version", "statement 2 is PRAGMA"),
    ("prepare p as delete from events", "statement 1 is PREPARE"),
    ("update extensions", "statement 1 is UNKNOWN"),
    ("pivot events on type using count(*)", "statement 1 is MULTI (pivot events on type using count(*)): DuckDB runs "
     "it as several statements, one of which creates a type; a PIVOT does so when it has to find its columns' values, "
     "so name them (PIVOT ... ON col IN ('a', 'b') ...)"),
    ("select * from query('delete from events')", "bad SQL"),
    ("select * from read_csv('{outside}')", "bad SQL"),
    ("select * from read_text('{outside}')", "bad SQL"),
    ("select * from read_blob('/etc/hostname')", "bad SQL"),
    ("select * from glob('{outside_dir}/*')", "bad SQL"),
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("stores")
    write_run(ws, epochs=3)
    write_run(ws, controller="static", epochs=3)
    return ws


@pytest.fixture
def place(stores, tmp_path, monkeypatch):
    """A workspace of two stores, a file beside it, and an empty working directory to run from."""
    shutil.copytree(stores, tmp_path / "ws")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "outside.csv").write_text("secret,42\n")
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


def files_under(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("sql, says", ESCAPES)
def test_an_escape_attempt_is_refused_and_changes_nothing(place, sql, says):
    ws = place / "ws"
    store = sorted(ws.glob("*.duckdb"))[0]
    before = files_under(place)
    sql = sql.format(store=store, outside=place / "outside.csv", outside_dir=place)
    result = invoke("query", sql, workspace=ws)
    error = one_line_error(result)
    assert says in error and (NOT_READING in error or "bad SQL" in error), error
    assert result.stdout == ""
    assert files_under(place) == before


@pytest.mark.parametrize("sql, check", [
    ("select count(*) as n from events", lambda rows: rows[0]["n"] > 0),
    ("describe events", lambda rows: {"run_id", "payload"} <= {r["column_name"] for r in rows}),
    ("SHOW TABLES", lambda rows: {"events", "runs"} <= {r["name"] for r in rows}),
    ("summarize events", lambda rows: "type" in {r["column_name"] for r in rows}),
    ("explain select type from events where epoch = 1", lambda rows: rows[0]["explain_key"] == "physical_plan"),
    ("explain (format json) select 1", lambda rows: len(rows) == 1),
    ("with x as (select distinct run_id from events) select count(*) as n from x", lambda rows: rows == [{"n": 2}]),
    ("/* runs */ from runs select run_id order by 1;", lambda rows: len(rows) == 2),
    ("select * from duckdb_databases()", lambda rows: len(rows) >= 2),  # table functions in a SELECT still run
    ("pivot (select controller from runs) on controller in ('heuristic', 'static') using count(*)",
     lambda rows: rows == [{"heuristic": 1, "static": 1}]),
])
def test_reading_sql_still_runs_and_writes_nothing(place, sql, check):
    before = files_under(place)
    result = invoke("query", sql, "--format", "json", workspace=place / "ws")
    assert result.exit_code == 0, result.stderr
    assert check(json.loads(result.stdout))
    assert files_under(place) == before


def test_every_statement_shows_its_rows_in_a_table_and_csv_or_json_take_one(place):
    shown = invoke("query", "select 1 as a; select 'two' as b, 3 as c", workspace=place / "ws")
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout == "a\n-\n1\n(1 row)\n\nb    c\n---  -\ntwo  3\n(1 row)\n"
    for fmt in ("csv", "json"):
        line = one_line_error(invoke("query", "select 1; select 2", "--format", fmt, workspace=place / "ws"))
        assert f"--format {fmt} shows one statement's rows and the SQL has 2" in line
    # refused before any statement runs: the missing table's error would come from running the second
    line = one_line_error(invoke("query", "select 1; select * from nowhere", "--format", "json", workspace=place / "ws"))
    assert "shows one statement's rows and the SQL has 2" in line


@pytest.mark.slow  # starts the installed command
def test_detach_and_reattach_read_write_is_refused_by_the_real_command(place):
    """The attack that used to delete a whole run, through the installed entry point."""
    ws = place / "ws"
    store = sorted(ws.glob("*.duckdb"))[0]
    before = files_under(place)
    attack = f"detach store0; attach '{store}' as w; delete from w.events; select 1"
    out = esper("query", attack, workspace=ws)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"esper: {NOT_READING} (SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN); statement 1 is DETACH (detach store0)"]
    assert files_under(place) == before


def test_a_query_that_runs_out_of_memory_is_no_bad_sql(tmp_path):
    """The SQL is fine; the machine's memory is not enough: a failure (exit 1), not a mistake to correct (exit 2)."""
    ws = Workspace.at(tmp_path)
    with ws.reader() as reader:
        reader.con.execute("SET memory_limit = '20MB'")  # before the lock: a small machine, cheaply
        with pytest.raises(EsperError, match="the query ran out of memory: Out of Memory Error") as raised:
            reader.query("select list(range) from range(20000000)")
    assert not isinstance(raised.value, BadInput)
