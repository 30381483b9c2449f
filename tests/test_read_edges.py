"""The read-side commands at their edges: `esper query`'s JSON values and SQL that begins with `-`, `esper schemas`
into a folder of an older set, `esper import` over an altered copy, and strings from a log on the terminal."""

import json
from pathlib import Path

import duckdb
import pytest
from cli_runner import invoke, one_line_error
from fake_runs import plan_run, write_batches, write_run
from msgspec.structs import replace

from esper.leyline.schemas import schema_documents

RUN = "heuristic-s0-0a1b2c3d"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("read")
    write_run(root, epochs=3)
    return root


def query(ws: Path, *args: str, input: str | None = None):
    result = invoke("query", *args, workspace=ws, input=input)
    assert result.exit_code == 0, result.stderr
    return result.stdout


# ---- esper query --format json --------------------------------------------------------------------------------


def test_json_columns_are_nested_values_and_decimals_numbers(ws):
    """`payload` and `json_extract(...)` are JSON: their values, not strings holding them; a DECIMAL a number."""
    sql = ("select payload, json_extract(payload, '$.config') as config, payload->'$.config.seed' as seed, "
           "1.50::DECIMAL(4,2) as d, '{\"a\": 1}' as text from events where type = 'RunStarted'")
    [row] = json.loads(query(ws, sql, "--format", "json"))
    assert row["payload"]["type"] == "RunStarted" and row["payload"]["config"]["epochs"] == 3
    assert row["config"] == row["payload"]["config"] and row["seed"] == 0
    assert row["d"] == 1.5 and isinstance(row["d"], float)
    assert row["text"] == '{"a": 1}'  # a VARCHAR that reads as JSON stays the text it is


def test_json_inside_lists_structs_and_maps_is_nested_too(ws):
    sql = ("select [payload->'$.epoch', '[1, 2]'::JSON] as l, {'j': '{\"x\": 2}'::JSON, 'd': 2.5::DECIMAL(2,1)} as s, "
           "MAP {'k': '[3]'::JSON} as m, [[0.25::DECIMAL(3,2)]] as deep, union_value(k := [0.5::DECIMAL(2,1)]) as u "
           "from events where seq = 1")
    [row] = json.loads(query(ws, sql, "--format", "json"))
    assert row == {"l": [None, [1, 2]], "s": {"j": {"x": 2}, "d": 2.5}, "m": {"k": [3]}, "deep": [[0.25]], "u": [0.5]}


def test_a_map_whose_keys_are_no_json_keys_keeps_its_key_and_value_lists(ws):
    """DuckDB hands such a map over as its two lists; each is converted as its column type says."""
    sql = "select map([[1]], [1.5::DECIMAL(2,1)]) as l, map([{'a': 1}], ['{\"q\": 1}'::JSON]) as s"
    [row] = json.loads(query(ws, sql, "--format", "json"))
    assert row == {"l": {"key": [[1]], "value": [1.5]}, "s": {"key": [{"a": 1}], "value": [{"q": 1}]}}


def test_table_and_csv_still_show_json_and_decimals_as_duckdb_writes_them(ws):
    sql = "select '{\"a\":1}'::JSON as j, 1.50::DECIMAL(4,2) as d"
    assert query(ws, sql) == 'j        d\n-------  ----\n{"a":1}  1.50\n(1 row)\n'
    assert query(ws, sql, "--format", "csv") == 'j,d\n"{""a"":1}",1.50\n'


# ---- SQL that begins with `-` ---------------------------------------------------------------------------------


@pytest.mark.parametrize("before, after", [([], []), (["--format", "csv"], []), ([], ["--format", "csv"])])
def test_sql_beginning_with_a_comment_is_sql_not_an_unknown_option(ws, before, after):
    out = query(ws, *before, "-- how many runs\nselect count(*) as n from runs", *after)
    assert out.splitlines()[-1] in ("1", "(1 row)")


def test_sql_with_an_equals_sign_in_its_leading_comment_is_sql(ws):
    """Click names only the part before `=` of an unknown `--option=value`: the whole argument is still the SQL."""
    assert query(ws, "-- n = runs\nselect count(*) as n from runs", "-f", "csv") == "n\n1\n"


