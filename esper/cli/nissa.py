"""The verbs over Nissa's projections: report, export, import."""

import hashlib
import re
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from esper.cli.app import (WorkspaceOption, app, deliver_stdout, existing_workspace, handles_errors, path_option,
                           path_value, say)
from esper.errors import BadInput, EsperError, LogAltered
from esper.nissa.fmt import plural, visible
from esper.store import Workspace


@app.command()
@handles_errors
def report(
    runs: List[str] = typer.Argument(..., metavar="RUN", help="Run id (or a unique prefix); several with --compare."),
    compare: bool = typer.Option(False, "--compare", help="Overlay the curves of several runs in one report."),
    out: Optional[Path] = path_option(
        None, "--out", "-o", help="HTML file to write (default <workspace>/reports/<run>.html)."
    ),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Write a run's story, curves, seed table and controller decisions as one self-contained HTML file."""
    from esper.nissa.projector import caught_up
    from esper.nissa.report import (
        comparison_summary,
        different_tasks,
        load_view,
        render_comparison,
        render_run,
        terminal_summary,
        write_text,
    )
    from esper.nissa.files import check_output

    if compare and len(runs) < 2:
        raise BadInput("--compare needs at least two runs (esper report --compare RUN RUN ...)")
    if not compare and len(runs) > 1:
        raise BadInput(f"one run at a time, got {len(runs)}; add --compare to compare them in one report")
    if out is not None and str(out) == "-":
        raise BadInput("--out -: a report is one HTML file, not a stream; give a file name (its summary lines are "
                       "printed on standard output already)")
    if out is not None:  # before the projections are brought up to date: a refused --out leaves nothing behind
        check_output(out)
    ws = existing_workspace(workspace)
    with ws.reader() as reader:
        for note in reader.notes:
            say(f"note: {note}")
        run_ids = list(dict.fromkeys(reader.resolve_run(r) for r in runs))
        if compare and len(run_ids) < 2:
            named = " and ".join(runs) if len(runs) == 2 else ", ".join(runs)
            raise BadInput(f"--compare needs two different runs; {named} are all {run_ids[0]}")
        # The drawn runs' whole hash chains are checked (linear in those runs); an altered one is refused,
        # and its rows are dropped from the projections so that nothing serves its old values either.
        with caught_up(ws, reader, check=run_ids) as projector:
            for run_id in run_ids:
                if run_id in projector.altered:
                    raise LogAltered(projector.altered[run_id])
            for note in projector.notes:
                say(f"note: {note}")
            views = [load_view(projector, reader, run_id) for run_id in run_ids]
            blueprints = projector.fetch("blueprint_stats")
    if compare:
        if tasks := different_tasks(views):  # accuracies of different tasks
            say(f"note: these runs are of different tasks ({', '.join(tasks)}): their curves are "
                "not comparable")
        html, lines = render_comparison(views), comparison_summary(views)
        name = "compare-" + "-vs-".join(run_ids)
    else:
        html, lines = render_run(views[0], blueprints), terminal_summary(views[0])
        name = run_ids[0]
    path = write_text(out or ws.root / "reports" / f"{_file_name(name)}.html", html)
    for line in lines:  # the run's strings from the log (an error, a controller's name) made visible
        print(visible(line))
    print(f"report: {path}")


@app.command("export")
@handles_errors
def export(
    runs: List[str] = typer.Argument(..., metavar="RUN", help="Run id(s) (or unique prefixes) to export."),
    fmt: Optional[str] = typer.Option(
        None, "--format", "-f", help="jsonl (readable, diffable), parquet (compact), or tensorboard (a folder of "
        "TensorBoard event files, one per run); default from --out, else jsonl."
    ),
    out: Optional[Path] = path_option(None, "--out", "-o", help="File (folder, for tensorboard) to write "
                                       "(default ./<run>.<format>, for tensorboard ./<run>-tensorboard/); - writes "
                                       "jsonl to standard output."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Write runs' events, every column exactly, to a jsonl or parquet file that `esper import` reads back, or
    their curves and lifecycle as TensorBoard event files."""
    from esper.nissa.files import EXPORT_SUFFIXES, check_output
    from esper.nissa.transfer import STDOUT, export_runs, file_kind, format_for

    if out == STDOUT and fmt in ("parquet", "tensorboard"):
        needs = "a folder" if fmt == "tensorboard" else "a file"
        raise BadInput(f"--out - writes jsonl to standard output; {fmt} needs {needs}")
    if out is not None and out != STDOUT and fmt != "tensorboard":
        check_output(out)
    if fmt == "tensorboard" and out is not None and (named := file_kind(out)):
        events = ", or drop --format to export the events to that file" if out.suffix.lower() in EXPORT_SUFFIXES else ""
        raise BadInput(f"--format tensorboard writes a folder, but --out {out} names {named} file: name a folder "
                       f"(--out tb){events}")
    if fmt != "tensorboard":
        fmt = format_for(out or Path(""), fmt)
    ws = existing_workspace(workspace)
    with ws.reader() as reader:
        for note in reader.notes:
            say(f"note: {note}")
        run_ids = list(dict.fromkeys(reader.resolve_run(r, training=False) for r in runs))
        if fmt == "tensorboard":
            _export_tensorboard(reader, run_ids, out or Path(f"{_file_name('-'.join(run_ids))}-tensorboard"))
            return
        path = out or Path(f"{_file_name(run_ids[0] if len(run_ids) == 1 else '-'.join(run_ids))}.{fmt}")
        n = export_runs(reader, run_ids, path, fmt)
    if path == STDOUT:  # the events went to stdout: delivered first, so that a reader that left is no success
        deliver_stdout()
        say(f"exported {plural(n, 'event')} of {_runs_text(run_ids)} to standard output ({fmt})")
    else:
        print(f"exported {plural(n, 'event')} of {_runs_text(run_ids)} to {path} ({fmt})")


def _export_tensorboard(reader, run_ids: list[str], out: Path) -> None:
    from esper.nissa.files import check_writable
    from esper.nissa.tensorboard import export_tensorboard

    check_writable(out / "run", "the TensorBoard folder")
    for run_id in run_ids:  # TensorBoard would read an earlier export's files beside the new ones: each curve twice
        if any((out / run_id).glob("*tfevents*")):
            raise BadInput(f"{out / run_id} already holds TensorBoard event files (an earlier export?): remove that "
                           "folder or export to another --out")
    # Every run read and checked before anything is written: an altered log is refused as by every other reader
    checked = {run_id: reader.read_checked(run_id).recorded for run_id in run_ids}
    n = export_tensorboard({run_id: (r.event for r in recorded) for run_id, recorded in checked.items()}, out)
    print(f"exported {plural(n, 'event')} of {_runs_text(run_ids)} to {out}/ (tensorboard --logdir {out})")


@app.command("import")
@handles_errors
def import_(
    file: Path = typer.Argument(..., metavar="FILE", parser=path_value,
                                help="A file written by `esper export` (jsonl or parquet); - reads standard input."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Add the runs of an exported file to the workspace (events already there are skipped)."""
    from esper.nissa.transfer import import_file

    if str(file) == "-":  # `esper export RUN --out - | esper import -`: the stream is read whole, then imported
        with tempfile.TemporaryDirectory(prefix="esper-import-") as folder:
            received = Path(folder) / "standard input"
            received.write_bytes(sys.stdin.buffer.read())
            try:
                result = import_file(Workspace.at(workspace), received)
            except EsperError as exc:  # named as the user named it, not by the file it was read into
                raise type(exc)(str(exc).replace(str(received), "standard input")) from None
    else:
        result = import_file(Workspace.at(workspace), file)
    for note in result.notes:
        say(f"note: {note}")
    if not result.stores:
        every, are = ("the", "is") if result.skipped == 1 else ("all", "are")
        print(f"nothing to import: {every} {plural(result.skipped, 'event')} of {_runs_text(result.runs)} {are} "
              "already in the workspace")
        return
    skipped = f" ({result.skipped} already there)" if result.skipped else ""
    stores = ", ".join(map(str, result.stores))
    print(f"imported {plural(result.imported, 'event')} of {_runs_text(result.runs)} into {stores}{skipped}")


def _runs_text(run_ids: list[str]) -> str:
    return f"run {run_ids[0]}" if len(run_ids) == 1 else f"{len(run_ids)} runs ({', '.join(run_ids)})"


def _file_name(name: str) -> str:
    """A run id made safe as a file name; long names keep a readable head and a hash of the whole."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"
    if len(safe) > 120:
        safe = f"{safe[:100]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return safe
