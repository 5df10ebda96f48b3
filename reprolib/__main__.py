"""Command line: ``python -m reprolib {reproduce,report} ...``.

* ``reproduce [--quick] [--only NAME ...] [--inplace]``: execute the notebooks with papermill
  (default mode unless ``--quick``) into ``results/``, then write ``results/REPORT.md``.
  ``--inplace`` executes the committed notebooks themselves (how their outputs are refreshed).
* ``report``: rebuild ``results/REPORT.md`` from ``results/claims.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .claims import build_report

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
DEFAULT_RESULTS = "../results"  # the parameters cell's default, relative to notebooks/


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The notebooks in reading order, optionally only those whose name starts with one of ``only``."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return found
    chosen = [p for p in found if any(p.stem.startswith(o) or p.stem == o for o in only)]
    unknown = [o for o in only if not any(p.stem.startswith(o) for p in found)]
    if unknown:
        raise SystemExit(f"no notebook matches {unknown}; notebooks: {[p.stem for p in found]}")
    return chosen


def strip_execution_metadata(path: Path) -> None:
    """Drop papermill's run records (absolute paths, timestamps, durations) from a notebook.

    The committed notebooks keep their outputs and execution counts, nothing machine-specific.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


def reproduce(quick: bool, only: list[str] | None, inplace: bool, results: Path) -> int:
    import papermill as pm

    # Executed in place, the committed notebooks keep their own results_dir parameter.
    results = (NOTEBOOKS / DEFAULT_RESULTS).resolve() if inplace else results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("REPROLIB_PROGRESS", "0")  # executed notebooks keep results, not frozen bars
    failed: list[str] = []
    todo = notebooks(only)
    for i, nb in enumerate(todo, 1):
        out = nb if inplace else results / nb.name
        print(f"[{i}/{len(todo)}] {nb.stem} ({'quick' if quick else 'default'} mode) ...", flush=True)
        t0 = time.perf_counter()
        # Inject only what differs from the parameters cell, as a relative path: the executed
        # notebooks (committed ones included, with --inplace) stay free of machine-specific paths.
        parameters = {"quick": True} if quick else {}
        rel = os.path.relpath(results, NOTEBOOKS)
        if rel != DEFAULT_RESULTS:
            parameters["results_dir"] = rel
        try:
            pm.execute_notebook(str(nb), str(out), cwd=str(NOTEBOOKS), progress_bar=False, parameters=parameters)
        except Exception as err:  # papermill raises PapermillExecutionError with the cell's traceback
            failed.append(nb.stem)
            print(f"    FAILED: {nb.stem}: {str(err).strip().splitlines()[-1] if str(err).strip() else err}", flush=True)
            continue
        if inplace:
            strip_execution_metadata(out)
        print(f"    done in {time.perf_counter() - t0:.0f} s -> {out}", flush=True)
    report = build_report(results)
    print(f"report: {report}")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reprolib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("reproduce", help="execute the notebooks and write results/REPORT.md")
    rp.add_argument("--quick", action="store_true", help="quick (CI) mode: seconds per notebook")
    rp.add_argument("--only", nargs="+", metavar="NAME", help="only notebooks whose name starts with NAME")
    rp.add_argument("--inplace", action="store_true", help="execute the committed notebooks in place")
    rp.add_argument("--results", type=Path, default=ROOT / "results", help="results folder (default: results/)")
    rr = sub.add_parser("report", help="rebuild results/REPORT.md from results/claims.json")
    rr.add_argument("--results", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        return reproduce(args.quick, args.only, args.inplace, args.results)
    print(build_report(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
