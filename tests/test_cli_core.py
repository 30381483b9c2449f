"""`esper replay`, `query`, `runs` from the outside: exit codes, one-line errors, read-only SQL."""

import csv
import json
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from cli_runner import environment, esper, invoke, one_line_error, start

from esper.leyline import CommandIssued, EpochEnded, Germinate, RunConfig, RunFinished, RunStarted
from esper.leyline.garden import Garden
from esper.store import Recorder
from esper.tolaria.tasks import TASKS

pytestmark = pytest.mark.slow  # real training runs or subprocesses of the CLI

MNIST1D = TASKS["mnist1d"]

def write_run(workspace: Path, run_id: str, finished: bool = True) -> None:
    g = Garden()
    events = [RunStarted(preset=MNIST1D, config=RunConfig(seed=3), slots=["mid"], blueprints=["conv_light"])]
    g.apply(events[0])
    command = Germinate(slot="mid", blueprint="conv_light")
    events += [CommandIssued(epoch=1, command=command, controller="test"), *g.handle(command, 1)]
    events.append(EpochEnded(epoch=1, train_loss=1.0, val_loss=1.1, val_accuracy=0.5, params=100))
    if finished:
        events.append(RunFinished(epoch=1, val_accuracy=0.5, test_accuracy=0.45, params=100))
    with Recorder(workspace / f"{run_id}.duckdb") as rec:
        rec.append(run_id, events, 0)


@pytest.fixture
def workspace(tmp_path):
    write_run(tmp_path, "run-a")
    write_run(tmp_path, "run-b", finished=False)
    return tmp_path


def test_query_groups_events_across_store_files(workspace):
    out = esper("query", "select type, count(*) n from events group by 1 order by 1", "--format", "json", workspace=workspace)
    assert out.returncode == 0, out.stderr
    counts = {row["type"]: row["n"] for row in json.loads(out.stdout)}
    assert counts == {"CommandIssued": 2, "EpochEnded": 2, "RunFinished": 1, "RunStarted": 2, "SeedGerminated": 2, "SeedTransitioned": 2}


def test_query_cannot_write_or_touch_files(workspace, tmp_path):
    for sql in (
        f"copy (select 1) to '{tmp_path}/x.csv'",
        "insert into events select * from events",
        "set enable_external_access = true",
        "select * from read_csv('/etc/passwd')",
        "selec 1",
    ):
        one_line_error(invoke("query", sql, workspace=workspace))
    assert not (tmp_path / "x.csv").exists()


def test_query_json_is_strict_json_that_keeps_every_column_and_value(workspace):
    """NaN and infinities are null (JSON has neither); a repeated column name is numbered, not dropped; lists,
    structs and blobs keep their shape; the table shows NULL as NULL."""
    sql = "select 'nan'::double as x, 1/0 as y, 1 as a, 2 as a, [1, 2] as l, {'k': 1} as s, '\\xAA'::blob as b"
    out = esper("query", sql, "--format", "json", workspace=workspace)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON")) == [
        {"x": None, "y": None, "a": 1, "a:2": 2, "l": [1, 2], "s": {"k": 1}, "b": "aa"}]
    table = esper("query", "select NULL as n", workspace=workspace).stdout
    assert table.splitlines()[2] == "NULL"


def test_query_text_formats_write_values_as_duckdb_casts_them_to_text(workspace):
    """csv and the table show booleans, blobs and intervals as `CAST(v AS VARCHAR)` does, not as Python reprs."""
    values = ["true", "false", f"from_hex('{bytes(range(256)).hex()}')", "interval 3 day", "interval 1 day",
              "interval 90 minute + interval 2 day + interval 1 microsecond", "interval '-1 day 2 hours'",
              "interval 0 second"]
    sql = "select " + ", ".join(f"{v} as v{i}, ({v})::varchar as t{i}" for i, v in enumerate(values))
    out = invoke("query", sql, "--format", "csv", workspace=workspace)
    assert out.exit_code == 0, out.stderr
    row = next(csv.reader([out.stdout.splitlines()[1]]))
    assert row[0::2] == row[1::2], row
    assert invoke("query", sql, workspace=workspace).exit_code == 0  # the table renders it too
    table = invoke("query", "select true as b, interval 3 day as i", workspace=workspace).stdout
    assert table.splitlines()[2].split() == ["true", "3", "days"], table


def test_runs_lists_status(workspace):
    out = esper("runs", "--json", workspace=workspace)
    status = {r["run_id"]: r["status"] for r in json.loads(out.stdout)}
    assert status == {"run-a": "finished", "run-b": "incomplete"}


