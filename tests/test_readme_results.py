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
    readme = " ".join(readme.split())  # the prose below, whatever its line breaks
    numbers = set(re.findall(r"\d+(?:\.\d+)? points", readme))
    heuristic, static, scratch = (float(shown[k][0].split(" ± ")[0]) for k in ("heuristic", "static", "scratch"))
    # the frontier's margins: the heuristic under each cap against the best static model of no more parameters
    caps = {int(cap.replace(",", "")): float(cells[-1])
            for cap, cells in table_rows((ROOT / "docs" / "frontier.md").read_text(encoding="utf-8")).items()
            if cap.replace(",", "").isdigit()}
    low, high = min(caps.values()), max(caps.values())
    assert f"caps ({min(caps) // 1000}k–{max(caps) // 1000}k params)" in readme
    assert f"by {low:.1f}–{high:.1f} points" in readme
    text_diff, _ = text_paired_row()
    assert numbers == {f"{round(heuristic - static)} points", f"{scratch - heuristic:.1f} points", f"{high:.1f} points",
                       f"{text_diff:.2f} points"}
    more = float(generated["scratch"][3]) / float(generated["heuristic"][3]) - 1
    assert f"{round(100 * more)}% more compute" in readme


def text_paired_row() -> tuple[float, str]:
    """docs/results-text.md's heuristic − scratch per seed (mean) and scratch's compute as a share of the heuristic's."""
    page = (ROOT / "docs" / "results-text.md").read_text(encoding="utf-8")
    paired = page.split("### Growth against scratch of its architecture, seed by seed")[1].split("\n## ", 1)[0]
    [cells] = [cells for first, cells in table_rows(paired).items() if first.isdigit()]
    return float(cells[4].split(" ± ")[0]), cells[3]


def test_the_readmes_text_claim_is_the_generated_paired_difference_and_compute():
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    claim = re.search(r"On text, growing by depth beats scratch of its architecture by (\d+\.\d+) points; scratch "
                      r"spends (\d+)% more compute", readme)
    assert claim, "the README's results no longer say how growth by depth compares with scratch on text"
    diff, share = text_paired_row()
    assert float(claim.group(1)) == diff > 0
    assert f"{100 + int(claim.group(2))}%" == share


def test_the_readmes_shorter_scratch_claim_is_the_generated_budget_where_scratch_matches_growth():
    """"matches growth in E epochs of N (P% of its compute)": of the budgets docs/results.md trained scratch for,
    E is the one whose difference from growth lies within its standard error, and P its share of growth's compute."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    claim = re.search(r"matches growth in (\d+) epochs of (\d+) \((\d+)% of its compute\)", " ".join(readme.split()))
    assert claim, "the README's results no longer say where scratch matches growth"
    epochs, budget, share = claim.groups()
    generated = (ROOT / "docs" / "results.md").read_text(encoding="utf-8").split("### Growth against scratch run")[1]
    level = {}
    for first, cells in table_rows(generated.split("\n## ", 1)[0]).items():
        if first.isdigit():
            diff, se = (float(x) for x in cells[4].split(" ± "))
            level[first] = (abs(diff) <= se, cells[3])
    assert budget == next(iter(level))  # the first row: scratch for the heuristic's own epochs
    assert [e for e, (matched, _) in level.items() if matched] == [epochs]
    assert level[epochs][1] == f"{share}%"
