"""HTML reports render in a real browser (headless Chromium): non-blank, no console errors."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium not installed (scripts/setup.d/30-chromium.sh)")


def render(page: Path, tmp: Path) -> tuple[np.ndarray, list[str]]:
    """Screenshot of the page and the console messages Chromium logged while loading it."""
    shot = tmp / (page.stem + ".png")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--window-size=1000,1400",
             f"--screenshot={shot}", page.as_uri()],
            check=False, capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    console = [line for line in proc.stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]
    return pixels, console


def assert_renders(page: Path, tmp: Path) -> None:
    pixels, console = render(page, tmp)
    assert console == [], console
    not_white = (pixels < 240).any(axis=2).mean()
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert not_white > 0.02 and colours > 20, (not_white, colours)  # text, tables and plots drawn


def test_checker_catches_blank_pages_and_script_errors(tmp_path):
    """The check itself can fail: a blank page and a page with a script error are caught."""
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><body></body></html>")
    pixels, console = render(blank, tmp_path)
    assert (pixels < 240).any(axis=2).mean() == 0 and console == []
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><html><body><p>x</p><script>undefinedFunction()</script></body></html>")
    assert any("undefinedFunction" in line for line in render(broken, tmp_path)[1])


def test_bench_report_renders(keras_paths, tmp_path):
    page = tmp_path / "bench.html"
    proc = run_cli("bench", keras_paths["onnx"], keras_paths["tflite"], "--runs", "20", "--profile", "--html", page)
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert "Latency per configuration" in text and "Per-op time" in text
    assert not re.search(r"""(src|href)=["']https?://""", text)  # self-contained
    assert_renders(page, tmp_path)


def test_compare_reports_render(keras_paths, tmp_path):
    page = tmp_path / "compare.html"
    proc = run_cli("compare", keras_paths["onnx"], keras_paths["tflite"], "--random", "4", "--html", page)
    assert proc.returncode == 0, proc.stderr
    assert "largest errors" in page.read_text() and "within the tolerance" in page.read_text()
    assert_renders(page, tmp_path)
    page = tmp_path / "layers.html"
    proc = run_cli("compare", keras_paths["onnx"], keras_paths["onnx"], "--layerwise", "--html", page)
    assert proc.returncode == 0, proc.stderr
    assert_renders(page, tmp_path)


def test_ship_report_with_quantization_sensitivity_renders(keras_paths, tmp_path):
    dist = tmp_path / "dist"
    proc = run_cli("ship", keras_paths["onnx"], "-o", dist, "--targets", "onnx", "--mode", "static", "--runs", "3")
    assert proc.returncode == 0, proc.stderr
    text = (dist / "report.html").read_text()
    assert "Quantization sensitivity" in text and "onnx-int8" in text
    assert not re.search(r"""(src|href)=["']https?://""", text)
    assert_renders(dist / "report.html", tmp_path)
