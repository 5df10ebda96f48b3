"""Command line: ``python -m reprolib {reproduce,report,bench} ...``.

* ``reproduce [--quick] [--only NAME ...] [--inplace]``: execute the notebooks with papermill
  (default mode unless ``--quick``) into ``results/``, export each executed notebook to
  ``results/html/<name>.html``, extract the headline figures into ``results/figures/<name>.png``,
  then write ``results/REPORT.md``. ``--inplace`` executes the committed notebooks themselves (how
  their outputs are refreshed); the HTML and figures then come from them.
* ``report``: refresh ``results/figures/`` and rebuild ``results/REPORT.md`` from
  ``results/claims.json``, without executing anything.
* ``bench [NAME ...] [--tiny] [--repeats N]``: the speed and memory benchmarks of ``benchmarks/``
  (``python -m benchmarks``), which print a table and write ``results/bench.json``.
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


def notebooks(only: list[str] | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """The notebooks in reading order, optionally only those whose name starts with one of ``only``."""
    found = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
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


def _last_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def reproduce(quick: bool, only: list[str] | None, inplace: bool, results: Path,
              folder: Path = NOTEBOOKS) -> int:
    """Execute, export and report; 0 when every notebook ran, 1 (naming the failures) otherwise."""
    import papermill as pm

    from .export import export_html, extract_headline_figure
    from .notebook import quick_from_env

    folder = folder.resolve()
    # REPROLIB_QUICK=1 makes the notebooks quick on their own: say so, and record it in the copies.
    quick = quick or quick_from_env()
    # Executed in place, the committed notebooks keep their own results_dir parameter.
    results = (folder / DEFAULT_RESULTS).resolve() if inplace else results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("REPROLIB_PROGRESS", "0")  # executed notebooks keep results, not frozen bars
    failed: list[str] = []
    todo = notebooks(only, folder)
    for i, nb in enumerate(todo, 1):
        out = nb if inplace else results / nb.name
        print(f"[{i}/{len(todo)}] {nb.stem} ({'quick' if quick else 'default'} mode) ...", flush=True)
        t0 = time.perf_counter()
        # Inject only what differs from the parameters cell, as a relative path: the executed
        # notebooks (committed ones included, with --inplace) stay free of machine-specific paths.
        parameters = {"quick": True} if quick else {}
        rel = os.path.relpath(results, folder)
        if rel != DEFAULT_RESULTS:
            parameters["results_dir"] = rel
        ok = True
        try:
            pm.execute_notebook(str(nb), str(out), cwd=str(folder), progress_bar=False, parameters=parameters)
        except Exception as err:  # papermill raises PapermillExecutionError with the cell's traceback
            ok = False
            failed.append(f"{nb.stem} ({_last_line(err)})")
            print(f"    FAILED: {nb.stem}: {_last_line(err)}", flush=True)
        if inplace and out.exists():
            strip_execution_metadata(out)
        # The HTML of a failed run too: it shows the traceback in its cell.
        if out.exists():
            try:
                print(f"    html: {export_html(out, results / 'html')}", flush=True)
            except Exception as err:
                failed.append(f"{nb.stem} (HTML export: {_last_line(err)})")
                print(f"    FAILED: {nb.stem}: HTML export: {_last_line(err)}", flush=True)
        if not ok:
            continue
        # Headline figures show default runs only: a quick run leaves results/figures/ alone.
        figure = None if quick else extract_headline_figure(out, results / "figures")
        if figure:
            print(f"    figure: {figure}", flush=True)
        print(f"    done in {time.perf_counter() - t0:.0f} s -> {out}", flush=True)
    report = build_report(results, notebooks_dir=folder)
    print(f"report: {report}")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def report(results: Path, folder: Path = NOTEBOOKS) -> int:
    """Refresh the headline figures from the newest default-mode copy of each notebook (in
    ``results`` or the committed one), then rebuild ``REPORT.md``."""
    from .export import extract_headline_figure, headline_source

    for nb in notebooks(folder=folder):
        source = headline_source(nb.stem, results, folder)
        if source is not None:
            extract_headline_figure(source, results / "figures")
    print(build_report(results, notebooks_dir=folder))
    return 0


def bench(names: list[str], tiny: bool, repeats: int | None, out: Path | None = None) -> int:
    """Run ``python -m benchmarks`` from the source checkout (where ``benchmarks/`` lives)."""
    import subprocess

    if not (ROOT / "benchmarks" / "__main__.py").exists():
        print(f"benchmarks/ is not beside this reprolib ({ROOT}); run from a clone of the repository",
              file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "benchmarks", *names] + (["--tiny"] if tiny else [])
    if repeats is not None:
        cmd += ["--repeats", str(repeats)]
    if out is not None:
        cmd += ["--out", str(out.resolve())]
    return subprocess.run(cmd, cwd=ROOT).returncode


EXAMPLES = """\
examples:
  python -m reprolib reproduce                    every notebook, default mode (about 20 min on 2 CPU cores)
  python -m reprolib reproduce --quick --only 05  notebook 05 in quick (CI) mode
  python -m reprolib reproduce --inplace          refresh the committed notebooks' outputs
  python -m reprolib report                       rebuild results/REPORT.md from results/claims.json
  python -m reprolib bench                        speed/memory ratios against torch and float training
  python -m reprolib bench fake_quantize --tiny   one benchmark at smoke-test size
