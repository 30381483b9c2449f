"""The verbs over the event store: replay, query, runs, schemas, gc."""

import csv
import io
import json
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from typer import TyperException
from typer.core import TyperCommand

from esper.cli.app import WorkspaceOption, app, existing_workspace, handles_errors, json_text, path_option, say
from esper.cli.progress import EpochBars, epoch_lines
from esper.errors import BadInput, EsperError
from esper.leyline.events import PolicyUpdated
from esper.leyline.status import shown
from esper.store.workspace import not_a_training_run
from esper.nissa.files import EXPORT_SUFFIXES
from esper.nissa.fmt import plural, visible
from esper.nissa.snapshot import fold_checking
from esper.leyline.config import VERIFY_TOLERANCE


@app.command()
@handles_errors
def replay(
    run: str = typer.Argument(..., metavar="RUN", help="Run id (or a unique prefix of it)."),
    verify: bool = typer.Option(False, "--verify", help="Re-execute the run from its log alone and compare: decisions "
                                "exactly, numbers within --tolerance."),
    exact: bool = typer.Option(False, "--exact", help="With --verify: every event bit for bit as logged."),
    tolerance: float = typer.Option(VERIFY_TOLERANCE, "--tolerance", help="With --verify: the largest relative "
                                    "deviation accepted in a logged number."),
    as_json: bool = typer.Option(False, "--json", help="Print the rebuilt state as one JSON object."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Rebuild a run from its log, check its hash chain, every transition and every stored snapshot, and print its
    story.

    RUN may also be a file written by `esper export` (e.g. one of the samples in replays/)."""
    if (exact or tolerance != VERIFY_TOLERANCE) and not verify:
        raise BadInput("--exact and --tolerance go with --verify")
    if exact and tolerance != VERIFY_TOLERANCE:
        raise BadInput("--exact compares bit for bit and --tolerance within a deviation: give one of them")
    if not 0 <= tolerance < 1:
        raise BadInput(f"--tolerance is a relative deviation from 0 to 1, got {tolerance}")
    run_id, recorded, snapshots, live = _recorded(run, workspace)
    state = fold_checking(run_id, recorded, snapshots)
    if verify:
        from esper.tolaria.verify import verify_run  # torch: only a re-execution loads it

        verification = verify_run(recorded, exact=exact, tolerance=tolerance, running=live, starting=lambda: say(
            f"verifying {run_id}: re-executing it from its config, preset and {state.commands} recorded commands ..."),
            progress=epoch_lines(state.config.epochs), batches=EpochBars())
        for note in verification.notes:
            say(f"note: {note}")
        say(f"verified: {verification.describe()}")
    summary = state.summary()
    summary["status"] = shown(summary["status"], live)  # as `esper runs` says it: an incomplete run being written runs
    if as_json:
        print(json_text(summary))
        return
    _print_story(summary)


def _recorded(run: str, workspace: Optional[Path]) -> tuple[str, list, list, bool]:
    """The events of RUN, its stored snapshots and whether a writer holds it now: from an exported file when RUN
    names one (`_names_export`; an export carries no snapshots), else from the workspace; its hash chain checked first
    (`LogAltered` names the first altered event)."""
    path = Path(run)
    if _names_export(path):
        if path.suffix.lower() not in EXPORT_SUFFIXES and _is_a_run(run, workspace):
            raise BadInput(f"{run} names both a file in this folder and a run in the workspace: name the file with an "
                           f"export's suffix ({', '.join(EXPORT_SUFFIXES)}) to replay it, or replay the run from "
                           "another folder")
        if not path.is_file():
            raise BadInput(f"no exported file {path}" + (" (it is a folder)" if path.is_dir() else ""))
        from esper.nissa.transfer import recorded_runs

        notes: list[str] = []
        runs = recorded_runs(path, notes)
        if len(runs) != 1:
            raise BadInput(f"{path} holds {len(runs)} runs; import it (`esper import {path}`) and replay one by id")
        for note in notes:
            say(f"note: {note}")
        run_id, recorded = next(iter(runs.items()))
        if recorded and isinstance(recorded[0].event, PolicyUpdated):
            raise not_a_training_run(run_id)
        return run_id, recorded, [], False
    if path.is_dir() and ("/" in run or run in (".", "..")):
        raise BadInput(f"{run} is a folder: replay takes a run id or a file written by `esper export`")
    ws = existing_workspace(workspace)
    with ws.reader() as reader:
        for note in reader.notes:
            say(f"note: {note}")
        run_id = reader.resolve_run(run)
        checked = reader.read_checked(run_id)
        if checked.unsealed:
            say(f"note: {checked.unsealed}")
        return run_id, checked.recorded, reader.snapshots(run_id), reader.is_live(run_id)


def _is_a_run(run: str, workspace: Optional[Path]) -> bool:
    """Whether RUN is also the id (or a unique prefix) of a run in the workspace."""
    try:
        with existing_workspace(workspace).reader() as reader:
            reader.resolve_run(run)
    except EsperError:
        return False
    return True


def _names_export(path: Path) -> bool:
    """Whether RUN names an exported file: an export's suffix (in any case), or a file that begins as an export does
    (parquet's magic, or a JSON line), whatever its name. Any other file leaves RUN a run id."""
    if path.suffix.lower() in EXPORT_SUFFIXES:
        return True
    if not path.is_file():
        return False
    from esper.nissa.transfer import begins_as_export

    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError:
        return True  # the reader says why it cannot be read
    return begins_as_export(head)


def _print_story(s: dict) -> None:
    """The story's lines, each with the strings from the log in it (an error, a controller's name) made `visible`."""
    cfg = s["config"] or {}
    _show(f"run {s['run_id']}  {s['status']}  task={cfg.get('task')} controller={cfg.get('controller')} seed={cfg.get('seed')}")
    _show(f"{plural(s['events'], 'event')}, {plural(s['epochs'], 'epoch')}, {plural(s['commands'], 'command')} "
          f"({s['rejected']} rejected); every transition legal")
    for seed_id, seed in s["seeds"].items():
        path = " → ".join(f"{stage}@{epoch}" for epoch, stage in seed["history"])
        _show(f"  {seed_id:<12} {seed['blueprint']:<11} {seed['params']:>7} params  {path}")
    if s["val_accuracy"] is not None:
        test = "" if s["test_accuracy"] is None else f"  test {s['test_accuracy']:.4f}"
        ended = "final" if s["status"] == "finished" else f"after epoch {s['epochs']}"  # a failed or cut run's last
        _show(f"{ended}: val {s['val_accuracy']:.4f}{test}  params {s['params']}")
    if s["error"]:
        _show(f"failed: {s['error']}")


def _show(line: str) -> None:
    print(visible(line))


class _SqlCommand(TyperCommand):
    """`esper query`'s command line. SQL that begins with `-` (a `-- comment` line) reads to click as an unknown
    option, whose error would send the user to look for one; an "option" with a space or a line break in it is none,
    so it is taken as the SQL, where it stands: led by a space (the same SQL), click reads it as an argument."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        given = list(args)  # click's parser consumes the list it is given
        try:
            return super().parse_args(ctx, args)
        except TyperException as exc:
            sql = _misread_sql(getattr(exc, "option_name", None), given)
            if sql is None:
                raise
            given[given.index(sql)] = " " + sql
            return super().parse_args(ctx, given)


def _misread_sql(option: Optional[str], args: list[str]) -> Optional[str]:
    """The argument click took for the unknown `option` (with `=`, click names the part before it), when it holds
    a space or a line break: SQL, since no option does."""
    if option is None or not any(c.isspace() for c in option):
        return None
    return next((a for a in args if a == option or a.startswith(option + "=")), None)


@app.command(cls=_SqlCommand)
@handles_errors
def query(
    sql: str = typer.Argument(..., metavar="SQL", help="SQL over the views `events` (every event of every run in the "
                              "workspace) and `runs` (one row per run: its status, accuracies, params); - reads it "
                              "from standard input (esper query - < file.sql). SQL that begins with a `--` comment "
                              "is read as SQL too, and may always follow `--` (esper query -w DIR -- SQL)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json (JSON columns as nested values, "
                            "DECIMALs as numbers)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Run read-only SQL over every run in the workspace; each statement's rows are shown in turn."""
    if fmt not in ("table", "csv", "json"):
        raise BadInput(f"unknown format {fmt!r}: use table, csv or json")
    if sql == "-":
        sql = _stdin_text()
    ws = existing_workspace(workspace)
    with ws.reader() as reader:
        for note in reader.notes:
            say(f"note: {note}")
        statements = reader.reading(sql)
        if len(statements) > 1 and fmt != "table":  # one csv header, one JSON document: one table
            raise BadInput(f"--format {fmt} shows one statement's rows and the SQL has {len(statements)}: "
                           "run them one at a time")
        results = reader.execute(statements)
    sys.stdout.write("\n".join(render(columns, rows, fmt, types) for columns, types, rows in results))


def _stdin_text() -> str:
    """The SQL piped in (`esper query - < file.sql`), which must be UTF-8."""
    data = sys.stdin.buffer.read() if sys.stdin is not None else b""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"standard input is no UTF-8 text (byte {exc.start}): esper query - reads SQL") from None


def render(columns: list[str], rows: list[tuple], fmt: str, types: Optional[list] = None) -> str:
    """One statement's rows as a table, csv or JSON (`types`: the columns' DuckDB types, for JSON's values)."""
    if fmt == "json":
        names = _distinct(columns)
        values = [_json_column(kind) for kind in types or [None] * len(columns)]
        return json_text([{name: value(v) for name, value, v in zip(names, values, row)} for row in rows]) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_plain(v) for v in row] for row in rows])
        return out.getvalue()
    columns = [visible(c) for c in columns]
    cells = [["NULL" if v is None else visible(str(_plain(v))) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    body = [line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(body) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})\n"


def _json_column(kind: Any) -> Callable[[Any], Any]:
    """How the values of a column of DuckDB type `kind` go into JSON, decided once per column: a JSON column's text
    parsed (the value, not a string holding it), a DECIMAL a number (a double, as a JSON reader takes one), lists,
    structs and maps element by element. DuckDB hands a JSON value over as a string: only its type tells it from
    text. Of an unknown type (None, or a union) only decimals are found, by their Python type."""
    if kind is None or kind.id == "union":
        return _decimals_as_numbers
    if str(kind) == "JSON":
        return _parsed
    if kind.id == "decimal":
        return lambda v: None if v is None else float(v)
    if kind.id in ("list", "array"):
        child = _json_column(dict(kind.children)["child"])
        return lambda v: None if v is None else [child(x) for x in v]
    if kind.id == "struct":
        fields = {name: _json_column(field) for name, field in kind.children}
        return lambda v: None if v is None else {k: fields[k](x) for k, x in v.items()}
    if kind.id == "map":
        children = dict(kind.children)
        key, entry = _json_column(children["key"]), _json_column(children["value"])
        if children["key"].id in ("list", "array", "struct", "map"):  # no dict key: DuckDB gives {key: [...], value: [...]}
            return lambda v: None if v is None else {"key": [key(k) for k in v["key"]],
                                                     "value": [entry(x) for x in v["value"]]}
        return lambda v: None if v is None else {k: entry(x) for k, x in v.items()}
    return lambda v: v


def _parsed(text: Optional[str]) -> Any:
    try:
        return None if text is None else json.loads(text)
    except ValueError:  # DuckDB checks JSON as it stores it: not expected, and the text is kept
        return text


def _decimals_as_numbers(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _decimals_as_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_decimals_as_numbers(v) for v in value]
    return value


def _distinct(columns: list[str]) -> list[str]:
    """Column names as JSON keys, a repeated name numbered (`a`, `a:2`) so that no column's values are lost."""
    seen: dict[str, int] = {}
    out = []
    for name in columns:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}:{seen[name]}")
    return out


