"""A chart written as a file of its own (`esper.nissa.charts.svg_file`) is an SVG document any viewer draws."""

import xml.etree.ElementTree as ET

from esper.nissa.charts import Series, line_chart, svg_file

SVG = "{http://www.w3.org/2000/svg}"


def test_a_chart_file_is_namespaced_svg_with_its_styles_and_every_point():
    chart = line_chart("acc", "Accuracy & params", [Series("static", [(1000, 80.0), (5000, 92.5)], "#444444")],
                       y_format=lambda v: f"{v:.1f} %", x_label="parameters")
    root = ET.fromstring(svg_file(chart).encode())
    assert root.tag == f"{SVG}svg" and root.get("viewBox") == "0 0 960 260"
    assert ".grid" in root.find(f"{SVG}style").text
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert titles[0] == "Accuracy & params" and any("92.5 %" in t for t in titles[1:])
