"""Four writers at once on one workspace while readers poll it: nothing lost, every run's seq contiguous, every
chain intact, and no reader waits on a writer. Each writing process has store files of its own; readers attach
read-only (DESIGN.md, Events)."""

import json
import time
from pathlib import Path

import pytest
from cli_runner import invoke, start
from fake_runs import write_run

from esper.nissa.transfer import export_runs
from esper.store import Workspace

pytestmark = pytest.mark.slow  # subprocesses of the CLI that train real runs

POLL_EVERY = 0.5
PATIENCE = 5.0
"""The most one poll may take. A reader that waited on a writer would take as long as the writer (tens of
seconds); polls here take well under a second unloaded, but this machine is shared."""
PER_RUN = ("SELECT run_id, count(*) AS n, min(seq) AS first, max(seq) AS last, count(DISTINCT seq) AS seqs "
           "FROM events GROUP BY run_id ORDER BY run_id")


def poll(workspace: Path, *args: str) -> tuple[float, object]:
    """Run one read-only command; its wall time and its JSON answer."""
    began = time.perf_counter()
    result = invoke(*args, workspace=workspace)
    took = time.perf_counter() - began
    assert result.exit_code == 0, result.stderr
    return took, json.loads(result.stdout)


def test_four_writers_while_readers_poll(tmp_path):
    ws, export = tmp_path / "ws", tmp_path / "export.jsonl"
    source = Workspace.at(tmp_path / "source")
    imported = write_run(source.root, "heuristic", seed=3, epochs=6)
    with source.reader() as reader:
        exported = export_runs(reader, [imported], export, "jsonl")
    writers = {
        "run 1": start("run", "--epochs", "2", "--seed", "1", "--json", workspace=ws),
        "run 2": start("run", "--epochs", "2", "--seed", "2", "--json", workspace=ws),
        "ppo": start("ppo", "--episodes", "2", "--n-envs", "2", "--epochs", "2", "--out", str(tmp_path / "policy.pt"),
                     "--json", workspace=ws),
        "import": start("import", str(export), workspace=ws),
    }
    waits: list[float] = []
    while any(p.poll() is None for p in writers.values()):
        took, rows = poll(ws, "query", PER_RUN, "--format", "json")
        waits.append(took)
        for row in rows:  # a prefix of every run at every moment: no gap, no duplicate
            assert row["first"] == 1 and row["last"] == row["n"] == row["seqs"], row
        took, _ = poll(ws, "runs", "--json")
        waits.append(took)
        time.sleep(POLL_EVERY)
    outcomes = {name: p.communicate() + (p.returncode,) for name, p in writers.items()}
    for name, (out, err, code) in outcomes.items():
        assert code == 0, f"{name}: {err}"
    print(f"{len(waits)} polls while writing: median {sorted(waits)[len(waits) // 2]:.2f} s, longest {max(waits):.2f} s")
    assert max(waits) < PATIENCE

    _, rows = poll(ws, "query", PER_RUN, "--format", "json")
    counts = {row["run_id"]: row["n"] for row in rows}
    for row in rows:
        assert row["first"] == 1 and row["last"] == row["n"] == row["seqs"], row
    _, runs = poll(ws, "runs", "--json")
    ran = [json.loads(outcomes[name][0])["run_id"] for name in ("run 1", "run 2")]
    episodes = [r["run_id"] for r in runs if r["controller"] == "ppo"]
    assert sorted(r["run_id"] for r in runs) == sorted([*ran, *episodes, imported])
    assert len(episodes) == 2 and {r["status"] for r in runs} == {"finished"}
    assert counts[imported] == exported  # nothing lost in the import
    learner = json.loads(outcomes["ppo"][0])["learner"]
    assert counts[learner] == 2  # one update of two episodes: its PolicyUpdated and the CheckpointSaved of its file
    for run_id in counts:  # every chain intact, every decision re-judged
        if run_id == learner:
            continue
        result = invoke("replay", run_id, workspace=ws)
        assert result.exit_code == 0, (run_id, result.stderr)
    with Workspace.at(ws).reader() as reader:
        reader.check_run(learner)
        stores = dict(reader.con.execute("SELECT run_id, count(DISTINCT _store) FROM all_events GROUP BY run_id").fetchall())
    assert set(stores.values()) == {1}  # a run lives in one store file
    assert len(list(ws.glob("*.duckdb"))) == 4  # one per writer: two runs, the PPO job, the import