def test_query_tables_show_control_characters_as_escapes_and_other_formats_keep_them(workspace):
    """A stored string with ESC or BEL would act on the terminal, a newline break the row: the table writes them as
    escapes; csv and json are data and keep the string as stored."""
    sql = "select 'a' || chr(27) || '[31mred' || chr(10) || 'b' as s, chr(7) || chr(9) as bell"
    table = invoke("query", sql, workspace=workspace).stdout
    assert table.splitlines()[2].split() == ["a\\x1b[31mred\\nb", "\\x07\\t"], table
    assert not any(ord(c) < 32 and c != "\n" for c in table)
    assert json.loads(invoke("query", sql, "--format", "json", workspace=workspace).stdout)[0]["s"] == \
        "a\x1b[31mred\nb"


def test_query_sees_one_row_per_run_in_the_runs_view(workspace):
    out = esper("query", "select run_id, ended, finished, epochs, test_accuracy from runs order by run_id",
                "--format", "json", workspace=workspace)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        {"run_id": "run-a", "ended": "RunFinished", "finished": True, "epochs": 1, "test_accuracy": 0.45},
        {"run_id": "run-b", "ended": None, "finished": False, "epochs": 1, "test_accuracy": None},
    ]


def test_replay_json_and_prefix(workspace):
    out = esper("replay", "run-a", "--json", workspace=workspace)
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout)
    assert state["status"] == "finished" and state["seeds"]["s1-mid"]["stage"] == "GERMINATED"
    ambiguous = esper("replay", "run-", workspace=workspace)
    assert ambiguous.returncode == 2 and "matches 2 runs" in ambiguous.stderr


@pytest.mark.parametrize(
    "args",
    [("replay", "no-such-run"), ("query", "select 1", "--format", "xml"), ("nonsense",), ("query",),
     ("runs", "--workspace", "/no/such/dir"), ("query", ""), ("query", " ;"), ("replay", ""), ("replay", "missing.jsonl"),
     ("runs", "--workspace", ""), ("schemas", "--out", "")],
)
def test_bad_input_is_one_line_and_exit_2(workspace, args):
    out = esper(*args, workspace=workspace)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_resumed_run_checks_its_intervals_and_checkpoint_folder_as_a_new_one_does(tmp_path):
    """--resume took --checkpoint-every -1 as 0 without a word; a `checkpoints` file in the workspace stopped a run
    at its first checkpoint with an internal error. Both refused before anything is read or written."""
    for args in (("--checkpoint-every", "-1"), ("--snapshot-every", "-2")):
        line = one_line_error(invoke("run", "--resume", "any", *args, workspace=tmp_path))
        assert line.endswith(f"{args[0][2:].replace('-', '_')} must be 0 (none) or a number of epochs, got {args[1]}")
    (tmp_path / "checkpoints").write_text("not a folder")
    for args in (("--epochs", "1"), ("--resume", "any")):
        line = one_line_error(invoke("run", *args, workspace=tmp_path))
        assert line.endswith(f"cannot create the checkpoint folder {tmp_path / 'checkpoints'}: "
                             f"{tmp_path / 'checkpoints'} is a file, not a folder"), line
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoints"]
    assert invoke("run", "--epochs", "1", "--checkpoint-every", "0", workspace=tmp_path).exit_code == 0


def test_runs_of_an_empty_workspace_says_where_it_looked(tmp_path):
    for args in (("runs",), ("runs", "--json")):
        out = invoke(*args, workspace=tmp_path / "new")
        assert out.exit_code == 0 and f"no runs in {tmp_path / 'new'} yet" in out.stderr
        assert json.loads(out.stdout) == [] if "--json" in args else "(0 rows)" in out.stdout
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_long_query_stops_at_once_when_interrupted(tmp_path, signum, code, said):
    """DuckDB looks for a signal only between the tasks of a query, and one task of this cross join runs for
    minutes: Ctrl-C used to wait for it, or came out as an internal error (DuckDB's `Query interrupted`)."""
    process = start("query", "select sum(a * b) from range(1000000) t(a), range(1000000) u(b)",
                    workspace=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4)  # torch imported, the query running (were it not, the stop would still be answered as below)
    process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()  # one that did not stop would spin on for hours
    assert process.returncode == code and stderr.strip() == f"esper: {said}", stderr


def test_empty_workspace_answers_queries(tmp_path):
    out = esper("query", "select count(*) as n from events", "--format", "csv", workspace=tmp_path / "new")
    assert out.returncode == 0 and out.stdout.splitlines() == ["n", "0"]