def test_sql_after_a_double_dash_and_from_standard_input(ws):
    assert query(ws, "-f", "csv", "--", "-- note\nselect 2 as b") == "b\n2\n"
    assert query(ws, "-", "-f", "csv", input="-- from a file\nselect 3 as c;\n") == "c\n3\n"


def test_the_help_says_how_to_pass_sql_that_begins_with_a_dash():
    text = " ".join(invoke("query", "--help").stdout.split())
    assert "- reads it from standard input" in text and "may always follow `--`" in text


def test_an_extra_argument_after_sql_beginning_with_a_comment_is_the_one_named(ws):
    result = invoke("query", "-- c\nselect 1 x", "extra", workspace=ws)
    assert result.exit_code == 2 and "unexpected extra argument(s) (extra)" in result.stderr


def test_a_misspelt_option_is_still_one(ws):
    result = invoke("query", "--formt", "json", "select 1", workspace=ws)
    assert result.exit_code == 2 and "No such option: --formt" in result.stderr


@pytest.mark.parametrize("sql, said", [
    ("select * from run", "Table with name run does not exist! (the views: events, runs)"),  # not DuckDB's guess
    ("select nope from events", 'Referenced column "nope" not found in FROM clause! Candidate bindings: '),
    ("select lenn(type) from events", 'Scalar Function with name lenn does not exist! Did you mean "len"?'),
])
def test_bad_sql_is_one_line_with_what_it_may_have_meant(ws, sql, said):
    assert said in one_line_error(invoke("query", sql, workspace=ws))


def test_empty_standard_input_is_no_sql(ws):
    assert "no SQL statement to run" in one_line_error(invoke("query", "-", workspace=ws, input=""))


def test_standard_input_that_is_no_text_is_one_line(ws):
    line = one_line_error(invoke("query", "-", workspace=ws, input=b"select \xff"))
    assert "standard input is no UTF-8 text (byte 7)" in line


# ---- esper schemas --out --------------------------------------------------------------------------------------


