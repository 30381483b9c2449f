"""`esper report`, `esper export`, `esper import`: exit codes, one-line errors, files where they are promised."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import invoke, one_line_error, start
from fake_runs import plan_run, run_id_for, write_batches, write_comparison

from esper.leyline import RunFailed
from esper.store import Workspace

HEURISTIC = run_id_for("heuristic", 0)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    write_comparison(root)
    return root


def test_report_writes_the_default_file_and_a_summary(ws):
    result = invoke("report", "heur", "--workspace", str(ws))
    assert result.exit_code == 0, result.stderr
    path = ws / "reports" / f"{HEURISTIC}.html"
    assert path.is_file() and path.read_text(encoding="utf-8").count("<svg") == 3
    assert f"run {HEURISTIC}: finished, 24 epochs" in result.stdout
    assert "validation accuracy 85.0%" in result.stdout and f"report: {path}" in result.stdout
    assert (ws / ".nissa" / "projections.duckdb").is_file()


def test_report_out_and_compare(ws, tmp_path):
    out = tmp_path / "deep" / "one.html"
    assert invoke("report", HEURISTIC, "-w", str(ws), "--out", str(out)).exit_code == 0
    assert out.is_file()
    cmp = tmp_path / "cmp.html"
    result = invoke("report", "--compare", "static", "heur", "policy", "-w", str(ws), "--out", str(cmp))
    assert result.exit_code == 0, result.stderr
    text = cmp.read_text(encoding="utf-8")
    assert text.count("<svg") == 3 and text.count('<tr data-run="') == 3
    assert "static-s0-0a1b2c3d" in result.stdout and "heuristic" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["report", "nope"], "no run 'nope' in this workspace"),
        (["report", ""], "an empty run id"),  # a prefix of every run: refused, not a list of them
        (["report", "heur", "policy"], "one run at a time"),
        (["report", "--compare", "heur"], "--compare needs at least two runs"),
        (["report", "--compare", "heur", HEURISTIC], "needs two different runs"),
        (["export", "nope"], "no run 'nope'"),
        (["export", "heur", "--format", "csv"], "unknown format 'csv'"),
        (["export", "heur", "--out", "-", "--format", "parquet"], "--out - writes jsonl to standard output; parquet"),
        (["export", "heur", "--out", "-", "--format", "tensorboard"], "tensorboard needs a folder"),
        (["export", "heur", "--out", "."], "cannot write .: it is a folder: give the path of a file"),
        (["export", "heur", "-f", "jsonl", "--out", "h.parquet"], "--format jsonl but --out h.parquet names a parquet"),
        (["export", "heur", "--out", "new.duckdb"], "cannot write new.duckdb: .duckdb names an event store"),
        (["report", "heur", "--out", "r.DuckDB"], "cannot write r.DuckDB: .duckdb names an event store"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(ws, args, message):
    line = one_line_error(invoke(*args, "--workspace", str(ws)))
    assert message in line


@pytest.mark.parametrize("command", ["export", "report"])
def test_an_output_never_replaces_a_store_or_a_checkpoint(tmp_path, command):
    """`esper export RUN -o <another run's store>` would replace that run's log: refused, nothing written."""
    ws = tmp_path / "ws"
    write_comparison(ws)
    store = sorted(ws.glob("*.duckdb"))[0]
    checkpoint = tmp_path / "policy.pt"
    checkpoint.write_bytes(b"PK\x03\x04" + os.urandom(100))  # a zip archive, as torch.save writes
    for target, kind in ((store, "a DuckDB database (an event store?)"), (checkpoint, "a zip archive")):
        kept = target.read_bytes()
        line = one_line_error(invoke(command, "heur", "-o", str(target), "--workspace", str(ws)))
        assert line.startswith(f"esper: {target} is {kind}") and "never replaces one" in line, line
        assert target.read_bytes() == kept
    assert not (ws / ".nissa").exists()  # refused before the projections were brought up to date


@pytest.mark.parametrize("command", ["export", "report"])
def test_an_output_is_never_moved_over_a_device_or_a_pipe_and_goes_through_a_link(tmp_path, command):
    """A file moved over `-o /dev/null` would replace the device itself; a pipe opened to look inside would wait
    for a writer. Both refused, in one line. A symbolic link is written through, as the shell's `>` does."""
    ws = tmp_path / "ws"
    write_comparison(ws)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    line = one_line_error(invoke(command, "heur", "-o", str(pipe), "--workspace", str(ws)))
    assert line.endswith("is not a regular file (a device, a pipe or a socket): give the path of a file"), line
    assert pipe.is_fifo()
    if os.path.exists("/dev/null") and os.getuid() == 0:  # only root could replace it, so only root can see it kept
        assert invoke(command, "heur", "-o", "/dev/null", "--workspace", str(ws)).exit_code == 2
        assert Path("/dev/null").is_char_device()
    target, link = tmp_path / "target.txt", tmp_path / "link.out"
    target.write_text("before")
    link.symlink_to(target.name)
    assert invoke(command, "heur", "-o", str(link), "--workspace", str(ws)).exit_code == 0
    assert link.is_symlink() and target.read_text() != "before"
    assert HEURISTIC in target.read_text()


