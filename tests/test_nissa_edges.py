"""Nissa at the edges a user meets: runs cut off or altered beside whole ones, runs that failed at once, runs with
no seed, text tasks, runs fitted from Python, strings from logs in HTML, charts of one epoch or of NaN."""

import re

import duckdb
import msgspec
import pytest
from cli_runner import invoke
from fake_runs import run_id_for, write_run

from esper.nissa.projector import Projector, caught_up
from esper.store import Workspace

HEURISTIC = run_id_for("heuristic", 0)
POLICY = run_id_for("policy", 1)


def sql(path, statement: str, params=()) -> list[tuple]:
    con = duckdb.connect(str(path))
    try:
        return con.execute(statement, list(params)).fetchall()
    finally:
        con.close()


def blueprint_stats(ws: Workspace) -> list[dict]:
    with ws.reader() as reader, caught_up(ws, reader) as projector:
        return projector.fetch("blueprint_stats")


# ---- a run whose tail was cut, beside a whole one -----------------------------------------------


@pytest.fixture
def cut(tmp_path) -> Workspace:
    """A whole heuristic run, and a policy run whose last 44 events were deleted (its store's head still says 74)."""
    write_run(tmp_path / "ws", "heuristic", 0)
    write_run(tmp_path / "ws", "policy", 1)
    return Workspace.at(tmp_path / "ws")


def cut_tail(ws: Workspace, run: str = POLICY, after: int = 30) -> None:
    sql(ws.store_path(run), "DELETE FROM events WHERE run_id = ? AND seq > ?", [run, after])


@pytest.mark.parametrize("projected_before", [False, True], ids=["fresh", "caught-up-before-the-cut"])
def test_a_run_whose_tail_was_cut_is_in_no_table_across_the_workspace(cut, tmp_path, projected_before):
    if projected_before:  # the projection file folded the whole run before its tail went
        with cut.reader() as reader, caught_up(cut, reader) as projector:
            assert {r["run_id"] for r in projector.fetch("run_summary")} == {HEURISTIC, POLICY}
    cut_tail(cut)
    write_run(tmp_path / "alone", "heuristic", 0)
    with cut.reader() as reader, caught_up(cut, reader) as projector:
        assert [r["run_id"] for r in projector.fetch("run_summary")] == [HEURISTIC]
        assert projector.fetch("seed_lifecycle", POLICY) == []
        assert blueprint_stats(Workspace.at(tmp_path / "alone")) == projector.fetch("blueprint_stats")
        assert list(projector.altered) == [POLICY]
        said = "log altered: the store's head says seq 74, the log ends at seq 30"
        assert any(said in note and POLICY in note for note in projector.notes)
    listed = invoke("runs", workspace=cut.root)  # what `esper runs` says of it, the report says too
    assert said in listed.stderr


def test_the_report_of_a_whole_run_says_which_run_its_blueprint_table_left_out(cut):
    cut_tail(cut)
    result = invoke("report", HEURISTIC, workspace=cut.root)
    assert result.exit_code == 0, result.stderr
    assert "the store's head says seq 74, the log ends at seq 30" in result.stderr
    text = (cut.root / "reports" / f"{HEURISTIC}.html").read_text(encoding="utf-8")
    section = text[text.index('<section id="blueprints">'):]
    section = section[:section.index("</section>")]
    assert f'data-run="{POLICY}"' in section and "Left out: log altered: the store&#x27;s head says seq 74" in section
    runs = re.findall(r'<tr data-blueprint="[^"]*"><td>[^<]*</td><td class="n">(\d+)</td>', section)
    assert runs and set(runs) == {"1"}  # each blueprint's seeds are the whole run's alone


def test_the_report_names_the_store_files_its_workspace_tables_could_not_read(cut):
    (cut.root / "broken.duckdb").write_text("no database")
    result = invoke("report", HEURISTIC, workspace=cut.root)
    assert result.exit_code == 0, result.stderr
    text = (cut.root / "reports" / f"{HEURISTIC}.html").read_text(encoding="utf-8")
    section = text[text.index('<section id="blueprints">'):]
    assert "Not read: skipped broken.duckdb: unreadable store" in section[:section.index("</section>")]


