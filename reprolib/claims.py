"""Recording "paper vs. ours" results, and the report built from them.

Each notebook ends a claim with :func:`record` (or :meth:`ClaimLog.record`), which stores the
paper's value, ours and a verdict in ``results/claims.json`` (keyed by claim id, so re-running a
notebook replaces its claims) and returns a :class:`Claim` that displays as a table.
``python -m reprolib report`` turns the file into ``results/REPORT.md``.

Claim ids are ``"<paper>.<name>"``; the prefix groups the report: ``basics``, ``eqnet``,
``anyprec``, ``qts``.
"""
from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .validate import check_int, check_real

__all__ = ["Claim", "ClaimLog", "record", "load_claims", "build_report", "mean_std", "greater_verdict",
           "VERDICTS", "PAPERS"]

VERDICTS = ("holds", "does not hold", "inconclusive")
PAPERS = {
    "basics": "Foundations: uniform quantization and LSQ",
    "eqnet": "EQ-Net: Elastic Quantization Neural Networks (ICCV 2023)",
    "anyprec": "Any-Precision Deep Neural Networks (AAAI 2021)",
    "qts": "Quantization Through Search (ASP-DAC 2023)",
}
CLAIMS_FILE = "claims.json"


def mean_std(values: Sequence[float], digits: int = 1) -> str:
    """Format repeated measurements as ``"mean ± std (n=k)"`` (sample std; a single value alone)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    check_int("digits", digits, low=0)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def greater_verdict(a: Sequence[float], b: Sequence[float], *, alpha: float = 0.05) -> bool | None:
    """Is ``mean(a) > mean(b)`` beyond seed noise? One-sided Welch t-tests at level ``alpha``.

    ``True`` when ``a`` is significantly greater, ``False`` when ``b`` is significantly greater,
    ``None`` (inconclusive) otherwise, or when either side has fewer than two values.
    """
    from scipy.stats import ttest_ind

    check_real("alpha", alpha, low=0, high=1, low_open=True, high_open=True)
    if len(a) < 2 or len(b) < 2:
        return None
    if ttest_ind(a, b, equal_var=False, alternative="greater").pvalue < alpha:
        return True
    if ttest_ind(a, b, equal_var=False, alternative="less").pvalue < alpha:
        return False
    return None


def _verdict(holds: bool | str | None) -> str:
    if holds is True:
        return "holds"
    if holds is False:
        return "does not hold"
    if holds is None:
        return "inconclusive"
    if holds in VERDICTS:
        return holds
    raise ValueError(f"holds must be True, False, None or one of {VERDICTS}, got {holds!r}")


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{round(v, 2):g}"
    return str(v)


@dataclass
class Claim:
    """One paper-vs-ours comparison. ``paper`` and ``ours`` are single values or mappings from a
    quantity (a table row, e.g. ``"2-bit"``) to its value."""

    claim_id: str
    paper: Any
    ours: Any
    verdict: str
    note: str = ""
    title: str = ""
    source: str = ""
    quick: bool = False
    recorded: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def rows(self) -> list[tuple[str, str, str]]:
        """``(quantity, paper, ours)`` rows of the comparison table."""
        if isinstance(self.paper, Mapping) or isinstance(self.ours, Mapping):
            paper = self.paper if isinstance(self.paper, Mapping) else {}
            ours = self.ours if isinstance(self.ours, Mapping) else {}
            keys = list(dict.fromkeys([*paper, *ours]))
            return [(str(k), _fmt(paper.get(k)), _fmt(ours.get(k))) for k in keys]
        return [(self.title or self.claim_id, _fmt(self.paper), _fmt(self.ours))]

    def markdown(self) -> str:
        lines = ["| quantity | paper | ours |", "|---|---|---|"]
        lines += [f"| {q} | {p} | {o} |" for q, p, o in self.rows()]
        lines.append("")
        lines.append(f"**Verdict: {self.verdict}**" + (" (quick mode: not a real measurement)" if self.quick else ""))
        if self.note:
            lines.append(f"\n{self.note}")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        head = f"**{self.title or self.claim_id}** (`{self.claim_id}`)\n\n"
        return head + self.markdown()

    def __str__(self) -> str:
        rows = "\n".join(f"  {q}: paper {p} | ours {o}" for q, p, o in self.rows())
        return f"{self.claim_id}: {self.verdict}\n{rows}"


def load_claims(results_dir: str | Path = "results") -> dict[str, Claim]:
    """The claims recorded under ``results_dir`` (empty when none were)."""
    path = Path(results_dir) / CLAIMS_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and re-run the notebooks") from err
    return {k: Claim(**v) for k, v in raw.items()}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def record(
    claim_id: str,
    *,
    paper: Any,
    ours: Any,
    holds: bool | str | None,
    note: str = "",
    title: str = "",
    results_dir: str | Path = "results",
    source: str = "",
    quick: bool = False,
) -> Claim:
    """Store a paper-vs-ours result in ``results_dir/claims.json`` and return it.

    Args:
        claim_id: ``"<paper>.<name>"``, the paper one of :data:`PAPERS`.
        paper, ours: the paper's value and ours (numbers, strings such as ``mean_std(...)``, or
            mappings from a quantity to a value, one table row each).
        holds: ``True`` (holds), ``False`` (does not hold), ``None`` (inconclusive), or the
            verdict as a string.
        note: how it was measured, and why the verdict.
        source: the notebook that measured it; ``quick``: measured in quick (CI) mode.
    """
    if not isinstance(claim_id, str):
        raise TypeError(f"claim_id must be a str like 'eqnet.wdr', got {claim_id!r} ({type(claim_id).__name__})")
    prefix = claim_id.split(".", 1)[0]
    if "." not in claim_id or prefix not in PAPERS:
        raise ValueError(f"claim_id must look like '<paper>.<name>' with <paper> one of {sorted(PAPERS)}, "
                         f"got {claim_id!r}")
    claim = Claim(claim_id, paper, ours, _verdict(holds), note, title, source, bool(quick))
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    claims = {k: asdict(v) for k, v in load_claims(results).items()}
    claims[claim_id] = asdict(claim)
    _write_json(results / CLAIMS_FILE, claims)
    return claim


@dataclass
class ClaimLog:
    """A notebook's handle on :func:`record`: holds its ``results_dir``, ``source`` and ``quick``."""

    results_dir: str | Path = "results"
    source: str = ""
    quick: bool = False

    def record(self, claim_id: str, *, paper: Any, ours: Any, holds: bool | str | None,
               note: str = "", title: str = "") -> Claim:
        return record(claim_id, paper=paper, ours=ours, holds=holds, note=note, title=title,
                      results_dir=self.results_dir, source=self.source, quick=self.quick)


