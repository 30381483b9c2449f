"""A chart written as a file of its own (`esper.nissa.charts.svg_file`) is an SVG document any viewer draws."""

import math
import signal
import xml.etree.ElementTree as ET

from esper.nissa.charts import Series, line_chart, nice_ticks, svg_file

SVG = "{http://www.w3.org/2000/svg}"


def test_a_chart_file_is_namespaced_svg_with_its_styles_and_every_point():
    chart = line_chart("acc", "Accuracy & params", [Series("static", [(1000, 80.0), (5000, 92.5)], "#444444")],
                       y_format=lambda v: f"{v:.1f} %", x_label="parameters")
    root = ET.fromstring(svg_file(chart).encode())
    assert root.tag == f"{SVG}svg" and root.get("viewBox") == "0 0 960 260"
    assert ".grid" in root.find(f"{SVG}style").text
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert titles[0] == "Accuracy & params" and any("92.5 %" in t for t in titles[1:])


def test_values_that_differ_by_a_few_units_in_the_last_place_get_ticks_and_a_chart():
    # A user's loss near 1e15 that moved by a quarter: a tick step under the floats' resolution would never advance;
    # one near the floats' limit (1.8e308): a step past it overflowed, and the loop ran on.
    def hung(signum, frame):
        raise TimeoutError("nice_ticks did not return")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        found = [(lo, hi, nice_ticks(lo, hi)) for lo, hi in [(1e15, 1e15 + 0.25), (3.4e12, 3.4e12 + 0.001),
                                                             (-1e15 - 0.25, -1e15), (-1e308, 1e308),
                                                             (0.0, 1.7e308), (1.7e308, 1.7e308),
                                                             (1.79e308, 1.79e308), (-1.79e308, -1.79e308)]]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    for lo, hi, ticks in found:
        assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 8
        assert all(math.isfinite(tick) for tick in ticks)
    chart = line_chart("loss", "Loss", [Series("train", [(1, 1e15), (2, 1e15 + 0.25)], "#444444")],
                       y_format=lambda v: f"{v:.3g}")
    assert chart.count("<circle") == 2
    chart = line_chart("loss", "Loss", [Series("train", [(1, -1e308), (2, 1e308)], "#444444")],
                       y_format=lambda v: f"{v:.3g}")
    assert chart.count("<circle") == 2 and "nan" not in chart