@pytest.mark.parametrize("edit, said", [
    ("UPDATE events SET payload = replace(payload::VARCHAR, '\"val_loss\":', '\"val_loss\":9,\"x\":')::JSON"
     " WHERE seq = 19", "log altered at seq 19 (EpochEnded)"),
    ("UPDATE events SET epoch = 99 WHERE seq = 19", "log altered at seq 19 (EpochEnded: its epoch column says 99"),
], ids=["payload", "column"])
def test_an_event_edited_after_it_was_folded_takes_its_run_out_of_every_table(cut, tmp_path, edit, said):
    with cut.reader() as reader, caught_up(cut, reader) as projector:  # folded whole, before the edit
        assert {r["run_id"] for r in projector.fetch("run_summary")} == {HEURISTIC, POLICY}
    sql(cut.store_path(POLICY), edit)
    write_run(tmp_path / "alone", "heuristic", 0)
    with cut.reader() as reader, caught_up(cut, reader) as projector:  # no run drawn: the cache is not enough
        assert [r["run_id"] for r in projector.fetch("run_summary")] == [HEURISTIC]
        assert said in projector.altered[POLICY]
        assert projector.fetch("blueprint_stats") == blueprint_stats(Workspace.at(tmp_path / "alone"))
    assert said in invoke("runs", workspace=cut.root).stderr


def test_no_run_of_a_whole_workspace_is_dropped(tmp_path):
    """Runs sharing a store, resumed, of text: each whole log is folded, none taken for altered."""
    from fake_runs import checkpointed, interrupted, plan_run, write_batches

    write_run(tmp_path, "heuristic", 0)
    write_run(tmp_path, "policy", 1, store="shared")
    write_run(tmp_path, "static", 2, store="shared")
    write_batches(tmp_path, interrupted(checkpointed(plan_run(epochs=6)), 3), "resumed")
    write_batches(tmp_path, text_batches(), "text-run")
    ws = Workspace.at(tmp_path)
    with ws.reader() as reader, Projector.memory() as projector:
        projector.catch_up(reader)
        assert projector.altered == {} and len(projector.fetch("run_summary")) == 5


def test_a_cut_tail_is_found_in_a_run_spread_over_two_stores(tmp_path):
    ws = Workspace.at(tmp_path)
    write_run(tmp_path, "heuristic", 0)
    write_run(tmp_path, "policy", 1, store="shared")
    write_run(tmp_path, "static", 2, store="shared")
    cut_run = run_id_for("static", 2)
    sql(ws.store_path("shared"), "DELETE FROM events WHERE run_id = ? AND seq > 20", [cut_run])
    with ws.reader() as reader, Projector.memory() as projector:
        projector.catch_up(reader)
        assert {r["run_id"] for r in projector.fetch("run_summary")} == {HEURISTIC, POLICY}
        assert list(projector.altered) == [cut_run]


def test_a_run_being_written_is_no_cut_tail(tmp_path):
    from fake_runs import FakeWriter, plan_run

    from esper.store import Recorder

    ws = Workspace.at(tmp_path)
    with Recorder(ws.store_path("young")) as recorder:
        FakeWriter(recorder, "young", plan_run("heuristic", 0)).write(5)
        with ws.reader() as reader, caught_up(ws, reader) as projector:  # read from a snapshot of the held file
            assert reader.is_live("young")
            assert projector.altered == {} and [r["run_id"] for r in projector.fetch("run_summary")] == ["young"]


@pytest.mark.parametrize("statement", ["DELETE FROM heads", "DROP TABLE heads"])
def test_a_sealed_run_whose_store_lost_its_head_is_in_no_table(cut, statement):
    sql(cut.store_path(POLICY), statement)
    with cut.reader() as reader, caught_up(cut, reader) as projector:
        assert [r["run_id"] for r in projector.fetch("run_summary")] == [HEURISTIC]
        assert f"the store has no head for run {POLICY}" in projector.altered[POLICY]


