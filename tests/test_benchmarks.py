"""Every benchmark runs once at its tiny size, through the command line, so none can rot.

No timing is asserted: the figures of a tiny run mean nothing, and speed targets are checked by
running ``python -m benchmarks`` by hand (see the README's Performance section).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import BENCHMARKS, DEFAULT, table

ROOT = Path(__file__).resolve().parent.parent


def run_cli(tmp_path: Path, *names: str) -> dict:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *names, "--tiny", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "machine: " in proc.stdout and "| benchmark |" in proc.stdout
    return json.loads(out.read_text())


def check_rows(rows: list[dict], names) -> None:
    assert {r["benchmark"] for r in rows} == set(names)
    for r in rows:
        assert set(r) == {"benchmark", "case", "value", "unit", "target", "met", "detail"}
        assert math.isfinite(r["value"]) and r["value"] >= 0
        assert r["unit"] in ("×", "ms", "s", "min")
        assert isinstance(r["met"], bool)


def test_every_default_benchmark_runs_tiny(tmp_path):
    report = run_cli(tmp_path)
    assert report["tiny"] is True
    assert {"cpu", "cores", "torch_threads", "torch"} <= set(report["machine"])
    check_rows(report["results"], DEFAULT)


@pytest.mark.notebooks
def test_reproduce_benchmark_runs_tiny(tmp_path):
    check_rows(run_cli(tmp_path, "reproduce")["results"], ["reproduce"])


def test_default_leaves_out_only_the_long_reproduce_run():
    assert set(BENCHMARKS) - set(DEFAULT) == {"reproduce"}


def test_table_marks_missed_targets():
    rows = [{"benchmark": "b", "case": "c", "value": 1.5, "unit": "×", "target": "≤ 1.1×", "met": False, "detail": ""}]
    assert "| b | c | 1.50× | ≤ 1.1× | **no** |" in table(rows)


def test_reprolib_cli_runs_the_benchmarks(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "reprolib", "bench", "ga_search", "--tiny", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_rows(json.loads(out.read_text())["results"], ["ga_search"])


def test_unknown_benchmark_is_rejected(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "nonsense", "--tiny", "--out", str(tmp_path / "x.json")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "nonsense" in proc.stderr