"""


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m reprolib", formatter_class=fmt, epilog=EXAMPLES,
        description="Reproduce EQ-Net, Any-Precision DNNs and Quantization Through Search from the notebooks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rp = sub.add_parser(
        "reproduce", formatter_class=fmt, help="run the notebooks, export them, write the report",
        description="Execute the notebooks with papermill, in reading order, and write into the results folder:\n"
                    "  <name>.ipynb         the executed copies (not with --inplace)\n"
                    "  html/<name>.html     each executed notebook exported by nbconvert (failed ones too)\n"
                    "  figures/<name>.png   the output of the cell tagged 'headline-figure' (default mode only)\n"
                    "  claims.json          the claims the notebooks recorded\n"
                    "  REPORT.md            the claims as a results section, linked to the cells\n"
                    "A notebook that fails is named, the others still run, and the exit status is 1.\n"
                    "REPROLIB_QUICK=1 in the environment means --quick.")
    rp.add_argument("--quick", action="store_true",
                    help="quick (CI) mode: seconds per notebook, numbers not meaningful")
    rp.add_argument("--only", nargs="+", metavar="NAME", help="only notebooks whose name starts with NAME (e.g. 03 05)")
    rp.add_argument("--inplace", action="store_true",
                    help="execute the committed notebooks in place (refreshes their outputs; results go to "
                         "their results_dir, ../results)")
    rp.add_argument("--results", type=Path, default=ROOT / "results", metavar="DIR",
                    help="results folder (default: results/)")
    rp.add_argument("--notebooks", type=Path, default=NOTEBOOKS, metavar="DIR",
                    help="folder of the NN_name.ipynb notebooks (default: notebooks/)")
    rr = sub.add_parser(
        "report", formatter_class=fmt, help="rebuild results/REPORT.md from results/claims.json",
        description="Rebuild REPORT.md from claims.json without executing anything. The headline figures\n"
                    "(figures/<name>.png) are refreshed first from the newest default-mode copy of each\n"
                    "notebook: the executed one in the results folder or the committed one.")
    rr.add_argument("--results", type=Path, default=ROOT / "results", metavar="DIR",
                    help="results folder (default: results/)")
    rr.add_argument("--notebooks", type=Path, default=NOTEBOOKS, metavar="DIR",
                    help="folder of the notebooks (default: notebooks/)")
    rb = sub.add_parser(
        "bench", formatter_class=fmt, help="speed and memory benchmarks (python -m benchmarks)",
        description="Ratios measured side by side in one process (interleaved repetitions, paired medians),\n"
                    "printed as a table with the machine and thread count, and written to results/bench.json.\n"
                    "Without names: every benchmark but 'reproduce' (which runs all notebooks, ~30 min).")
    rb.add_argument("names", nargs="*", metavar="NAME",
                    help="fake_quantize lsq_step eqnet_step anyprec_switch qts_step ga_search reproduce")
    rb.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds; the figures mean nothing)")
    rb.add_argument("--repeats", type=int, default=None, help="timed repetitions (default: per benchmark)")
    rb.add_argument("--out", type=Path, default=None, metavar="FILE", help="JSON output (default: results/bench.json)")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench(args.names, args.tiny, args.repeats, args.out)
    if args.command == "reproduce":
        return reproduce(args.quick, args.only, args.inplace, args.results, args.notebooks)
    return report(args.results, args.notebooks)


if __name__ == "__main__":
    sys.exit(main())