@pytest.mark.parametrize("command", [("run", "--epochs", "1"), ("runs",), ("query", "select 1"), ("gc",), ("schemas", "--out")])
def test_a_workspace_or_folder_that_is_a_file_is_bad_input(tmp_path, command):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    writes = command[0] in ("run", "schemas")
    for path in (blocker, blocker / "sub"):
        args = [*command, str(path)] if command[0] == "schemas" else [*command, "--workspace", str(path)]
        error = one_line_error(invoke(*args, workspace=tmp_path))
        if path == blocker:
            assert error.endswith(f"{blocker} is not a folder") or error.endswith(f"{blocker} is a file, not a folder"), error
        else:  # under a file: a command that writes says why it cannot create it, one that reads that it is not there
            assert error.endswith(f"{blocker} is a file, not a folder" if writes else f"{path} does not exist"), error
    assert blocker.read_text() == "not a folder" and list(tmp_path.iterdir()) == [blocker]


def test_a_reader_that_leaves_early_is_no_error(tmp_path):
    """`esper run --json | true`: the run is logged; stdout's reader has gone, which is no internal error."""
    env = {k: v for k, v in environment(tmp_path).items() if k != "PYTHONUNBUFFERED"}
    process = start("run", "--epochs", "1", "--json", env=env)
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141, stderr
    assert "error" not in stderr and "Traceback" not in stderr, stderr
    assert esper("runs", "--json", workspace=tmp_path).stdout.count('"finished"') == 1


@pytest.mark.parametrize("args", [("runs",), ("query", "select 1"), ("--help",), ("replay", "run-a", "--json")])
def test_output_that_cannot_be_written_is_one_line_and_exit_1(workspace, args):
    """`esper runs > /dev/full`: the write of the results fails (no space left), which is said in one line."""
    with open("/dev/full", "w") as full:
        process = start(*args, workspace=workspace, stdout=full)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert stderr.strip().splitlines()[-1] == "esper: cannot write the output: No space left on device", stderr
    assert "Traceback" not in stderr, stderr


def test_a_closed_stderr_changes_no_exit_code_and_no_output(workspace):
    """Progress and errors on stderr are best effort: a stderr whose reader has gone (`esper ... 2>&1 >out | head
    -0`) only silences them; the command ends as it would have (here a refused --verify, exit 2)."""
    process = start("replay", "run-a", "--verify", workspace=workspace)
    process.stderr.close()
    out, _ = process.communicate(timeout=120)
    heard = esper("replay", "run-a", "--verify", workspace=workspace)
    assert process.returncode == heard.returncode == 2
    assert out == heard.stdout and "Traceback" not in out


@pytest.mark.parametrize(("args", "message"), [
    (("--exact",), "--exact and --tolerance go with --verify"),
    (("--tolerance", "0.5"), "--exact and --tolerance go with --verify"),
    (("--verify", "--exact", "--tolerance", "0.5"), "give one of them"),
    (("--verify", "--tolerance", "1.5"), "--tolerance is a relative deviation from 0 to 1"),
])
def test_replay_refuses_verification_options_that_contradict(workspace, args, message):
    assert message in one_line_error(invoke("replay", "run-a", *args, workspace=workspace))


def test_a_bare_esper_prints_its_help_and_version_prints_the_versions(monkeypatch, capsys):
    import esper.cli

    monkeypatch.setattr(sys, "argv", ["esper"])
    assert esper.cli._run() == 0
    shown = capsys.readouterr()
    assert shown.out.startswith("Usage: ") and "Commands:" in shown.out and shown.err == ""
    version = invoke("--version")
    assert version.exit_code == 0 and re.fullmatch(r"esper \S+ torch \S+ numpy \S+\n", version.stdout), version.stdout


def test_replay_calls_only_a_finished_runs_last_numbers_final(workspace):
    finished = esper("replay", "run-a", workspace=workspace)
    cut = esper("replay", "run-b", workspace=workspace)
    assert finished.returncode == cut.returncode == 0, cut.stderr
    assert "final: val 0.5000" in finished.stdout.splitlines()[-1]
    assert cut.stdout.splitlines()[-1].startswith("after epoch 1: val ") and "final" not in cut.stdout


@pytest.mark.parametrize("n, said", [(0, "0 bytes"), (1, "1 byte"), (1023, "1023 bytes"), (1024, "1.0 KiB"),
                                     (2_200_000, "2.1 MiB"), (5 * 1024 ** 4, "5.0 TiB")])
def test_gc_says_sizes_as_a_person_reads_them(n, said):
    from esper.cli.core import _size

    assert _size(n) == said
