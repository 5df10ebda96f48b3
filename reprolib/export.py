"""What ``python -m reprolib reproduce`` and ``report`` write beside the claims, from executed
notebooks: HTML exports, headline figures, and the cell that measured each claim.

* :func:`export_html`: ``results/html/<notebook>.html`` through nbconvert (the ``lab`` template,
  whose cells carry the anchors ``#cell-id=<nbformat cell id>``).
* :func:`extract_headline_figure`: the first PNG output of the cell tagged ``headline-figure``
  (one per notebook, the figure that best shows its main claim) as ``results/figures/<notebook>.png``;
  the README shows these.
* :func:`claim_cells`: for each claim id, the id of the cell that recorded it (the cell whose
  source names it, else the one whose output shows it), so that the report can link to it.
"""
from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["HEADLINE_TAG", "export_html", "headline_png", "extract_headline_figure", "ran_quick",
           "headline_source", "claim_cells", "cell_order"]

HEADLINE_TAG = "headline-figure"


def _read(notebook: Path | Any):
    import nbformat

    return nbformat.read(notebook, as_version=4) if isinstance(notebook, (str, Path)) else notebook


def export_html(notebook: Path, html_dir: Path) -> Path:
    """Write ``html_dir/<notebook stem>.html`` (outputs included, nothing re-executed) and return it."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(_read(notebook))
    html_dir.mkdir(parents=True, exist_ok=True)
    out = html_dir / f"{Path(notebook).stem}.html"
    out.write_text(body, encoding="utf-8")
    return out


def headline_png(notebook: Path | Any) -> bytes | None:
    """The first ``image/png`` output of the first cell tagged ``headline-figure``, or ``None``."""
    for cell in _read(notebook).cells:
        if cell.cell_type != "code" or HEADLINE_TAG not in cell.metadata.get("tags", []):
            continue
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                return base64.b64decode("".join(png) if isinstance(png, list) else png)
    return None


def extract_headline_figure(notebook: Path, figures_dir: Path) -> Path | None:
    """Write the notebook's headline figure to ``figures_dir/<notebook stem>.png``; ``None`` if it
    has none (no tagged cell, or the cell has no PNG output yet)."""
    png = headline_png(notebook)
    if png is None:
        return None
    figures_dir.mkdir(parents=True, exist_ok=True)
    out = figures_dir / f"{Path(notebook).stem}.png"
    if not out.exists() or out.read_bytes() != png:  # unchanged figures keep their timestamps
        out.write_bytes(png)
    return out


def ran_quick(notebook: Path | Any) -> bool:
    """Was this executed copy run in quick mode (papermill injected ``quick=True``)?"""
    params = _read(notebook).metadata.get("papermill", {}).get("parameters", {})
    return params.get("quick") is True


def headline_source(name: str, results_dir: Path, notebooks_dir: Path) -> Path | None:
    """Where to take notebook ``name``'s headline figure from: the most recently executed
    default-mode copy, ``results_dir/<name>.ipynb`` or the committed ``notebooks_dir/<name>.ipynb``
    (which carries the outputs of its default run). Quick-mode copies are never used."""
    candidates = [p for p in (results_dir / f"{name}.ipynb", notebooks_dir / f"{name}.ipynb")
                  if p.exists() and not ran_quick(p)]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def _text_of(output: Any) -> str:
    if "text" in output:
        return "".join(output["text"])
    return "".join("".join(v) if isinstance(v, list) else str(v)
                   for k, v in output.get("data", {}).items() if k.startswith("text/"))


def claim_cells(notebook: Path | Any, claim_ids: Iterable[str]) -> dict[str, str]:
    """``{claim id: cell id}`` for the claims recorded in ``notebook``.

    A claim's cell is the first code cell whose source has the id as a string literal
    (``nb.claims.record("anyprec.storage", ...)``); failing that, the first whose output shows it
    (a recorded claim displays as a table headed by its id). Claims found in neither are left out,
    as are cells without an nbformat id.
    """
    cells = [c for c in _read(notebook).cells if c.cell_type == "code" and c.get("id")]
    found = {}
    for claim_id in claim_ids:
        literal = re.compile(r"""(["'])""" + re.escape(claim_id) + r"\1")
        hit = next((c for c in cells if literal.search(c.source)), None)
        if hit is None:
            hit = next((c for c in cells if any(f"`{claim_id}`" in _text_of(o) for o in c.get("outputs", []))), None)
        if hit is not None:
            found[claim_id] = hit.id
    return found


def cell_order(notebook: Path | Any) -> dict[str, int]:
    """``{cell id: position}``: the notebook's reading order."""
    return {c.id: i for i, c in enumerate(_read(notebook).cells) if c.get("id")}
