"""A run's status, declared once: every reader (the `runs` view, Nissa's run summary, the replayed `RunState`,
reports, `esper runs`) folds the same rule, in Python with `status_after` or in SQL with `status_sql`.

A run is `incomplete` until an event that closes it: its status is what the last closing event says. A
`RunResumed` continues a run that was interrupted (or cut off), so the interruption's `RunFailed` no longer
ends it and the run is incomplete again until what closes it last. Whether a closing event may be followed
by a `RunResumed` at all is the lifecycle fold's business (`esper.nissa.runstate`), not the status's.

`running` is not in the log: it is an incomplete run whose store a live writer holds (`shown`).
"""

from esper.leyline.events import Event, RunFailed, RunFinished, RunResumed

FINISHED = "finished"
FAILED = "failed"
INCOMPLETE = "incomplete"
RUNNING = "running"

CLOSING: dict[type, str] = {RunFinished: FINISHED, RunFailed: FAILED, RunResumed: INCOMPLETE}
"""The events that set a run's status, and the status each leaves; any other event leaves it as it was."""


def status_after(status: str, event: Event) -> str:
    """The run's status once `event` is folded onto `status` (start from `INCOMPLETE`)."""
    return CLOSING.get(type(event), status)


def shown(status: str, live: bool) -> str:
    """The status a reader shows: an incomplete run still being written (`live`) is running."""
    return RUNNING if live and status == INCOMPLETE else status


def _tag(event_type: type) -> str:
    return event_type.__struct_config__.tag


CLOSING_TAGS: tuple[str, ...] = tuple(_tag(t) for t in CLOSING)
"""The `type` column's values of the closing events."""
ENDING_TAGS: tuple[str, ...] = tuple(_tag(t) for t, status in CLOSING.items() if status != INCOMPLETE)
"""Those of the events that end a run (while nothing closes them later)."""


def sql_in(tags: tuple[str, ...]) -> str:
    """`tags` as an SQL list of literals, for `type IN (...)`."""
    return "(" + ", ".join(f"'{tag}'" for tag in tags) + ")"


def status_sql(last_closing: str, live: str = "false") -> str:
    """SQL for the status shown (`shown`), given an expression for the type of the run's last closing event (NULL
    when none) and a boolean expression saying whether its store is live."""
    whens = " ".join(f"WHEN '{_tag(t)}' THEN '{status}'" for t, status in CLOSING.items())
    logged = f"CASE {last_closing} {whens} ELSE '{INCOMPLETE}' END"
    return f"CASE WHEN ({live}) AND {logged} = '{INCOMPLETE}' THEN '{RUNNING}' ELSE {logged} END"