def test_schemas_rerun_into_an_older_set_leaves_exactly_the_current_schemas(tmp_path):
    out = tmp_path / "schemas"
    assert invoke("schemas", "--out", str(out)).exit_code == 0
    old = json.loads((out / "RunFailed.json").read_text())
    (out / "RunAbandoned.json").write_text(json.dumps({**old, "$comment": old["$comment"].replace(
        "RunFailed", "RunAbandoned")}))  # written by an older Esper, for an event since removed
    (out / "notes.json").write_text('{"mine": true}')
    (out / "README").write_text("mine")
    result = invoke("schemas", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == f"wrote {len(schema_documents())} schemas into {out}/; removed 1 stale schema " \
                                    "(RunAbandoned.json)"
    assert {p.name for p in out.iterdir()} == set(schema_documents()) | {"notes.json", "README"}


def test_schemas_help_says_what_it_removes():
    text = " ".join(invoke("schemas", "--help").stdout.split())
    assert "for a type that no longer exists is removed, any other file left as it is" in text


# ---- esper import over the workspace's altered copy -----------------------------------------------------------


def _alter_payload(store: Path) -> None:
    """An edit of one stored payload, leaving its hash column as it was."""
    con = duckdb.connect(str(store))
    con.execute("UPDATE events SET payload = replace(payload::VARCHAR, '\"val_loss\":', '\"val_loss\":9,\"x\":')::JSON"
                " WHERE seq = (SELECT min(seq) FROM events WHERE type = 'EpochEnded')")
    con.close()


def test_import_over_an_altered_copy_says_so_and_imports_nothing(tmp_path, ws):
    exported = tmp_path / "run.jsonl"
    assert invoke("export", RUN, "-w", str(ws), "--out", str(exported)).exit_code == 0
    mine = tmp_path / "mine"
    write_run(mine, epochs=3)
    _alter_payload(mine / f"{RUN}.duckdb")
    line = one_line_error(invoke("import", str(exported), "-w", str(mine)), code=1)
    assert line.startswith(f"esper: the workspace's copy of run {RUN} ({RUN}.duckdb) is altered, nothing imported: "
                           "log altered at seq 2 (EpochEnded)")
    assert [p.name for p in mine.iterdir()] == [f"{RUN}.duckdb"]


def test_nothing_to_import_counts_one_event_in_the_singular(tmp_path):
    write_batches(tmp_path / "src", plan_run()[:1], "one")  # RunStarted alone
    assert invoke("export", "one", "-w", str(tmp_path / "src"), "--out", str(tmp_path / "one.jsonl")).exit_code == 0
    again = invoke("import", str(tmp_path / "one.jsonl"), "-w", str(tmp_path / "src"))
    assert again.exit_code == 0
    assert again.stdout == "nothing to import: the 1 event of run one is already in the workspace\n"


# ---- strings from a log on the terminal -----------------------------------------------------------------------


def _hostile_type(store: Path) -> None:
    """A store whose `type` column at seq 2 was rewritten to recolour a terminal: the altered note quotes it."""
    con = duckdb.connect(str(store))
    con.execute("UPDATE events SET type = 'Epoch\x1b[31mRED' WHERE seq = 2")
    con.close()


def test_runs_escapes_an_altered_logs_strings_in_its_note(tmp_path):
    write_run(tmp_path, epochs=3)
    _hostile_type(tmp_path / f"{RUN}.duckdb")
    result = invoke("runs", "-w", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert "Epoch\\x1b[31mRED" in result.stderr and "\x1b" not in result.stderr + result.stdout


@pytest.mark.parametrize("command", [["replay", RUN], ["report", RUN], ["export", RUN, "--out", "-"]])
def test_the_error_line_of_an_altered_log_escapes_what_it_quotes(tmp_path, command):
    write_run(tmp_path, epochs=3)
    _hostile_type(tmp_path / f"{RUN}.duckdb")
    line = one_line_error(invoke(*command, "-w", str(tmp_path)), 1)
    assert "Epoch\\x1b[31mRED" in line and "\x1b" not in line


def test_a_run_whose_run_started_was_deleted_is_listed_as_altered(tmp_path):
    """The `runs` view knows a run by its RunStarted: with it gone, `esper runs` still names the altered log."""
    write_run(tmp_path, epochs=3)
    con = duckdb.connect(str(tmp_path / f"{RUN}.duckdb"))
    con.execute("DELETE FROM events WHERE seq = 1")
    con.close()
    result = invoke("runs", "--json", "-w", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert (row["run_id"], row["status"], row["task"]) == (RUN, "altered", None)
    assert f"note: log altered at seq 1 (missing: the log goes from seq 0 to seq 2) in run {RUN}" in result.stderr


def test_report_compare_escapes_task_names_in_its_note(tmp_path):
    """A task's name is any string `esper.fit` was given; the note naming the runs' tasks prints it escaped."""
    plan = plan_run(epochs=3)
    started = plan[0][0]
    odd = replace(started, config=replace(started.config, task="mine\x1b[2J\nfake line"))
    write_batches(tmp_path, [[odd, *plan[0][1:]], *plan[1:]], "odd")
    write_batches(tmp_path, plan, "plain")
    result = invoke("report", "--compare", "odd", "plain", "-w", str(tmp_path), "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 0, result.stderr
    assert "mine\\x1b[2J\\nfake line" in result.stderr
    assert not any(ord(c) < 32 and c != "\n" for c in result.stderr) and "\nfake line" not in result.stderr


@pytest.mark.parametrize("command", [["runs"], ["query", "select 1"], ["replay", "heur"], ["report", "heur"],
                                     ["export", "heur", "--out", "-"]])
def test_notes_naming_a_store_file_escape_its_name(tmp_path, command):
    """A file's name is any bytes but `/`: the note that skips an unreadable store names it escaped."""
    write_run(tmp_path, epochs=3)
    (tmp_path / "bad\x1b[2J.duckdb").write_text("no database")
    result = invoke(*command, "-w", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert "note: skipped bad\\x1b[2J.duckdb: unreadable store" in result.stderr and "\x1b" not in result.stderr
