"""Whether a run can resume: the one rule `esper run --resume`, a stopped `esper run`'s note, `esper runs` and
`--like`'s refusal share. A run resumes from a checkpoint unless its log ends it for good (finished, or failed by
itself: it would train into the same failure). Reads events only (no torch): `esper runs` uses it.
"""

from esper.leyline.events import CheckpointSaved, Event, RunFailed, RunFinished, decode
from esper.leyline.status import CLOSING, CLOSING_TAGS
from esper.store import Reader

FINISHED = "run {run_id} finished: there is nothing to resume"


def stopping_events(reader: Reader, run_id: str) -> list[Event]:
    """The run's checkpoints and closing events, in order: all `not_resumable` reads (and a stop's result)."""
    rows = reader.con.execute(
        "SELECT payload::VARCHAR FROM events WHERE run_id = ? AND list_contains(?, type) ORDER BY seq",
        [run_id, ["CheckpointSaved", *CLOSING_TAGS]]).fetchall()
    return [decode(payload) for payload, in rows]


def resumable(reader: Reader, run_ids: list[str]) -> list[str]:
    """Those of `run_ids` that `esper run --resume` continues: in a store file of their own that no live process
    writes, and passed by `not_resumable`."""
    return [run_id for run_id in run_ids if reader.in_own_store(run_id) and not reader.is_live(run_id)
            and not_resumable(run_id, stopping_events(reader, run_id)) is None]


def not_resumable(run_id: str, events: list[Event]) -> str | None:
    """Why the run whose log holds `events` cannot go on from a checkpoint, or None where `--resume` continues it.
    The one rule for both `--resume` and the note a stopped `esper run` leaves: only the run's closing events and
    its checkpoints count, so a reader may pass just those (the rest of the log is checked when it resumes)."""
    closing = [e for e in events if type(e) in CLOSING]
    last = closing[-1] if closing else None
    if isinstance(last, RunFinished):
        return FINISHED.format(run_id=run_id)
    if isinstance(last, RunFailed) and not last.interrupted:
        return (f"run {run_id} failed by itself ({last.error}): resuming would train into the same failure; only an "
                f"interrupted or cut-off run resumes")
    if not any(isinstance(e, CheckpointSaved) for e in events):
        return f"run {run_id} has no checkpoint to resume from (it ran with checkpoint_every 0)"
    return None