# ---- a scratch run's seeds are built, not germinated ----------------------------------------------


def scratch_batches(like: str, architecture: list[tuple[str, str]], epochs: int = 3) -> list[list]:
    """A scratch run as `esper run --controller scratch --like RUN` logs it: its seeds built (DORMANT → FOSSILIZED)
    before the first epoch, then epochs of waiting."""
    from fake_runs import BLUEPRINTS, HOST_PARAMS, LIFECYCLE, MNIST1D, SLOTS

    from esper.leyline import CommandIssued, EpochEnded, RunConfig, RunFinished, RunStarted, SeedGerminated, Wait
    from esper.leyline.garden import Garden

    config = RunConfig(task="mnist1d", controller="scratch", like=like, architecture=architecture, epochs=epochs,
                       lifecycle=LIFECYCLE)
    garden = Garden()
    started = RunStarted(preset=MNIST1D, config=config, host_params=HOST_PARAMS, slots=list(SLOTS),
                         blueprints=sorted(BLUEPRINTS))
    garden.apply(started)
    first = [started]
    for index in range(len(architecture)):
        for event in garden.build(index):
            if isinstance(event, SeedGerminated):
                event = msgspec.structs.replace(event, params=BLUEPRINTS[event.blueprint].params)
            garden.apply(event)
            first.append(event)
    params = HOST_PARAMS + sum(BLUEPRINTS[bp].params for _, bp in architecture)
    batches = [first]
    for epoch in range(1, epochs + 1):
        batches.append([EpochEnded(epoch=epoch, train_loss=1.0, val_loss=1.1, val_accuracy=0.5 + epoch / 100,
                                   params=params), CommandIssued(epoch=epoch, command=Wait(), controller="scratch")])
    batches.append([RunFinished(epoch=epochs, val_accuracy=0.53, test_accuracy=0.52, params=params,
                                seeds={"FOSSILIZED": len(architecture)})])
    return batches


def test_seeds_a_scratch_run_built_are_not_counted_as_germinated_in_the_blueprint_table(tmp_path):
    from fake_runs import write_batches

    write_run(tmp_path / "alone", "heuristic", 0)
    write_run(tmp_path / "ws", "heuristic", 0)
    ws = write_batches(tmp_path / "ws", scratch_batches(HEURISTIC, [("mid", "conv_light"), ("late", "conv_heavy")]),
                       "scratch-run")
    with ws.reader() as reader, caught_up(ws, reader) as projector:
        built = projector.fetch("seed_lifecycle", "scratch-run")
        assert [(s["blueprint"], s["final_stage"], s["built"]) for s in built] == [
            ("conv_light", "FOSSILIZED", True), ("conv_heavy", "FOSSILIZED", True)]
        assert not any(s["built"] for s in projector.fetch("seed_lifecycle", HEURISTIC))
        assert projector.fetch("blueprint_stats") == blueprint_stats(Workspace.at(tmp_path / "alone"))
        summary = projector.fetch("run_summary", "scratch-run")[0]
        assert (summary["germinated"], summary["fossilized"], summary["built"]) == (0, 0, 2)
    said = invoke("report", "scratch-run", "--out", str(tmp_path / "r.html"), workspace=tmp_path / "ws")
    assert said.exit_code == 0, said.stderr
    assert "seeds: 0 germinated, 0 fossilized, 0 culled; 2 built into the host" in said.stdout + said.stderr


# ---- text runs: bits per character ------------------------------------------------------------------


