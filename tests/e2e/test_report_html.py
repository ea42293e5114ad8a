"""--report-html: one self-contained page, an inline SVG chart, every weight in the table."""
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT, nmprune, save

DEMO = ROOT / "models" / "demo.onnx"


def test_html_report(tmp_path):
    page = tmp_path / "r.html"
    nmprune("prune", DEMO, "-o", tmp_path / "o.onnx", "-q", "--report-html", page, check=0)
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    # Self-contained: nothing for a browser to fetch.
    for needle in ("<script", "src=", "href=", "url(", "@import", "<link"):
        assert needle not in html, needle
    svg = re.search(r"<svg.*?</svg>", html, re.S).group(0)
    root = ET.fromstring(svg)                     # well-formed SVG
    bars = root.findall(".//{http://www.w3.org/2000/svg}rect")
    assert len(bars) == 4 * 2 + 1                 # two bars per pruned layer, one band for the skipped one
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert titles[3] == "depthwise.weight: skipped, depthwise convolution"
    assert titles[0].startswith("stem.weight: 2:4, sparsity 50.0%, kept ")
    rows = re.findall(r"<tr(?: class=\"skip\")?><td class=\"num\">", html)
    assert len(rows) == 5
    assert "skipped: depthwise convolution" in html


def test_html_escapes_names(tmp_path):
    name = 'w<script>alert("x")</script>&'
    w = numpy_helper.from_array(np.ones((64, 32), np.float32), name)
    g = helper.make_graph([helper.make_node("MatMul", ["X", name], ["Y"], name="n")], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 32])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    page = tmp_path / "r.html"
    nmprune("prune", save(m, tmp_path / "m.onnx"), "--dry-run", "-q", "--report-html", page, check=0)
    html = page.read_text()
    assert "<script" not in html
    assert "w&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in html


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (apt-get install chromium); `make report-screenshot` renders it")
def test_html_renders_in_chromium(tmp_path):
    page, png = tmp_path / "r.html", tmp_path / "r.png"
    nmprune("prune", DEMO, "-o", tmp_path / "o.onnx", "-q", "--report-html", page, check=0)
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                    f"--screenshot={png}", f"file://{page}"], capture_output=True, timeout=120, check=True)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000   # a drawn page, not a blank one
    from PIL import Image
    import numpy as np
    px = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert px.shape[:2] == (900, 1200)
    ink = (px.sum(axis=2) < 600).mean()         # text, table rules and chart bars
    colour = (np.ptp(px, axis=2) > 60).mean()   # the chart's coloured bars
    assert ink > 0.01 and colour > 0.002, (ink, colour)
