"""`benchmarks/results.py`'s paired section is titled by what scratch trained for, not by how many rows it has."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import results  # noqa: E402


def row(epochs: int, grown_epochs: int = 25) -> dict:
    return {"epochs": epochs, "grown_epochs": grown_epochs, "runs": 2, "test_accuracy": 95.0, "gflops": 10.0,
            "grown_gflops": 8.0, "diff": -0.5, "se": 0.1, "level_or_ahead": 1}


def test_scratch_for_the_same_epochs_alone_is_growth_seed_by_seed():
    page = "\n".join(results.shorter_scratch_section([row(25)]))
    assert "### Growth against scratch of its architecture, seed by seed" in page and "fewer" not in page
    assert "| 25 | 2 | 95.00 | 10.00 | 125% | -0.50 ± 0.10 | 1 of 2 |" in page


def test_scratch_for_fewer_epochs_alone_is_still_titled_fewer():  # a workspace holding only a shorter budget's runs
    page = "\n".join(results.shorter_scratch_section([row(13)]))
    assert "### Growth against scratch run for fewer epochs" in page


def test_no_pairs_no_section():
    assert results.shorter_scratch_section([]) == []