def test_a_report_to_an_unwritable_place_leaves_no_projections(tmp_path):
    ws = tmp_path / "ws"
    write_comparison(ws)
    line = one_line_error(invoke("report", "heur", "-o", str(tmp_path), "--workspace", str(ws)))
    assert line.endswith("it is a folder: give the path of a file"), line
    assert not (ws / ".nissa").exists()


def test_a_report_to_standard_output_is_refused_not_written_to_a_file_named_dash(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "a report is one HTML file" in one_line_error(invoke("report", "heur", "-w", str(ws), "-o", "-"), code=2)
    assert not Path("-").exists()


def test_report_in_a_missing_workspace_is_bad_input(tmp_path):
    line = one_line_error(invoke("report", "x", "--workspace", str(tmp_path / "missing")))
    assert "does not exist" in line


def test_an_export_named_as_another_format_is_refused_before_the_workspace_is_read(tmp_path):
    line = one_line_error(invoke("export", "any", "--out", str(tmp_path / "runs.csv"), "-w", str(tmp_path / "none")))
    assert "runs.csv names a CSV file, and export writes jsonl or parquet" in line, line
    assert not (tmp_path / "runs.csv").exists()


def test_a_file_given_where_a_run_id_goes_is_pointed_at_import(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("h.jsonl").write_text("{}\n")
    line = one_line_error(invoke("report", "h.jsonl", "-w", str(ws)))
    assert line == ("esper: no run 'h.jsonl' in this workspace (try `esper runs`); h.jsonl is a file: "
                    "if it is an export of runs, `esper import h.jsonl` adds them")


def test_export_then_import_round_trip(ws, tmp_path):
    out = tmp_path / "h.parquet"
    result = invoke("export", "heur", "-w", str(ws), "--out", str(out))
    assert result.exit_code == 0 and "exported 70 events" in result.stdout and "(parquet)" in result.stdout
    fresh = tmp_path / "fresh"
    first = invoke("import", str(out), "--workspace", str(fresh))
    assert first.exit_code == 0 and "imported 70 events" in first.stdout
    again = invoke("import", str(out), "--workspace", str(fresh))
    assert again.exit_code == 0 and again.stdout.startswith("nothing to import: all 70 events")
    assert len(Workspace.at(fresh).store_files()) == 1
    assert invoke("report", "heur", "-w", str(fresh)).exit_code == 0


def test_one_event_exported_and_imported_is_said_in_the_singular(tmp_path):
    write_batches(tmp_path / "src", plan_run()[:1], "one")  # RunStarted alone
    exported = invoke("export", "one", "-w", str(tmp_path / "src"), "--out", str(tmp_path / "one.jsonl"))
    assert exported.exit_code == 0 and f"exported 1 event of run one to {tmp_path / 'one.jsonl'}" in exported.stdout
    imported = invoke("import", str(tmp_path / "one.jsonl"), "-w", str(tmp_path / "dst"))
    assert imported.exit_code == 0 and imported.stdout.startswith("imported 1 event of run one into"), imported.stdout


@pytest.mark.parametrize("command", ["replay", "report"])
def test_strings_from_the_log_reach_the_terminal_as_escapes(tmp_path, command):
    """A run's error is whatever its failure said: an ESC in it would clear the terminal, a newline forge a line of
    the summary. Both print it as `esper query` prints a table cell."""
    failed = [*plan_run(epochs=3)[:-1], [RunFailed(epoch=3, error="boom\x1b[2J\nfinished: val 0.99")]]
    write_batches(tmp_path, failed, "failing")
    result = invoke(command, "failing", "-w", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert "failed: boom\\x1b[2J\\nfinished: val 0.99" in result.stdout
    assert not any(ord(c) < 32 and c != "\n" for c in result.stdout), result.stdout
    assert not any(line.startswith("finished") for line in result.stdout.splitlines())


@pytest.mark.parametrize("name", ["h.PARQUET", "h.JSONL", "h", "h.log"])
def test_replay_reads_any_exported_file_by_its_content(ws, tmp_path, name):
    """What `esper export --out` wrote, under any name, replays as `esper import` reads it: by content."""
    out = tmp_path / name
    assert invoke("export", "heur", "-w", str(ws), "--out", str(out)).exit_code == 0
    replayed = invoke("replay", str(out), "-w", str(tmp_path / "elsewhere"))
    assert replayed.exit_code == 0 and replayed.stdout.startswith(f"run {HEURISTIC}  finished"), replayed.stderr


@pytest.mark.parametrize("suffix", [".jsonl", ".NDJSON", ".json", ".parquet", ".pq"])
def test_replay_of_a_missing_export_says_the_file_is_missing(ws, tmp_path, suffix):
    """A name with any suffix `esper export` writes by is a file, not a run id: its absence is said as such."""
    missing = tmp_path / f"h{suffix}"
    assert one_line_error(invoke("replay", str(missing), "-w", str(ws)), code=2) == f"esper: no exported file {missing}"


def test_a_file_that_is_no_export_leaves_replay_a_run_id(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path(HEURISTIC).write_text("notes of mine\n")  # a file of the run's name in the current folder
    replayed = invoke("replay", HEURISTIC, "-w", str(ws))
    assert replayed.exit_code == 0 and replayed.stdout.startswith(f"run {HEURISTIC}  finished"), replayed.stderr


def test_an_export_named_as_a_run_of_the_workspace_is_ambiguous(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = run_id_for("static", 0)
    assert invoke("export", other, "-w", str(ws), "--out", "other.jsonl").exit_code == 0
    Path("heur").write_bytes(Path("other.jsonl").read_bytes())  # another run's export, named as this one's prefix
    line = one_line_error(invoke("replay", "heur", "-w", str(ws)), code=2)
    assert "names both a file in this folder and a run in the workspace" in line
    assert invoke("replay", "heur", "-w", str(tmp_path / "elsewhere")).stdout.startswith(f"run {other}  finished")
    assert "is a folder" in one_line_error(invoke("replay", str(tmp_path) + "/", "-w", str(ws)), code=2)


def test_export_to_standard_output_is_the_file_it_would_write(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    piped = invoke("export", "heur", "-w", str(ws), "--out", "-")
    assert piped.exit_code == 0 and f"exported 70 events of run {HEURISTIC} to standard output" in piped.stderr
    assert not (tmp_path / "-").exists()
    assert invoke("export", "heur", "-w", str(ws), "--out", str(tmp_path / "h.jsonl")).exit_code == 0
    assert piped.stdout == (tmp_path / "h.jsonl").read_text(encoding="utf-8")
    imported = invoke("import", "-", "--workspace", str(tmp_path / "fresh"), input=piped.stdout)  # export ... | import -
    assert imported.exit_code == 0 and "imported 70 events" in imported.stdout
    assert invoke("replay", "heur", "-w", str(tmp_path / "fresh")).exit_code == 0
    cut = "".join(piped.stdout.splitlines(keepends=True)[:10])
    error = one_line_error(invoke("import", "-", "--workspace", str(tmp_path / "other"), input=cut), code=1)
    assert error.startswith("esper: log altered: standard input has no trailer") and "a file cut short" in error
    assert not (tmp_path / "other").exists()


def test_an_export_to_a_reader_that_left_says_no_success(ws):
    """`esper export RUN --out - | head -c 100`: exit 141, and no line on stderr claims the events were exported."""
    process = start("export", "heur", "--out", "-", workspace=ws)
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141, stderr
    assert "exported" not in stderr and "error" not in stderr, stderr


def test_an_export_to_standard_output_stays_in_a_callers_own_capture(ws, monkeypatch):
    import contextlib
    import io

    import esper.cli

    monkeypatch.setattr(sys, "argv", ["esper", "export", "heur", "--out", "-", "-w", str(ws)])
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        assert esper.cli._run() == 0
    assert captured.getvalue().count("\n") == 71  # 70 events and the trailer, none of them on the real stdout


def test_export_default_name_is_the_run_id(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("export", "heur", "-w", str(ws)).exit_code == 0
    assert (tmp_path / f"{HEURISTIC}.jsonl").is_file()


def test_import_of_a_malformed_or_missing_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"position": 1}\n', encoding="utf-8")
    assert "bad.jsonl:1: not an exported event" in one_line_error(invoke("import", str(bad), "-w", str(tmp_path / "w")))
    assert "no file" in one_line_error(invoke("import", str(tmp_path / "absent.jsonl"), "-w", str(tmp_path / "w")))
    folder = one_line_error(invoke("import", str(tmp_path), "-w", str(tmp_path / "w")))
    assert f"{tmp_path} is a folder: import takes one file" in folder


@pytest.mark.slow  # starts the installed command
def test_the_installed_command_prints_one_line_and_exits_2(ws):
    exe = Path(sys.executable).with_name("esper")
    assert exe.exists(), f"no `esper` console script next to {sys.executable}: install with pip install -e '.[dev]'"
    env = {**os.environ, "ESPER_WORKSPACE": str(ws)}
    proc = subprocess.run([str(exe), "report", "no-such-run"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["esper: no run 'no-such-run' in this workspace (try `esper runs`)"]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name, content, says", [
    ("package.json", '{"name": "x", "version": "1"}\n', ":1: not an exported event (Object contains unknown field `name`"
                                                       "); is it a file esper export wrote?"),
    ("pretty.json", '{\n  "name": "x"\n}\n', ":1: not an exported event (Input data was truncated); is it a file esper "
                                             "export wrote?"),
    ("junk.pq", "{}\n", " is named as parquet but is not a parquet file"),
])
def test_a_file_that_is_no_export_is_said_to_be_one_not_a_run(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_text(content)
    for command in ("replay", "import"):
        line = one_line_error(invoke(command, str(path), "-w", str(tmp_path / "ws")))
        assert line == f"esper: {path}{says}", line
