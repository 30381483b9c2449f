"""A run's status is one rule (`esper.leyline.status`), and every reader of it says the same on the same logs:
the `runs` view (and `esper runs`, which lists it), the run summary projection, the replayed `RunState` (and
`esper replay`, which prints it), and a report's `RunView`."""

import msgspec
import pytest
from cli_runner import invoke
from fake_runs import checkpointed, interrupted, plan_run, write_batches

from esper.leyline import CommandIssued, RunFailed, RunFinished, RunResumed, Wait
from esper.leyline.status import CLOSING, INCOMPLETE, RUNNING, shown, status_after
from esper.nissa.projector import Projector
from esper.nissa.report import load_view
from esper.nissa.runstate import RunState
from esper.store import Recorder, Workspace

EPOCHS = 8


def logs() -> dict[str, tuple[list[list], str]]:
    """Run id → (its batches, the status every reader must give it)."""
    plan = checkpointed(plan_run(epochs=EPOCHS))
    resumed = interrupted(plan, after=3)
    return {
        "finished": (plan, "finished"),
        "diverged": ([*plan[:4], [RunFailed(epoch=4, error="training diverged at epoch 4")]], "failed"),
        "interrupted": ([*plan[:4], [RunFailed(epoch=4, error="interrupted")]], "failed"),
        "resumed": (resumed, "finished"),
        "resumed-cut-again": (resumed[:7], "incomplete"),
        "cut-off": (plan[:5], "incomplete"),
    }


LIVE = "live"
"""A run whose store a writer holds open while it is read: running."""


def read_statuses(ws: Workspace) -> dict[str, dict[str, str]]:
    """Run → reader → the status that reader gives."""
    out: dict[str, dict[str, str]] = {}
    listed = msgspec.json.decode(invoke("runs", "--json", workspace=ws.root).stdout)
    replayed = {}
    for run_id in logs() | {LIVE: None}:
        replay = invoke("replay", run_id, "--json", workspace=ws.root)
        replayed[run_id] = msgspec.json.decode(replay.stdout)["status"] if replay.exit_code == 0 else replay.stderr
    with ws.reader() as reader, Projector.memory() as projector:
        projector.rebuild(reader)
        view = dict(reader.con.execute("SELECT run_id, status FROM runs").fetchall())
        for run_id in view:
            live = reader.is_live(run_id)
            out[run_id] = {
                "runs view": view[run_id],
                "esper runs": next(r["status"] for r in listed if r["run_id"] == run_id),
                "run summary": shown(projector.fetch("run_summary", run_id)[0]["status"], live),
                "RunState": shown(RunState.fold(reader.read_run(run_id)).status, live),
                "RunView": load_view(projector, reader, run_id).status,
                "esper replay": replayed[run_id],
            }
    return out


@pytest.fixture(scope="module")
def statuses(tmp_path_factory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("status")
    for run_id, (batches, _) in logs().items():
        write_batches(root, batches, run_id)
    ws = Workspace.at(root)
    plan = plan_run(epochs=EPOCHS)
    with Recorder(ws.store_path(LIVE)) as recorder:  # held open: readers see the store as live
        seq = 0
        for batch in plan[:3]:
            seq = recorder.append(LIVE, batch, seq)
        return read_statuses(ws)


@pytest.mark.parametrize("run_id", [*logs(), LIVE])
def test_every_reader_gives_a_run_the_same_status(statuses, run_id):
    expected = {**{r: status for r, (_, status) in logs().items()}, LIVE: RUNNING}[run_id]
    assert statuses[run_id] == dict.fromkeys(statuses[run_id], expected)


def test_the_runs_view_keeps_ended_and_finished_beside_status(tmp_path):
    for run_id, (batches, _) in logs().items():
        write_batches(tmp_path, batches, run_id)
    with Workspace.at(tmp_path).reader() as reader:
        rows = reader.con.execute("SELECT run_id, status, ended, finished FROM runs").fetchall()
    ended = {"finished": "RunFinished", "failed": "RunFailed", INCOMPLETE: None}
    assert {r[0]: r[1:] for r in rows} == {
        run_id: (status, ended[status], status == "finished") for run_id, (_, status) in logs().items()}


def test_the_last_closing_event_decides_and_others_change_nothing():
    events = [RunFailed(epoch=3, error="interrupted"), RunResumed(epoch=3, sha256="0" * 64, checkpoint_epoch=3),
              CommandIssued(epoch=4, command=Wait(), controller="static"),
              RunFinished(epoch=4, val_accuracy=0.5, test_accuracy=0.5, params=1)]
    seen = [INCOMPLETE]
    for event in events:
        seen.append(status_after(seen[-1], event))
    assert seen == [INCOMPLETE, "failed", INCOMPLETE, INCOMPLETE, "finished"]
    assert set(CLOSING) == {RunFinished, RunFailed, RunResumed}


def test_only_an_incomplete_run_shows_as_running():
    assert [shown(s, live=True) for s in ("finished", "failed", INCOMPLETE)] == ["finished", "failed", RUNNING]
    assert shown(INCOMPLETE, live=False) == INCOMPLETE
