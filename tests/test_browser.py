"""The Any-Precision notebook's bit-width slider, in a real browser.

Headless Debian chromium, driven by Playwright, opens ``05_any_precision`` in JupyterLab (its own
server on a free localhost port, quick mode through ``REPROLIB_QUICK=1``), runs every cell, moves
the runtime bit-width slider one step with the keyboard and checks that the slider's readout, the
redrawn figure, the accuracy line under the slider and the figure's title all change: the
widget round trip (browser → kernel → Output widget → browser) works with the pinned
jupyterlab / ipywidgets. The notebook runs from a copy in a temporary folder, so its claims and
any other output land there; the only file written into the repository is the screenshot
``results/browser_05_any_precision.png``.

Without chromium the test is skipped, except in CI (``CI`` set), where it fails.
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import sys
from pathlib import Path

import pytest
from browser_helpers import (
    CHROMIUM_ARGS,
    JS_CELL_ERRORS,
    JS_NOTEBOOK_READY,
    JS_RUN_ALL,
    JS_RUN_FINISHED,
    JupyterLab,
    chromium_path,
)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "05_any_precision"
SCREENSHOT = ROOT / "results" / f"browser_{NOTEBOOK}.png"
pytestmark = [pytest.mark.browser, pytest.mark.notebooks]

SECOND = 1000  # Playwright counts milliseconds

# The slider's figure: the <img> inside the Output widget that sits beside the slider in one VBox.
JS_SLIDER_FIGURE = """(previous) => {
    const box = Array.from(document.querySelectorAll('.jp-Notebook .widget-vbox'))
        .find(b => b.querySelector('.widget-hslider'));
    const img = box && box.querySelector('.widget-output img');
    if (!img || !img.complete || !img.src) return false;
    return img.src !== previous ? img.src : false;
}"""


def _chromium_or_skip() -> str:
    path = chromium_path()
    if path is None:
        reason = "Debian's chromium is not installed (make chromium, or apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the browser test must run")
        pytest.skip(reason)
    return path


def _copy_notebooks(dst: Path) -> Path:
    """The notebooks folder, copied; the tested notebook without its stored outputs, so that the
    only slider and figure on the page are the ones this run creates."""
    import nbformat

    shutil.copytree(ROOT / "notebooks", dst, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    path = dst / f"{NOTEBOOK}.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    return dst


def _png(src: str):
    """The pixels ``[H, W, channels]`` of a ``data:image/png;base64,...`` URL."""
    import numpy as np
    from PIL import Image

    assert src.startswith("data:image/png;base64,"), src[:60]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def _percent(text: str) -> float:
    """The accuracy in the slider's text line "<k>-bit runtime: test accuracy 78.6 %"."""
    return float(text.rsplit("accuracy", 1)[1].strip(" %"))


def test_anyprec_bit_width_slider_redraws(tmp_path):
    chromium = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    work = _copy_notebooks(tmp_path / "notebooks")
    env = {"REPROLIB_QUICK": "1", "REPROLIB_PROGRESS": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    lab = JupyterLab(work, tmp_path / "jupyter", env=env)
    with lab, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=60 * SECOND)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(60 * SECOND)
        try:
            page.goto(lab.url(f"lab/tree/{NOTEBOOK}.ipynb"), wait_until="domcontentloaded", timeout=120 * SECOND)
            # The notebook is open and its kernel started and idle.
            page.wait_for_function(JS_NOTEBOOK_READY, arg=f"{NOTEBOOK}.ipynb", timeout=180 * SECOND, polling=500)
            page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # room for the figure

            page.evaluate(JS_RUN_ALL)
            page.wait_for_function(JS_RUN_FINISHED, timeout=900 * SECOND, polling=1000)
            assert page.evaluate(JS_CELL_ERRORS) == []
            assert page.evaluate("() => window.__reprolibRun") == {"done": True, "ok": True, "error": None}
            assert (tmp_path / "results" / "claims.json").exists(), "the notebook's claims went elsewhere"

            slider = page.locator(".jp-Notebook .widget-hslider")
            assert slider.count() == 1
            readout = slider.locator(".widget-readout")
            accuracy = page.locator(".jp-Notebook .reprolib-runtime-accuracy")
            first = page.wait_for_function(JS_SLIDER_FIGURE, arg="", timeout=120 * SECOND).json_value()
            bits = int(readout.inner_text())
            accuracy_before = accuracy.inner_text()
            assert accuracy_before.startswith(f"{bits}-bit runtime: test accuracy"), accuracy_before
            assert 1 <= bits <= 8, "the slider spans 1..8 bits"
            key, expected = ("ArrowLeft", bits - 1) if bits > 1 else ("ArrowRight", bits + 1)

            handle = slider.locator(".noUi-handle")
            handle.scroll_into_view_if_needed()
            handle.focus()
            page.keyboard.press(key)
            page.wait_for_function("([el, old]) => el.textContent.trim() !== old",
                                   arg=[readout.element_handle(), str(bits)], timeout=30 * SECOND)
            assert int(readout.inner_text()) == expected
            # The kernel re-evaluates the model at the new bit-width; the Output widget shows a new figure.
            second = page.wait_for_function(JS_SLIDER_FIGURE, arg=first, timeout=180 * SECOND).json_value()
            accuracy_after = accuracy.inner_text()
            assert accuracy_after.startswith(f"{expected}-bit runtime: test accuracy"), accuracy_after
            assert _percent(accuracy_after) != _percent(accuracy_before), "the displayed accuracy did not change"

            before, after = _png(first), _png(second)
            assert before.shape == after.shape
            title = slice(0, max(1, before.shape[0] // 12))  # the suptitle: "<k>-bit runtime: test accuracy ..."
            assert (before[title] != after[title]).any(), "the figure's title (bit-width, accuracy) did not change"
            assert (before[title.stop:] != after[title.stop:]).any(), "the panels below the title did not change"

            # The picture: the slider's cell at the top of the window, its code, slider and figure.
            page.locator(".jp-Notebook .jp-CodeCell", has=page.locator(".widget-hslider")).evaluate(
                "el => el.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        except Exception:
            try:
                page.screenshot(path=str(tmp_path / "failure.png"))
                print(f"screenshot of the failure: {tmp_path / 'failure.png'}")
            except Exception as err:  # the page may be gone; the log still tells
                print(f"no screenshot of the failure: {err}")
            print(f"JupyterLab log:\n{lab.log()}")
            raise
        finally:
            browser.close()
    assert not lab._own_kernel_pids(), "a kernel outlived the JupyterLab server"


def test_without_chromium_skip_locally_fail_in_ci(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "chromium_path", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        _chromium_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        _chromium_or_skip()
