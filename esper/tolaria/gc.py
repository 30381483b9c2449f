"""`esper gc`: delete the checkpoint files no run needs any more.

A run that can still resume (cut off, interrupted from outside, or training now) needs every checkpoint its log
names: resume falls back to an earlier one when a later file is lost. A run that ended (finished, or failed by
itself) keeps only its last, its final model. A file named by no log (its run was killed between writing it and
logging it, or trained again on resume) and a temporary file left by a kill mid-write are deleted too, but only
when every store was read whole: a live writer may be about to log the file it just wrote. Files are shared by
content, so a file any run needs stays. Only what is named as `checkpoint.write` names its files is Esper's: anything
else in the folder (a user's own model file, a folder) is left as it is.
"""

import os
from pathlib import Path

import attrs

from esper.errors import BadInput
from esper.leyline.events import RunFailed, RunFinished, decode
from esper.store import Workspace
from esper.tolaria import checkpoint


@attrs.frozen
class Collected:
    deleted: int
    freed: int
    """Bytes."""
    kept: int
    notes: list[str]


def collect(ws: Workspace) -> Collected:
    """Delete what no run needs; what was deleted and kept."""
    folder = checkpoint.folder_of(ws.root)
    if not folder.is_dir():
        return Collected(0, 0, 0, [])
    with ws.reader() as reader:
        notes = list(reader.notes)
        whole = not reader.live_files and len(reader.names) == len(ws.store_files())
        named = reader.con.execute(
            "SELECT run_id, list(payload->>'$.sha256' ORDER BY seq) FROM events WHERE type = 'CheckpointSaved'"
            " GROUP BY run_id").fetchall()
        endings = dict(reader.con.execute(
            "SELECT run_id, arg_max(payload::VARCHAR, seq) FROM events"
            " WHERE type IN ('RunFinished', 'RunFailed', 'RunResumed') GROUP BY run_id").fetchall())
    referenced = {sha for _, shas in named for sha in shas}
    needed = {sha for run_id, shas in named for sha in (shas[-1:] if _ended(endings.get(run_id)) else shas)}
    files, parts = _owned(folder)
    unnamed = [p for p in files if p.stem not in referenced] + parts
    doomed = [p for p in files if p.stem in referenced and p.stem not in needed]
    if whole:
        doomed += unnamed
    elif unnamed:
        notes.append(f"kept {len(unnamed)} checkpoint file(s) no log names yet: a store is being written or could "
                     f"not be read")
    if doomed and not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"cannot delete checkpoint files in {folder}: it is not writable")
    freed = sum(_delete(p) for p in doomed)
    return Collected(len(doomed), freed, len(set(files) - set(doomed)), notes)


def _owned(folder: Path) -> tuple[list[Path], list[Path]]:
    """The checkpoint files in `folder` and the ones a kill left half written, by the names `checkpoint.write` gives
    them: anything else there (a user's own file or folder) is not Esper's to delete."""
    files, parts = [], []
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise BadInput(f"cannot read the checkpoint folder {folder}: {exc.strerror or exc}") from None
    for entry in entries:
        if entry.is_dir():
            continue
        if checkpoint.NAME.fullmatch(entry.name):
            files.append(Path(entry.path))
        elif checkpoint.PART.fullmatch(entry.name):
            parts.append(Path(entry.path))
    return files, parts


def _ended(closing: str | None) -> bool:
    """Whether the run's last closing event (`RunFinished`, `RunFailed` or `RunResumed`) ends it for good."""
    if closing is None:
        return False
    event = decode(closing)
    return isinstance(event, RunFinished) or (isinstance(event, RunFailed) and not event.interrupted)


def _delete(path: Path) -> int:
    """The bytes freed (none when another process deleted the file first)."""
    try:
        size = path.lstat().st_size  # a link's own: deleting it frees nothing of the file it leads to
        path.unlink()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise BadInput(f"cannot delete {path}: {exc.strerror or exc}") from None
    return size
