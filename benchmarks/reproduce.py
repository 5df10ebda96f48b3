"""``make reproduce``: every notebook in its default mode, end to end.

Question: how long does the whole reproduction take on this machine? Runs
``python -m reprolib reproduce`` (papermill, default parameters) into a temporary results folder
and times it. Target ≤ 45 min on the 2-core reference machine. It takes about half an hour, so
``python -m benchmarks`` runs it only when named: ``python -m benchmarks reproduce``.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._harness import Result

TARGET_MIN = 45.0
ROOT = Path(__file__).resolve().parent.parent


def run(tiny: bool = False, repeats: int | None = None) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "reprolib", "reproduce", "--results", tmp]
        if tiny:
            cmd += ["--quick", "--only", "00"]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True)
        minutes = (time.perf_counter() - t0) / 60
    case = "notebook 00, quick mode" if tiny else "all notebooks, default mode"
    return [Result("reproduce", case, minutes, "min", f"≤ {TARGET_MIN:.0f} min", minutes <= TARGET_MIN)]