def _plain(value: Any) -> Any:
    """A value as DuckDB writes it in text (`CAST(v AS VARCHAR)`): booleans `true`/`false`, blobs with `\\xNN`
    escapes, intervals as `2 days 01:30:00`; csv readers and people who know SQL read it as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _blob_text(bytes(value))
    if isinstance(value, timedelta):
        return _interval_text(value)
    return str(value)


def _blob_text(data: bytes) -> str:
    """Printable ASCII as itself, every other byte (quotes and the backslash too) as `\\xNN`, as DuckDB prints a
    blob."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and chr(b) not in "\"'\\" else f"\\x{b:02X}" for b in data)


def _interval_text(interval: timedelta) -> str:
    """An interval as DuckDB prints one: `3 days`, `2 days 01:30:00.000001`, `00:00:00`. The driver hands months
    over as 30 days each, so `interval 14 month` reads `420 days`."""
    days = f"{interval.days} day{'s' if abs(interval.days) != 1 else ''}" if interval.days else ""
    seconds, micros = interval.seconds, interval.microseconds
    if days and not (seconds or micros):
        return days
    clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" + (f".{micros:06d}" if micros else "")
    return f"{days} {clock}" if days else clock


@app.command()
@handles_errors
def runs(
    as_json: bool = typer.Option(False, "--json", help="One JSON array on stdout."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """The runs in the workspace, with their status: running, finished, failed or incomplete; altered where the
    log's hash chain says it was changed (its numbers are then not the run's)."""
    from esper.tolaria.resumable import resumable

    ws = existing_workspace(workspace)
    with ws.reader() as reader:
        for note in reader.notes:
            say(f"note: {note}")
        rows = reader.con.execute(
            "SELECT run_id, task, controller, seed, epochs, status, val_accuracy, test_accuracy, params, started"
            " FROM runs ORDER BY started, run_id").fetchall()
        altered = reader.altered_runs()
        listing = []
        for run_id, task, controller, seed, epochs, status, val_acc, test_acc, params, started in rows:
            if run_id in altered:
                say(f"note: {altered[run_id]}")
            listing.append({
                "run_id": run_id, "status": "altered" if run_id in altered else status, "task": task,
                "controller": controller, "seed": seed, "epochs": epochs, "val_accuracy": val_acc,
                "test_accuracy": test_acc, "params": params,
                "started": started.isoformat() if started else None,
            })
        for run_id in sorted(altered.keys() - {r["run_id"] for r in listing}):  # no RunStarted left to list it by
            say(f"note: {altered[run_id]}")
            listing.append({"run_id": run_id, "status": "altered", **dict.fromkeys(
                ("task", "controller", "seed", "epochs", "val_accuracy", "test_accuracy", "params", "started"))})
        left = resumable(reader, [r["run_id"] for r in listing if r["status"] in ("failed", "incomplete")])
    if len(left) == 1:  # what a crash or a stop left to go on with
        say(f"note: run {left[0]} stopped before its end: esper run --resume {left[0]} continues it")
    elif left:
        say(f"note: esper run --resume RUN continues each run left unfinished: {', '.join(left)}")
    if not listing:
        say(f"note: no runs in {ws.root} yet: `esper run` records one there (another workspace: --workspace or "
            "$ESPER_WORKSPACE)")
    if as_json:
        print(json_text(listing))
        return
    columns = ["run_id", "status", "task", "controller", "seed", "epochs", "val_accuracy", "test_accuracy", "params"]
    sys.stdout.write(render(columns, [tuple(_fmt(r[c]) for c in columns) for r in listing], "table"))


def _fmt(value: Any) -> Any:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else value)


@app.command()
@handles_errors
def schemas(
    out: Path = path_option(Path("schemas"), "--out", help="Folder to write the JSON Schemas into; a schema file "
                            "written there before for a type that no longer exists is removed, any other file left "
                            "as it is."),
) -> None:
    """Write JSON Schema for every event and command type, one <Type>.json each. The folder's schema files are then
    the current set exactly: stale ones this command wrote (marked by their `$comment`) are removed, no other file."""
    from esper.leyline.schemas import write_schemas

    from esper.nissa.files import why_unwritable

    removed: list[Path] = []
    try:
        paths = write_schemas(out, removed)
    except OSError as exc:
        raise BadInput(f"cannot write schemas into {out}: {why_unwritable(out / 'schema.json', exc)}") from None
    stale = f"; removed {plural(len(removed), 'stale schema')} ({', '.join(p.name for p in removed)})"
    say(f"wrote {len(paths)} schemas into {out}/" + (stale if removed else ""))


@app.command()
@handles_errors
def gc(workspace: Optional[Path] = WorkspaceOption) -> None:
    """Delete the checkpoint files no run needs: all but the last of each ended run, never one a run could still
    resume from."""
    from esper.tolaria.gc import collect

    collected = collect(existing_workspace(workspace))
    for note in collected.notes:
        say(f"note: {note}")
    print(f"deleted {collected.deleted} checkpoint file{'s' if collected.deleted != 1 else ''}, "
          f"{_size(collected.freed)} freed; kept {collected.kept}")


def _size(n: int) -> str:
    """A count of bytes as a person reads it: `1 byte`, `900 bytes`, `2.1 MiB`."""
    if n < 1024:
        return plural(n, "byte")
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"
