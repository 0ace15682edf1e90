"""report.html opened in a real headless browser (Chromium from Debian's packages): it renders,
and every embedded figure is decoded and drawn as the PNG it embeds."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from orchestrator.report import write_report
from orchestrator.store import RunStore
from tests.support.synthetic import N, kl_run, write_speed_phase
from tests.support.synthetic import bench_run as _run
from tests.support.synthetic import target as _target
from tests.support.synthetic import write_outcomes as _write

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("chromium-headless-shell")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (scripts/test.sh installs it)")


def _screenshot(page: Path, out: Path, size: tuple[int, int]) -> np.ndarray:
    import matplotlib.image as mpimg

    assert CHROMIUM is not None
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
         f"--window-size={size[0]},{size[1]}", f"--screenshot={out}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return np.asarray(mpimg.imread(out))[..., :3]


def test_report_html_renders_every_figure_in_a_real_browser(tmp_path: Path) -> None:
    run = _run(
        tmp_path, [_target("bf16", "M", "BF16"), _target("int4", "M", "GPTQ-Int4"), _target("q8", "M", "Q8_0")],
        {"mmlu": N, "ceval": N},
    )  # fmt: skip
    store = RunStore(run)
    ref = [i % 3 != 0 for i in range(N)]
    for task in ("mmlu", "ceval"):
        _write(store, "bf16", task, ref)
        _write(store, "int4", task, [r and i % 5 != 0 for i, r in enumerate(ref)])
        _write(store, "q8", task, [r or i % 7 == 0 for i, r in enumerate(ref)])
    store.close()
    for name, tpot in (("bf16", 20.0), ("int4", 8.0), ("q8", 12.0)):
        write_speed_phase(run, name, tpot)
    write_report(run)
    page = run / "report.html"
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace("http://h:1", "")  # self-contained
    images = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert len(images) >= 4  # forest, accuracy vs speed, flips, subjects
    # The whole page: rendered, not blank.
    shot = _screenshot(page, tmp_path / "page.png", (1400, 3000))
    assert (shot < 0.9).any(axis=2).mean() > 0.02
    # Each figure alone at its natural size: what the browser drew is the PNG the page embeds.
    import matplotlib.image as mpimg

    for i, data in enumerate(images):
        png = np.asarray(mpimg.imread(io.BytesIO(base64.b64decode(data))))[..., :3]
        h, w = png.shape[:2]
        single = tmp_path / f"fig{i}.html"
        single.write_text(f"<html><body style='margin:0'><img src='data:image/png;base64,{data}'></body></html>")
        drawn = _screenshot(single, tmp_path / f"fig{i}.png", (w + 40, h + 40))[:h, :w]
        assert np.abs(drawn - png).mean() < 0.02, f"figure {i} was not drawn as embedded"
        assert (png < 0.9).any(axis=2).mean() > 0.01  # and it is a figure, not a blank image


def test_the_divergence_plot_is_drawn_in_a_real_browser(tmp_path: Path) -> None:

    run = kl_run(tmp_path, {"f16": 0.0, "q8": 0.05, "q4": 0.6})
    write_report(run)
    text = (run / "report.html").read_text()
    section = text.split("Per-sample divergence from the reference", 1)[1]
    data = re.search(r"src='data:image/png;base64,([^']+)'", section)
    assert data is not None
    import matplotlib.image as mpimg

    png = np.asarray(mpimg.imread(io.BytesIO(base64.b64decode(data.group(1)))))[..., :3]
    h, w = png.shape[:2]
    single = tmp_path / "kl.html"
    single.write_text(f"<html><body style='margin:0'><img src='data:image/png;base64,{data.group(1)}'></body></html>")
    drawn = _screenshot(single, tmp_path / "kl.png", (w + 40, h + 40))[:h, :w]
    assert np.abs(drawn - png).mean() < 0.02 and (png < 0.9).any(axis=2).mean() > 0.01
