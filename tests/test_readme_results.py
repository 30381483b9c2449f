"""Every number in the README's results is one that `benchmarks/results.py` wrote into docs/results.md, or
`benchmarks/frontier.py` into docs/frontier.md."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def table_rows(markdown: str) -> dict[str, list[str]]:
    """First cell → the other cells, for every table row of `markdown` (header and rule rows included); where
    tables share a first cell, the first table's row (docs/results.md: the growth table comes first)."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_the_readmes_results_table_is_the_generated_growth_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    generated = table_rows((ROOT / "docs" / "results.md").read_text(encoding="utf-8"))
    shown = {name.split(" (")[0]: cells for name, cells in table_rows(readme).items() if " (" in name}
    assert set(shown) == {"static", "heuristic", "scratch"}
    for controller, (accuracy, params) in shown.items():
        runs, generated_accuracy, generated_params, *_ = generated[controller]
        assert (accuracy, params) == (generated_accuracy, generated_params)
        assert f"seeds 0–{int(runs) - 1}" in readme
    numbers = set(re.findall(r"\d+(?:\.\d+)? points", readme))
    heuristic, static, scratch = (float(shown[k][0].split(" ± ")[0]) for k in ("heuristic", "static", "scratch"))
    # the frontier's margins: the heuristic under each cap against the best static model of no more parameters
    caps = {int(cap.replace(",", "")): float(cells[-1])
            for cap, cells in table_rows((ROOT / "docs" / "frontier.md").read_text(encoding="utf-8")).items()
            if cap.replace(",", "").isdigit()}
    low, high = min(caps.values()), max(caps.values())
    assert f"caps ({min(caps) // 1000}k–{max(caps) // 1000}k params)" in readme
    assert f"by {low:.1f}–{high:.1f} points" in readme
    assert numbers == {f"{round(heuristic - static)} points", f"{scratch - heuristic:.1f} points", f"{high:.1f} points"}
    more = float(generated["scratch"][3]) / float(generated["heuristic"][3]) - 1
    assert f"{round(100 * more)}% more compute" in readme
