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
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def greater_verdict(a: Sequence[float], b: Sequence[float], *, alpha: float = 0.05) -> bool | None:
    """Is ``mean(a) > mean(b)`` beyond seed noise? One-sided Welch t-tests at level ``alpha``.

    ``True`` when ``a`` is significantly greater, ``False`` when ``b`` is significantly greater,
    ``None`` (inconclusive) otherwise, or when either side has fewer than two values.
    """
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        return None
    if ttest_ind(a, b, equal_var=False, alternative="greater").pvalue < alpha:
        return True
    if ttest_ind(a, b, equal_var=False, alternative="less").pvalue < alpha:
        return False
    return None


def _verdict(holds: bool | None | str) -> str:
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
    holds: bool | None | str,
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
    prefix = claim_id.split(".", 1)[0]
    if "." not in claim_id or prefix not in PAPERS:
        raise ValueError(f"claim_id must look like '<paper>.<name>' with <paper> one of {sorted(PAPERS)}, got {claim_id!r}")
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

    def record(self, claim_id: str, *, paper: Any, ours: Any, holds: bool | None | str,
               note: str = "", title: str = "") -> Claim:
        return record(claim_id, paper=paper, ours=ours, holds=holds, note=note, title=title,
                      results_dir=self.results_dir, source=self.source, quick=self.quick)


def build_report(results_dir: str | Path = "results") -> Path:
    """Write ``results_dir/REPORT.md``: a summary, then per paper one table per claim."""
    results = Path(results_dir)
    claims = load_claims(results)
    out = ["# reprolib: paper vs. ours", ""]
    if not claims:
        out.append("No claims recorded yet: run `make reproduce`.")
    else:
        counts = {v: sum(c.verdict == v for c in claims.values()) for v in VERDICTS}
        out.append(", ".join(f"{n} {v}" for v, n in counts.items()) + f" ({len(claims)} claims).")
        if any(c.quick for c in claims.values()):
            out.append("\n> Some claims were measured in quick mode (CI): their numbers are not a reproduction.")
        out += ["", "| claim | paper | verdict | notebook |", "|---|---|---|---|"]
        for c in claims.values():
            out.append(f"| {c.title or c.claim_id} | {c.claim_id.split('.')[0]} | {c.verdict} | {c.source} |")
        for prefix, paper_title in PAPERS.items():
            group = [c for c in claims.values() if c.claim_id.split(".", 1)[0] == prefix]
            if not group:
                continue
            out += ["", f"## {paper_title}"]
            for c in group:
                out += ["", f"### {c.title or c.claim_id}", "", f"`{c.claim_id}`, measured in `{c.source}` on {c.recorded}", "", c.markdown()]
    path = results / "REPORT.md"
    results.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return path
