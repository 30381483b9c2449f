"""`esper report`: one self-contained HTML file per run (or per comparison of runs).

Everything in the file is inline: CSS in a `<style>`, charts as `<svg>` drawn by `charts`, no scripts,
no fonts, no URLs. It opens offline, in any browser, and diffs well (no timestamps in it: the same log
gives the same file). Data come from the projections (tables) and the narrative (events).
"""

import html
import json
from pathlib import Path
from typing import Any, Sequence

import attrs

from esper.leyline.status import INCOMPLETE, shown
from esper.nissa.charts import DASHES, RUN_COLORS, STAGE_COLORS, Band, Marker, Series, line_chart
from esper.nissa.files import atomic_write
from esper.nissa.fmt import bits, count, pct, plural, points
from esper.nissa.narrative import explain_rejection, narrate
from esper.nissa.projector import Projector
from esper.store import Reader


@attrs.frozen
class RunView:
    """Everything a report shows about one run."""

    run_id: str
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    seeds: list[dict[str, Any]]
    stages: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    narrative: list[str]
    live: bool = False
    left_out: dict[str, str] = attrs.field(factory=dict)
    """Runs left out of the tables across the workspace (their logs were altered, a tail cut off, say) → why."""
    skipped: list[str] = attrs.field(factory=list)
    """The store files no table could read (unreadable, held with no snapshot), as the reader notes them."""

    @property
    def status(self) -> str:
        return shown(self.summary.get("status") or INCOMPLETE, self.live)

    @property
    def last_epoch(self) -> int:
        return self.metrics[-1]["epoch"] if self.metrics else 0


def load_view(projector: Projector, reader: Reader, run_id: str) -> RunView:
    """A caught-up projector's rows for `run_id`, and the run's story from its events."""
    summary = projector.fetch("run_summary", run_id)
    return RunView(
        run_id=run_id,
        summary=summary[0] if summary else {"run_id": run_id},
        metrics=projector.fetch("epoch_metrics", run_id),
        seeds=projector.fetch("seed_lifecycle", run_id),
        stages=projector.fetch("seed_stages", run_id),
        decisions=projector.fetch("controller_decisions", run_id),
        narrative=narrate(reader.read_run(run_id), run_id),
        live=reader.is_live(run_id),
        left_out=dict(sorted(projector.altered.items())),
        skipped=list(reader.notes),
    )


# ---- charts -------------------------------------------------------------------------------------


def _pct_tick(v: float) -> str:
    return f"{100 * v:.4g}%"


def _loss_tick(v: float) -> str:
    return f"{v:.3g}"


def _params_tick(v: float) -> str:
    return count(int(round(v)))


def stage_bands(view: RunView) -> list[Band]:
    """Each seed's stages as bands between epoch boundaries (a stage entered after epoch e starts at e + ½)."""
    end = view.last_epoch + 0.5
    bands = []
    for row in view.stages:
        x0 = row["entered_after"] + 0.5
        x1 = row["left_after"] + 0.5 if row["left_after"] is not None else end
        until = f"epoch {row['left_epoch']}" if row["left_epoch"] is not None else "the end"
        label = f"{row['seed_id']} {row['stage']} from epoch {row['entered_epoch']} to {until}"
        bands.append(Band(lane=row["seed_id"], stage=row["stage"], x0=x0, x1=x1, label=label))
    return bands


def stage_markers(view: RunView) -> list[Marker]:
    """A line where a seed fossilized (green) or was culled (red)."""
    contributions = {s["seed_id"]: s["contribution"] for s in view.seeds}
    out = []
    for row in view.stages:
        if row["stage"] in ("FOSSILIZED", "CULLED"):
            verb = "fossilized" if row["stage"] == "FOSSILIZED" else "culled"
            c = contributions.get(row["seed_id"])
            extra = f" ({points(c)})" if c is not None else ""
            out.append(Marker(row["entered_after"] + 0.5, STAGE_COLORS[row["stage"]],
                              f"{row['seed_id']} {verb} at epoch {row['entered_epoch']}{extra}"))
    return out


