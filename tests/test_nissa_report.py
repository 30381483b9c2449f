"""The HTML report: one self-contained file, one SVG per chart with real path data, the seed table, the story.

Two checks of the same files: `html.parser` always (well-formed, SVGs and their paths present, nothing
external), and a headless Chromium when `/usr/bin/chromium` (or `chromium` on PATH) exists: the browser's
DOM holds the SVG paths and a screenshot shows the curves and stage bands in their colours. Without
Chromium the browser test is skipped, saying so; the parser checks still run.
"""

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import attrs
import pytest
from fake_runs import run_id_for, write_comparison

from esper.nissa.charts import RUN_COLORS, STAGE_COLORS, nice_ticks
from esper.nissa.projector import caught_up
from esper.nissa.report import load_view, render_comparison, render_run, write_text
from esper.store import Workspace

HEURISTIC = run_id_for("heuristic", 0)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """What a report holds, and whether its tags nest properly."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: dict[str, int] = {}
        self.svgs: list[dict] = []
        self.seed_rows: list[str] = []
        self.urls: list[str] = []
        self.bands: list[str] = []
        self.story: list[str] = []
        self.rows: dict[str, list[str]] = {}
        """The cells' text of each table row of a seed or a decision, by `seed:<id>` or `seq:<seq>`."""
        self._in_story = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._li: list[str] | None = None
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def handle_starttag(self, tag, attrs):
        self._tag(tag, dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self._tag(tag, dict(attrs))

    def _tag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for key, value in attrs.items():
            if key in ("href", "src", "xlink:href", "action", "srcset", "data") and value:
                self.urls.append(value)
            if value and re.search(r"url\(|https?:|//", value) and key not in ("d", "viewbox"):
                self.urls.append(value)
        if tag == "svg":
            self.svgs.append({"chart": attrs.get("data-chart"), "paths": [], "circles": 0})
        elif tag == "path" and self.svgs and "svg" in self.stack:
            self.svgs[-1]["paths"].append(attrs.get("d", ""))
        elif tag == "circle" and self.svgs and "svg" in self.stack:
            self.svgs[-1]["circles"] += 1
        elif tag == "rect" and attrs.get("class") == "band":
            self.bands.append(attrs.get("data-stage"))
        elif tag == "tr" and "data-seed" in attrs:
            self.seed_rows.append(attrs["data-seed"])
        if tag == "tr" and ("data-seed" in attrs or "data-seq" in attrs):
            self._row = self.rows.setdefault(f"seed:{attrs['data-seed']}" if "data-seed" in attrs
                                             else f"seq:{attrs['data-seq']}", [])
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "ol" and attrs.get("class") == "story":
            self._in_story = True
        elif tag == "li" and self._in_story:
            self._li = []

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag == "li" and self._li is not None:
            self.story.append("".join(self._li))
            self._li = None
        elif tag == "ol":
            self._in_story = False
        elif tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._li is not None:
            self._li.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if "style" in self.stack and re.search(r"url\(|@import|https?:", data):
            self.urls.append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs = write_comparison(root)
    ws = Workspace.at(root)
    with ws.reader() as reader, caught_up(ws, reader) as projector:
        views = {run: load_view(projector, reader, run) for run in runs}
        blueprints = projector.fetch("blueprint_stats")
    single = write_text(root / "reports" / "single.html", render_run(views[HEURISTIC], blueprints))
    compare = write_text(root / "reports" / "compare.html", render_comparison(list(views.values())))
    return {"views": views, "single": single, "compare": compare, "runs": runs}


def assert_self_contained(page: Page) -> None:
    assert page.errors == []
    assert page.urls == []
    for tag in ("script", "link", "img", "iframe", "object", "embed"):
        assert tag not in page.tags


def test_single_run_report_is_well_formed_and_self_contained(site):
    text = site["single"].read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    assert_self_contained(Page(text))


def test_one_svg_per_chart_with_real_path_data(site):
    page = Page(site["single"].read_text(encoding="utf-8"))
    view = site["views"][HEURISTIC]
    assert [s["chart"] for s in page.svgs] == ["accuracy", "loss", "params"]
    epochs = len(view.metrics)
    expected_series = {"accuracy": 1, "loss": 2, "params": 1}
    for svg in page.svgs:
        assert len(svg["paths"]) == expected_series[svg["chart"]]
        for d in svg["paths"]:
            assert d.startswith("M")
            coordinates = re.findall(r"-?\d+\.\d", d)
            assert len(coordinates) >= epochs  # a point per epoch, not a placeholder
        assert svg["circles"] == epochs * expected_series[svg["chart"]]


def test_stage_bands_and_seed_table(site):
    page = Page(site["single"].read_text(encoding="utf-8"))
    view = site["views"][HEURISTIC]
    assert page.seed_rows == [s["seed_id"] for s in view.seeds] == ["s1-mid", "s2-late", "s3-late"]
    # Stage bands under both the accuracy and the loss chart: one per stage row.
    assert len(page.bands) == 2 * len(view.stages)
    assert set(page.bands) == {"GERMINATED", "TRAINING", "BLENDING", "FOSSILIZED", "CULLED", "EMBARGOED"}


def test_story_and_decisions_are_in_the_report(site):
    text = site["single"].read_text(encoding="utf-8")
    page = Page(text)
    view = site["views"][HEURISTIC]
    assert page.story == view.narrative
    assert any("s1-mid fossilized, contribution +6.1 points" in line for line in page.story)
    assert text.count('<tr data-seq="') == sum(d["command"] != "Wait" for d in view.decisions) == 12
    assert "slot late holds seed s2-late in EMBARGOED" in text
    assert 'data-blueprint="conv_light"' in text


def test_decision_and_seed_rows_say_what_the_log_says(site):
    """A row per command but `wait`: what it named, its outcome, and what it did or why it was refused (told from the
    refusal's evidence, a cull with its reason); a row per seed with its stages' epochs and how it ended."""
    rows = Page(site["single"].read_text(encoding="utf-8")).rows
    gate = "gate closed: 1 of 2 training epochs; seed loss not improving (0.96, 0.96 at entry)"
    assert rows["seq:15"] == ["7", "heuristic", "Germinate", "conv_light → mid (s1-mid)", "applied",
                              "s1-mid DORMANT → GERMINATED"]
    assert rows["seq:20"] == ["8", "heuristic", "Advance", "s1-mid", "rejected", gate]
    assert rows["seq:52"] == ["20", "heuristic", "Cull", "s2-late", "applied",
                              "s2-late BLENDING → CULLED (contribution -3.1 points at full alpha)"]
    assert rows["seq:56"] == ["21", "heuristic", "Germinate", "attention → late", "rejected",
                              "slot late holds seed s2-late in EMBARGOED"]
    assert rows["seed:s1-mid"] == ["s1-mid", "mid", "conv_light", "2.3k", "7", "2", "3", "0", "FOSSILIZED", "12",
                                   "+6.1 points", ""]
    assert rows["seed:s2-late"][-4:] == ["DORMANT", "20", "-3.1 points", "controller: contribution -3.1 points at full alpha"]
    assert rows["seed:s3-late"][-4:] == ["TRAINING", "", "", ""]  # still training when the run ended


def test_the_cards_and_counts_at_the_top_of_a_report(site):
    text = site["single"].read_text(encoding="utf-8")
    summary = site["views"][HEURISTIC].summary
    cards = [(html.unescape(v), html.unescape(k)) for v, k in re.findall(r'<div class="v">(.*?)</div><div class="k">(.*?)</div>', text)]
    assert cards == [("85.0%", "validation accuracy (final)"), ("84.6%", "test accuracy"),
                     ("85.2%", "best validation (epoch 15)"), ("19.2k", "parameters (+56% over the host)"),
                     ("1 / 1", "seeds fossilized / culled (of 3)")]
    assert "24 of 24 epochs · 70 events" in text
    assert f"24 decisions: 12 wait, 7 applied, {summary['rejected']} rejected. Waits are not listed." in text
    assert summary["rejected"] == 5
    for view in site["views"].values():  # the counts agree with the rows listed, whatever the run
        page = render_run(view)
        n, waits, applied, rejected = map(int, re.search(r"(\d+) decisions: (\d+) wait, (\d+) applied, (\d+) rejected",
                                                         page).groups())
        listed = page.count('<tr data-seq="')
        assert (n, waits + listed, rejected, applied) == (len(view.decisions), n, view.summary["rejected"], listed - rejected)


def test_comparison_overlays_every_run(site):
    page = Page(site["compare"].read_text(encoding="utf-8"))
    assert_self_contained(page)
    assert [s["chart"] for s in page.svgs] == ["accuracy", "loss", "params"]
    for svg in page.svgs:
        assert len(svg["paths"]) == 3 and all(d.count("L") + d.count("H") >= 23 for d in svg["paths"])
    assert len(page.story) == sum(len(v.narrative) for v in site["views"].values())


def test_report_is_deterministic(site):
    view = site["views"][HEURISTIC]
    assert render_run(view) == render_run(view)
    assert site["single"].read_text(encoding="utf-8") == render_run(view, _blueprints(site))


def _blueprints(site):
    ws = Workspace.at(site["single"].parent.parent)
    with ws.reader() as reader, caught_up(ws, reader) as projector:
        return projector.fetch("blueprint_stats")


def test_text_is_escaped(site):
    view = site["views"][HEURISTIC]
    evil = attrs.evolve(view, run_id="<script>alert(1)</script>", narrative=["a < b & c", '"quoted"'])
    text = render_run(evil)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert Page(text).story == ["a < b & c", '"quoted"']


@pytest.mark.parametrize("lo, hi", [(0.70, 0.86), (0.3, 0.7), (12288, 23808), (5.0, 5.0), (0.0, 1e-9)])
def test_nice_ticks_cover_the_range(lo, hi):
    ticks = nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 8
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1


# ---- in a real browser --------------------------------------------------------------------------


def chromium() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={profile}", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


@pytest.mark.slow  # starts a browser
@pytest.mark.skipif(chromium() is None, reason="chromium not installed: the report was checked with html.parser only "
                                               "(well-formed, one SVG per chart with path data, no external URLs)")
def test_report_renders_in_headless_chromium(site, tmp_path):
    binary = chromium()
    url = site["single"].resolve().as_uri()
    dom = run_chromium(binary, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Page(dom.stdout)
    assert [s["chart"] for s in page.svgs] == ["accuracy", "loss", "params"]
    assert all(d.startswith("M") and len(d) > 100 for s in page.svgs for d in s["paths"])
    assert page.seed_rows == ["s1-mid", "s2-late", "s3-late"]

    shot = tmp_path / "report.png"
    result = run_chromium(binary, tmp_path / "profile-shot", "--window-size=1100,1400", f"--screenshot={shot}", url)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    image = pytest.importorskip("PIL.Image", reason="Pillow missing: screenshot taken but its pixels not checked")
    with image.open(shot) as img:
        pixels = img.convert("RGB").getcolors(maxcolors=1 << 24)
    counts = {color: n for n, color in pixels}

    def near(hex_color: str, tolerance: int = 8) -> int:
        target = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
        return sum(n for color, n in counts.items() if max(abs(a - b) for a, b in zip(color, target)) <= tolerance)

    assert len(counts) > 50, "the screenshot is (nearly) blank"
    assert near(RUN_COLORS[0]) > 300, "the validation accuracy curve is not drawn"
    # Stage bands: the fossilized lane alone spans half a chart width, twice; the legend swatch is 12x12.
    assert near(STAGE_COLORS["FOSSILIZED"]) > 2000, "the stage bands are not drawn"
    assert near(STAGE_COLORS["BLENDING"]) > 500


@pytest.mark.parametrize("batches", [1, 2, 9])
def test_a_run_that_has_just_started_renders(tmp_path, batches):
    from fake_runs import FakeWriter, plan_run

    from esper.store import Recorder

    ws = Workspace.at(tmp_path)
    with Recorder(ws.store_path("young")) as recorder:
        FakeWriter(recorder, "young", plan_run("heuristic", 0)).write(batches)
    with ws.reader() as reader, caught_up(ws, reader) as projector:
        view = load_view(projector, reader, "young")
    page = Page(render_run(view))
    assert_self_contained(page)
    assert [s["chart"] for s in page.svgs] == ["accuracy", "loss", "params"]
    assert view.status == "incomplete" and page.story[-1].startswith("(no end recorded yet")
    if batches == 1:  # RunStarted only: axes, no curve
        assert all(s["paths"] == [] for s in page.svgs)
    else:
        assert all(s["paths"] and all(d.startswith("M") for d in s["paths"]) for s in page.svgs)