# One line per paper above its results: what it proposes.
_INTROS = {
    "basics": "The uniform quantizer trained with LSQ's learned step size (Esser et al., ICLR 2020), the "
              "baseline the three papers build on.",
    "eqnet": "Xu et al. train one weight-shared supernet whose bit-width, granularity and symmetry switch at "
             "runtime, helped by Weight Distribution Regularization (WDR) and Group Progressive Guidance (GPG), "
             "and search mixed precision in it with an accuracy predictor (CQAP) and a genetic algorithm.",
    "anyprec": "Yu et al. store weights once as 8-bit codes and run at any lower bit-width by dropping least "
               "significant bits, with one BatchNorm per bit-width and recursive distillation.",
    "qts": "Lu et al. let every weight choose its value from a small finite set through learned logits, "
           "trained by reparameterized deterministic hard sampling (RDHS) or stochastic gradient transfer (SGT).",
}
_PLURAL = {"holds": "hold", "does not hold": "do not hold", "inconclusive": "inconclusive"}


def _cell_text(value: Any) -> str:
    """A value as one markdown table cell; a mapping gives one ``quantity: value`` line per item."""
    if isinstance(value, Mapping):
        text = "<br>".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    else:
        text = _fmt(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _counts(claims: Sequence[Claim]) -> str:
    parts = []
    for v in VERDICTS:
        n = sum(c.verdict == v for c in claims)
        if n:
            parts.append(f"{n} {v if n == 1 else _PLURAL[v]}")
    return f"{len(claims)} claim{'s' if len(claims) != 1 else ''}: " + ", ".join(parts)


def _locate(claims: Sequence[Claim], results: Path, notebooks: Path) -> dict[str, tuple[int, str | None]]:
    """``{claim id: (position of its cell, cell id)}``, read from the executed copy of the claim's
    notebook in ``results`` or else the committed one (their cell ids are the same)."""
    from .export import cell_order, claim_cells

    found: dict[str, tuple[int, str | None]] = {}
    for source in sorted({c.source for c in claims if c.source}):
        path = next((p for p in (results / f"{source}.ipynb", notebooks / f"{source}.ipynb") if p.exists()), None)
        if path is None:
            continue
        ids = [c.claim_id for c in claims if c.source == source]
        order = cell_order(path)
        for claim_id, cell in claim_cells(path, ids).items():
            found[claim_id] = (order[cell], cell)
    return found


def build_report(results_dir: str | Path = "results", *, notebooks_dir: str | Path | None = None) -> Path:
    """Write ``results_dir/REPORT.md``, a paper's results section made of the recorded claims.

    Per paper: a line on what it proposes, its headline figures (``results_dir/figures/<notebook>.png``
    where present), a table of its claims (paper, ours, verdict, where it was measured), then each
    claim's note (how it was measured, why the verdict). Claims follow their notebooks' reading
    order. Each links to its notebook (``notebooks_dir``, by default ``notebooks/`` beside
    ``results_dir``) and, when ``results_dir/html/<notebook>.html`` exists, to the cell that
    measured it in that export (``#cell-id=<cell id>``, nbconvert's anchors). Nothing in it
    depends on when it was built.
    """
    results = Path(results_dir)
    notebooks = Path(notebooks_dir) if notebooks_dir is not None else results.resolve().parent / "notebooks"
    claims = list(load_claims(results).values())
    out = ["# Results: paper vs. ours", ""]
    if not claims:
        out.append("No claims recorded yet: run `make reproduce`.")
    else:
        out += ["Every claim of the papers that a notebook measures: the paper's value, ours and a verdict, "
                "*holds*, *does not hold* or *inconclusive* (the difference is within our seed-to-seed "
                "spread). Each claim links to the notebook that measured it and, in the notebook's HTML "
                "export, to the cell.", "", f"**{_counts(claims)}.**"]
        if any(c.quick for c in claims):
            out += ["", "> Some claims were measured in quick mode (CI): their numbers are not a reproduction."]
    located = _locate(claims, results, notebooks) if claims else {}

    def links(c: Claim) -> str:
        if not c.source:
            return "—"
        parts = []
        notebook = notebooks / f"{c.source}.ipynb"
        parts.append(f"[{c.source}]({Path(os.path.relpath(notebook, results)).as_posix()})"
                     if notebook.exists() else f"`{c.source}`")
        cell = located.get(c.claim_id, (0, None))[1]
        if cell and (results / "html" / f"{c.source}.html").exists():
            parts.append(f"[cell](html/{c.source}.html#cell-id={cell})")
        return " · ".join(parts)

    groups = {prefix: [c for c in claims if c.claim_id.split(".", 1)[0] == prefix] for prefix in PAPERS}
    groups["other"] = [c for c in claims if c.claim_id.split(".", 1)[0] not in PAPERS]
    for prefix, group in groups.items():
        if not group:
            continue
        group.sort(key=lambda c: (c.source, located.get(c.claim_id, (1 << 30, None))[0], c.claim_id))
        out += ["", f"## {PAPERS.get(prefix, 'Other claims')}", ""]
        out.append(" ".join(filter(None, [_INTROS.get(prefix, ""), f"{_counts(group)}."])))
        for source in dict.fromkeys(c.source for c in group if c.source):
            if (results / "figures" / f"{source}.png").exists():
                out += ["", f"![Headline figure of {source}](figures/{source}.png)", "",
                        f"*The headline figure of `{source}`.*"]
        out += ["", "| claim | paper | ours | verdict | measured in |", "|---|---|---|---|---|"]
        for c in group:
            verdict = f"**{c.verdict}**" + (" (quick)" if c.quick else "")
            out.append(f"| {_cell_text(c.title or c.claim_id)} | {_cell_text(c.paper)} | {_cell_text(c.ours)} "
                       f"| {verdict} | {links(c)} |")
        # How each was measured and why the verdict: the notes, in the order of the table.
        for c in group:
            note = " ".join(c.note.split()) if c.note else "No note recorded."
            out += ["", f"**{c.title or c.claim_id}** (`{c.claim_id}`). {note}"]
    path = results / "REPORT.md"
    results.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return path