def text_batches(epochs: int = 6) -> list[list]:
    """A fake run whose epochs and end carry bits per character, as the text task's do."""
    from fake_runs import plan_run

    from esper.leyline import EpochEnded, RunFinished, RunStarted

    out = []
    for batch in plan_run("heuristic", 0, epochs):
        events = []
        for e in batch:
            if isinstance(e, RunStarted):
                e = msgspec.structs.replace(e, config=msgspec.structs.replace(e.config, task="text"))
            elif isinstance(e, EpochEnded):
                e = msgspec.structs.replace(e, val_bits_per_char=round(4.0 - e.epoch / 10, 6))
            elif isinstance(e, RunFinished):
                e = msgspec.structs.replace(e, val_bits_per_char=3.4, test_bits_per_char=3.45)
            events.append(e)
        out.append(events)
    return out


@pytest.fixture
def text_run(tmp_path) -> Workspace:
    from fake_runs import write_batches

    write_run(tmp_path, "static", 0)
    return write_batches(tmp_path, text_batches(), "text-run")


def test_a_text_runs_bits_per_character_are_in_its_read_models_report_and_story(text_run):
    from esper.nissa.report import comparison_summary, load_view, render_comparison, render_run, terminal_summary

    with text_run.reader() as reader, caught_up(text_run, reader) as projector:
        view = load_view(projector, reader, "text-run")
        other = load_view(projector, reader, run_id_for("static", 0))
    assert (view.summary["val_bits_per_char"], view.summary["test_bits_per_char"]) == (3.4, 3.45)
    assert [m["val_bits_per_char"] for m in view.metrics] == [3.9, 3.8, 3.7, 3.6, 3.5, 3.4]
    assert other.summary["val_bits_per_char"] is None and other.metrics[0]["val_bits_per_char"] is None
    text = render_run(view)
    assert '<div class="v">3.400</div><div class="k">validation bits per character (final)</div>' in text
    assert '<div class="v">3.450</div><div class="k">test bits per character</div>' in text
    assert "bits per character" not in render_run(other)  # an accuracy task's report is as it was
    assert "  bits per character: validation 3.400, test 3.450" in terminal_summary(view)
    assert view.narrative[-1].startswith("epoch 6: finished:") and "; 3.400 bits per character (test 3.450);" in \
        view.narrative[-1]
    head, *rows = comparison_summary([other, view])
    assert "val b/c" in head and rows[1].split()[5:7] == ["3.400", "3.450"] and rows[0].split()[5:7] == ["–", "–"]
    compared = render_comparison([other, view])
    assert "<th>test bits/char</th>" in compared and '<td class="n">3.450</td>' in compared


def test_a_comparison_says_each_runs_status_and_when_its_tasks_differ(text_run, tmp_path):
    from fake_runs import interrupted, plan_run, write_batches

    from esper.nissa.report import comparison_summary, load_view, render_comparison

    failed = interrupted(plan_run("heuristic", 1, 6), 3)[:5]  # failed after epoch 3, never resumed
    write_batches(tmp_path, failed, "failed-run")
    with text_run.reader() as reader, caught_up(text_run, reader) as projector:
        views = [load_view(projector, reader, run) for run in ("failed-run", run_id_for("static", 0), "text-run")]
    head, *rows = comparison_summary(views)
    assert head.split()[:2] == ["run", "status"] and [r.split()[1] for r in rows] == ["failed", "finished", "finished"]
    compared = render_comparison(views)
    assert "These runs are of different tasks (mnist1d, text): their curves are not comparable." in compared
    assert "different tasks" not in render_comparison(views[:2])


def test_a_run_that_failed_before_its_first_epoch_names_no_best_epoch(tmp_path):
    from fake_runs import plan_run, write_batches

    from esper.leyline import RunFailed
    from esper.nissa.report import load_view, render_run

    ws = write_batches(tmp_path, [plan_run("heuristic", 0, 3)[0], [RunFailed(epoch=1, error="<b>boom</b> & more")]],
                       "failed-at-once")
    with ws.reader() as reader, caught_up(ws, reader) as projector:
        view = load_view(projector, reader, "failed-at-once")
    text = render_run(view)
    assert view.status == "failed" and "epoch None" not in text
    assert '<div class="k">best validation</div>' in text
    assert "Run failed: &lt;b&gt;boom&lt;/b&gt; &amp; more" in text and "<b>boom" not in text