def run_charts(view: RunView) -> dict[str, str]:
    epochs = [m["epoch"] for m in view.metrics]
    x_range = (0.5, max(epochs) + 0.5) if epochs else None
    bands, markers = stage_bands(view), stage_markers(view)
    acc = [Series("validation accuracy", [(m["epoch"], m["val_accuracy"]) for m in view.metrics], RUN_COLORS[0])]
    loss = [
        Series("train loss", [(m["epoch"], m["train_loss"]) for m in view.metrics], RUN_COLORS[3]),
        Series("validation loss", [(m["epoch"], m["val_loss"]) for m in view.metrics], RUN_COLORS[0]),
    ]
    params = [Series("parameters", [(m["epoch"], m["params"]) for m in view.metrics], RUN_COLORS[4], step=True)]
    return {
        "accuracy": line_chart("accuracy", "Validation accuracy by epoch, with each seed's lifecycle stages", acc,
                               _pct_tick, "accuracy", bands, markers, x_range),
        "loss": line_chart("loss", "Train and validation loss by epoch, with each seed's lifecycle stages", loss,
                           _loss_tick, "loss", bands, markers, x_range),
        "params": line_chart("params", "Parameter count by epoch", params, _params_tick, "parameters", (),
                             markers, x_range, height=200),
    }


