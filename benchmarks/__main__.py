"""``python -m benchmarks [NAME ...] [--tiny] [--repeats N] [--out FILE]``: run, print, save.

Prints the machine, then one table row per measured case (value, target, met), and writes every
row with the machine description to ``results/bench.json``. ``reproduce`` (about half an hour)
runs only when named.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from ._harness import machine

BENCHMARKS = ("fake_quantize", "lsq_step", "eqnet_step", "anyprec_switch", "qts_step", "ga_search", "reproduce")
DEFAULT = BENCHMARKS[:-1]
ROOT = Path(__file__).resolve().parent.parent


def table(rows: list[dict]) -> str:
    """A Markdown table of result rows (also what the README's Performance section shows)."""
    lines = ["| benchmark | case | measured | target | met | detail |", "|---|---|---|---|---|---|"]
    for r in rows:
        value = f"{r['value']:.2f} {r['unit']}" if r["unit"] != "×" else f"{r['value']:.2f}×"
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        lines.append(f"| {r['benchmark']} | {r['case']} | {value} | {r['target']} | {met} | {r['detail']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all but reproduce): {', '.join(BENCHMARKS)}")
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds; the figures mean nothing)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default: per benchmark)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench.json", help="JSON output file")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(DEFAULT)
    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        print(f"[{name}] running...", flush=True)
        results = importlib.import_module(f"benchmarks.{name}").run(tiny=args.tiny, repeats=args.repeats)
        rows += [r.row() for r in results]
        print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "tiny": args.tiny, "results": rows}, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
