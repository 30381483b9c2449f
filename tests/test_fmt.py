"""How numbers read in stories, reports and summaries (`esper.nissa.fmt`)."""

import pytest

from esper.nissa.fmt import count, number, pct, plural, points


@pytest.mark.parametrize("n, text", [
    (None, "–"), (0, "0"), (999, "999"), (1_000, "1.0k"), (2_304, "2.3k"), (-2_304, "-2.3k"), (999_949, "999.9k"),
    (999_950, "1M"),  # what would round to "1000.0k" reads in the next unit
    (1_250_000, "1.25M"), (999_499_999, "999M"), (999_500_000, "1B"), (1_500_000_000, "1.5B"),
])
def test_a_count_reads_in_the_unit_its_rounded_value_belongs_to(n, text):
    assert count(n) == text


def test_a_signed_count_says_plus_for_growth_only():
    assert (count(2_304, sign=True), count(0, sign=True), count(-5, sign=True)) == ("+2.3k", "0", "-5")


def test_fractions_read_as_percentages_and_points():
    assert (pct(0.8513), pct(0.8513, 0), pct(None)) == ("85.1%", "85%", "–")
    assert (points(0.061), points(-0.031), points(0.0)) == ("+6.1 points", "-3.1 points", "+0.0 points")
    assert (number(0.123456), number(True), number(None), number(3)) == ("0.1235", "True", "None", "3")
    assert (plural(1, "epoch"), plural(0, "epoch"), plural(2, "epoch")) == ("1 epoch", "0 epochs", "2 epochs")