def comparison_charts(views: Sequence[RunView]) -> dict[str, str]:
    def overlay(key: str, step: bool = False) -> list[Series]:
        return [
            Series(v.run_id, [(m["epoch"], m[key]) for m in v.metrics], RUN_COLORS[i % len(RUN_COLORS)],
                   DASHES[(i // len(RUN_COLORS)) % len(DASHES)], step=step)
            for i, v in enumerate(views)
        ]

    last = max((v.last_epoch for v in views), default=0)
    x_range = (0.5, last + 0.5) if last else None
    return {
        "accuracy": line_chart("accuracy", "Validation accuracy by epoch", overlay("val_accuracy"), _pct_tick,
                               "accuracy", x_range=x_range),
        "loss": line_chart("loss", "Validation loss by epoch", overlay("val_loss"), _loss_tick, "loss",
                           x_range=x_range),
        "params": line_chart("params", "Parameter count by epoch", overlay("params", step=True), _params_tick,
                             "parameters", x_range=x_range, height=200),
    }


# ---- HTML ---------------------------------------------------------------------------------------

CSS = """
:root { --fg: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #ffffff; --card: #f9fafb; }
* { box-sizing: border-box; }
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0 auto; padding: 24px; max-width: 1040px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub, .note, footer { color: var(--muted); }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 150px; }
.card .v { font-size: 20px; font-weight: 600; } .card .k { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; white-space: nowrap; }
td.text { white-space: normal; }
th { font-weight: 600; font-size: 12px; color: var(--muted); }
td.n { text-align: right; }
.stage { display: inline-block; padding: 0 6px; border-radius: 4px; font-size: 12px; color: #111827; }
.legend { display: flex; flex-wrap: wrap; gap: 12px; font-size: 12px; color: var(--muted); margin: 4px 0; }
.legend i { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 4px; vertical-align: -2px; }
svg.chart { display: block; width: 100%; height: auto; }
svg.chart .grid { stroke: var(--line); } svg.chart .axis, svg.chart .tickmark { stroke: #9ca3af; }
svg.chart text { font: 11px system-ui, sans-serif; fill: var(--muted); }
svg.chart .lane-bg { fill: #f3f4f6; }
ol.story { padding-left: 20px; } ol.story li { margin: 2px 0; }
.rejected { color: #b91c1c; } .applied { color: #047857; }
details { margin: 8px 0; } summary { cursor: pointer; }
code { font-size: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: list[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        *body,
        "<footer><p>Generated by <code>esper report</code> from the run's event log. Self-contained: "
        "no scripts, nothing loaded from the network.</p></footer>",
        "</body>",
        "</html>",
        "",
    ])


def _stage_chip(stage: str | None) -> str:
    if not stage:
        return ""
    color = STAGE_COLORS.get(stage, "#e5e7eb")
    return f'<span class="stage" style="background:{color}">{_e(stage)}</span>'


def _legend() -> str:
    items = "".join(f'<span><i style="background:{c}"></i>{_e(s)}</span>' for s, c in STAGE_COLORS.items())
    return f'<div class="legend">{items}<span>dashed line: fossilized (green) / culled (red)</span></div>'


def _series_legend(series: Sequence[tuple[str, str]]) -> str:
    items = "".join(f'<span><i style="background:{color}"></i>{_e(label)}</span>' for label, color in series)
    return f'<div class="legend">{items}</div>'


def _card(value: str, key: str) -> str:
    return f'<div class="card"><div class="v">{_e(value)}</div><div class="k">{_e(key)}</div></div>'


def _table(headers: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _td(value: Any, numeric: bool = False, raw: bool = False, wrap: bool = False) -> str:
    cls = ' class="n"' if numeric else (' class="text"' if wrap else "")
    return f"<td{cls}>{value if raw else _e(value)}</td>"


def _growth(summary: dict[str, Any]) -> str:
    host, now = summary.get("host_params"), summary.get("params")
    if not host or now is None:
        return ""
    return "host alone" if now == host else f"{(now - host) / host:+.0%} over the host"


def _built(summary: dict[str, Any]) -> str:
    """The seeds a scratch run built into its host before its first epoch, which no gate judged, where it has any."""
    return f"; {summary['built']} built into the host" if summary.get("built") else ""


def _best_key(summary: dict[str, Any]) -> str:
    epoch = summary.get("best_epoch")
    return "best validation" if epoch is None else f"best validation (epoch {epoch})"


def _has_bits(views: Sequence[RunView]) -> bool:
    """Whether any of the runs measured bits per character (the text task's measure of its loss)."""
    return any(v.summary.get("val_bits_per_char") is not None for v in views)


def _bits_cards(view: RunView) -> list[str]:
    """A text run's losses in bits per character, the measure its task is judged by (none for other tasks)."""
    if not _has_bits([view]):
        return []
    s, final = view.summary, " (final)" if view.status == "finished" else " (latest)"
    return [_card(bits(s.get("val_bits_per_char")), "validation bits per character" + final),
            _card(bits(s.get("test_bits_per_char")), "test bits per character")]


def seed_rows(view: RunView) -> list[str]:
    rows = []
    for s in view.seeds:
        cull = ""
        if s["culled_by"]:
            cull = f"{s['culled_by']}: {s['cull_reason'] or ''}".rstrip(": ")
        rows.append(
            f'<tr data-seed="{_e(s["seed_id"])}">' + "".join([
                _td(s["seed_id"]), _td(s["slot"]), _td(s["blueprint"]), _td(count(s["params"]), True),
                _td(s["germinated_epoch"], True), _td(s["epochs_training"], True), _td(s["epochs_blending"], True),
                _td(s["epochs_embargoed"], True), _td(_stage_chip(s["final_stage"]), raw=True),
                _td(s["ended_epoch"], True), _td(points(s["contribution"]) if s["contribution"] is not None else "", True),
                _td(cull, wrap=True),
            ]) + "</tr>"
        )
    return rows


def decision_rows(view: RunView) -> list[str]:
    rows = []
    for d in view.decisions:
        if d["command"] == "Wait":
            continue
        target = d["seed_id"] or ""
        if d["command"] == "Germinate":
            target = f"{d['blueprint']} → {d['slot']}" + (f" ({d['seed_id']})" if d["seed_id"] else "")
        evidence = json.loads(d["evidence"]) if d.get("evidence") else None
        detail = explain_rejection(d["reason"] or "", evidence) if d["outcome"] == "rejected" else (d["effect"] or "")
        if d["cull_reason"] and d["outcome"] != "rejected":
            detail = f"{detail} ({d['cull_reason']})" if detail else d["cull_reason"]
        rows.append(
            f'<tr data-seq="{d["seq"]}">' + "".join([
                _td(d["epoch"], True), _td(d["controller"]), _td(d["command"]), _td(target),
                f'<td class="{_e(d["outcome"])}">{_e(d["outcome"])}</td>', _td(detail, wrap=True),
            ]) + "</tr>"
        )
    return rows


def blueprint_rows_html(blueprints: list[dict[str, Any]]) -> list[str]:
    rows = []
    for b in blueprints:
        rate = pct(b["fossilization_rate"], 0) if b["fossilization_rate"] is not None else ""
        rows.append(f'<tr data-blueprint="{_e(b["blueprint"])}">' + "".join([
            _td(b["blueprint"]), _td(b["runs"], True), _td(b["germinations"], True), _td(b["fossilized"], True),
            _td(b["culled"], True), _td(b["in_progress"], True), _td(rate, True),
            _td(points(b["mean_contribution"]) if b["mean_contribution"] is not None else "", True),
            _td(count(b["params_added"]), True),
        ]) + "</tr>")
    return rows


def render_run(view: RunView, blueprints: list[dict[str, Any]] | None = None) -> str:
    s = view.summary
    charts = run_charts(view)
    waits = sum(d["command"] == "Wait" for d in view.decisions)
    rejected = sum(d["outcome"] == "rejected" for d in view.decisions)
    planned = f" of {s['epochs_planned']}" if s.get("epochs_planned") else ""
    body = [
        "<header>",
        f"<h1>Run {_e(view.run_id)}</h1>",
        f'<p class="sub">task {_e(s.get("task"))} · controller {_e(s.get("controller"))} · seed {_e(s.get("seed"))}'
        f" · {_e(view.status)} · {_e(s.get('epochs', 0))}{_e(planned)} epochs · {_e(s.get('events', 0))} events</p>",
        "</header>",
        '<section class="cards">',
        _card(pct(s.get("val_accuracy")), "validation accuracy" + (" (final)" if view.status == "finished" else " (latest)")),
        _card(pct(s.get("test_accuracy")), "test accuracy"),
        *_bits_cards(view),
        _card(pct(s.get("best_val_accuracy")), _best_key(s)),
        _card(count(s.get("params")), f"parameters ({_growth(s)})" if _growth(s) else "parameters"),
        _card(f"{s.get('fossilized', 0)} / {s.get('culled', 0)}",
              f"seeds fossilized / culled (of {s.get('germinated', 0)}){_built(s)}"),
        "</section>",
    ]
    if s.get("error"):
        body.append(f'<p class="rejected">Run failed: {_e(s["error"])}</p>')
    body += [
        '<section id="accuracy"><h2>Accuracy</h2>', _legend(), charts["accuracy"], "</section>",
        '<section id="loss"><h2>Loss</h2>',
        _series_legend([("train loss", RUN_COLORS[3]), ("validation loss", RUN_COLORS[0])]), charts["loss"], "</section>",
        '<section id="params"><h2>Parameters</h2>', charts["params"], "</section>",
        '<section id="seeds"><h2>Seeds</h2>',
    ]
    if view.seeds:
        body.append(_table(["seed", "slot", "blueprint", "params", "germinated", "training ep.", "blending ep.",
                            "embargo ep.", "stage", "ended", "contribution", "cull"], seed_rows(view)))
    else:
        body.append('<p class="note">No seed was germinated in this run.</p>')
    body += ["</section>", '<section id="story"><h2>Story</h2><ol class="story">']
    body += [f"<li>{_e(line)}</li>" for line in view.narrative]
    body += ["</ol></section>", '<section id="decisions"><h2>Controller decisions</h2>',
             f'<p class="note">{len(view.decisions)} decisions: {waits} wait, '
             f"{len(view.decisions) - waits - rejected} applied, {rejected} rejected. Waits are not listed.</p>"]
    rows = decision_rows(view)
    if rows:
        body.append(_table(["epoch", "controller", "command", "target", "outcome", "effect or reason"], rows))
    body.append("</section>")
    if blueprints or view.left_out or view.skipped:
        body += ['<section id="blueprints"><h2>Blueprints across this workspace</h2>',
                 '<p class="note">Fossilization rate = fossilized / (fossilized + culled); contribution measured when '
                 "a seed fossilized or was culled; params added = parameters of fossilized seeds. Seeds a scratch run "
                 "built into its host are not counted: no gate judged them.</p>"]
        if blueprints:
            body.append(_table(["blueprint", "runs", "germinated", "fossilized", "culled", "in progress",
                                "fossilization rate", "mean contribution", "params added"],
                               blueprint_rows_html(blueprints)))
        body += [f'<p class="note left-out" data-run="{_e(run)}">Left out: {_e(why)}</p>'
                 for run, why in view.left_out.items()]
        body += [f'<p class="note left-out">Not read: {_e(note)}</p>' for note in view.skipped]
        body.append("</section>")
    return _page(f"Esper report: {view.run_id}", body)


def different_tasks(views: Sequence[RunView]) -> list[str] | None:
    """The tasks of the runs, when there are several: their accuracies and losses measure different things."""
    tasks = sorted({str(v.summary.get("task")) for v in views})
    return tasks if len(tasks) > 1 else None


def render_comparison(views: Sequence[RunView]) -> str:
    charts = comparison_charts(views)
    legend = "".join(
        f'<span><i style="background:{RUN_COLORS[i % len(RUN_COLORS)]}"></i>{_e(v.run_id)}</span>'
        for i, v in enumerate(views)
    )
    with_bits = _has_bits(views)
    rows = []
    for i, v in enumerate(views):
        s = v.summary
        swatch = f'<i style="display:inline-block;width:10px;height:10px;background:{RUN_COLORS[i % len(RUN_COLORS)]}"></i> '
        rows.append(f'<tr data-run="{_e(v.run_id)}">' + "".join([
            _td(swatch + _e(v.run_id), raw=True), _td(s.get("task")), _td(s.get("controller")),
            _td(s.get("seed"), True), _td(v.status), _td(s.get("epochs"), True), _td(pct(s.get("val_accuracy")), True),
            _td(pct(s.get("best_val_accuracy")), True), _td(pct(s.get("test_accuracy")), True),
            *([_td(bits(s.get("val_bits_per_char")), True), _td(bits(s.get("test_bits_per_char")), True)]
              if with_bits else []),
            _td(count(s.get("params")), True),
            _td(f"{s.get('germinated', 0)} / {s.get('fossilized', 0)} / {s.get('culled', 0)}", True),
        ]) + "</tr>")
    body = [
        "<header>", f"<h1>Comparison of {len(views)} runs</h1>",
        f'<p class="sub">{_e(", ".join(v.run_id for v in views))}</p>', "</header>",
        '<section id="runs"><h2>Runs</h2>',
        _table(["run", "task", "controller", "seed", "status", "epochs", "validation", "best validation", "test",
                *(["validation bits/char", "test bits/char"] if with_bits else []), "params",
                "seeds germ. / foss. / culled"], rows),
    ]
    if (tasks := different_tasks(views)) is not None:
        body.append(f'<p class="note">These runs are of different tasks ({_e(", ".join(tasks))}): their curves are '
                    "not comparable.</p>")
    body += [
        "</section>",
        f'<section id="accuracy"><h2>Accuracy</h2><div class="legend">{legend}</div>', charts["accuracy"], "</section>",
        '<section id="loss"><h2>Loss</h2>', charts["loss"], "</section>",
        '<section id="params"><h2>Parameters</h2>', charts["params"], "</section>",
        '<section id="stories"><h2>Stories</h2>',
    ]
    for v in views:
        body.append(f"<details><summary>{_e(v.run_id)}</summary><ol class=\"story\">")
        body += [f"<li>{_e(line)}</li>" for line in v.narrative]
        body.append("</ol></details>")
    body.append("</section>")
    return _page(f"Esper comparison: {', '.join(v.run_id for v in views)}", body)


# ---- terminal and files -------------------------------------------------------------------------


def terminal_summary(view: RunView) -> list[str]:
    s = view.summary
    best = f" (best {pct(s.get('best_val_accuracy'))} at epoch {s.get('best_epoch')})" if s.get("best_epoch") else ""
    growth = f" ({_growth(s)})" if _growth(s) else ""
    lines = [
        f"run {view.run_id}: {view.status}, {plural(s.get('epochs', 0), 'epoch')}, task {s.get('task')}, controller {s.get('controller')}",
        f"  validation accuracy {pct(s.get('val_accuracy'))}{best}, test {pct(s.get('test_accuracy'))}",
        *([f"  bits per character: validation {bits(s.get('val_bits_per_char'))}, test "
           f"{bits(s.get('test_bits_per_char'))}"] if _has_bits([view]) else []),
        f"  params {count(s.get('params'))}{growth}; seeds: {s.get('germinated', 0)} germinated, "
        f"{s.get('fossilized', 0)} fossilized, {s.get('culled', 0)} culled{_built(s)}",
    ]
    if s.get("error"):
        lines.append(f"  failed: {s['error']}")
    return lines


def comparison_summary(views: Sequence[RunView]) -> list[str]:
    width = max(len(v.run_id) for v in views)
    status = max(len(v.status) for v in views)
    with_bits = _has_bits(views)
    head = f"  {'val b/c':>7}  {'test b/c':>8}" if with_bits else ""
    lines = [f"{'run':<{width}}  {'status':<{status}}  {'controller':<10}  {'val':>6}  {'test':>6}{head}  "
             f"{'params':>7}  seeds g/f/c"]
    for v in views:
        s = v.summary
        measured = (f"  {bits(s.get('val_bits_per_char')):>7}  {bits(s.get('test_bits_per_char')):>8}"
                    if with_bits else "")
        lines.append(
            f"{v.run_id:<{width}}  {v.status:<{status}}  {str(s.get('controller')):<10}  "
            f"{pct(s.get('val_accuracy')):>6}  {pct(s.get('test_accuracy')):>6}{measured}  {count(s.get('params')):>7}  "
            f"{s.get('germinated', 0)}/{s.get('fossilized', 0)}/{s.get('culled', 0)}"
        )
    return lines


def write_text(path: Path, text: str) -> Path:
    """Write the report atomically (UTF-8); a path we cannot write is bad input."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
