"""Figures of the EQ-Net search notebook (04): predictor scatter, search progress, accuracy vs BitOPs."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

__all__ = ["predictor_scatter", "search_progress", "accuracy_vs_bitops"]


def predictor_scatter(predicted: Sequence[float], measured: Sequence[float], *, pearson: float, kendall: float,
                      title: str = "CQAP on unseen subnets") -> Figure:
    """Predicted vs measured accuracy (%) of configurations the predictor never saw, with ``y = x``
    and the rank correlations in the legend."""
    p, m = np.asarray(predicted), np.asarray(measured)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(m, p, s=18, alpha=0.7, label=f"subnets (n={len(m)}): Pearson {pearson:.2f}, Kendall {kendall:.2f}")
    lo, hi = min(m.min(), p.min()), max(m.max(), p.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = measured")
    ax.set(xlabel="measured accuracy (%)", ylabel="predicted accuracy (%)", title=title)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def search_progress(histories: Mapping[str, Sequence[Mapping[str, float]]],
                    title: str = "Genetic search: predicted accuracy per generation") -> Figure:
    """Best (solid) and population-mean (dashed) fitness per generation, one colour per search
    (``C1``, ``C2``, ... in order, as the searched stars of :func:`accuracy_vs_bitops`).

    Args:
        histories: search label → :attr:`SearchResult.history`.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, history) in enumerate(histories.items()):
        gen = [h["generation"] for h in history]
        color = f"C{i + 1}"
        ax.plot(gen, [h["best"] for h in history], color=color, label=f"{label}: best")
        ax.plot(gen, [h["mean"] for h in history], color=color, ls="--", alpha=0.7, label=f"{label}: mean")
    ax.set(xlabel="generation", ylabel="predicted accuracy (%)", title=title)
    ax.legend(fontsize=8, ncol=2)
    return fig


def accuracy_vs_bitops(uniform: Mapping[str, tuple[float, float]],
                       searched: Mapping[str, Sequence[tuple[float, float]]],
                       *, title: str = "Measured test accuracy vs BitOPs") -> Figure:
    """Uniform subnets (a line through ``label → (BitOPs, accuracy %)``) and searched
    mixed-precision subnets (``label → [(BitOPs, accuracy %), ...]``, one star per search),
    BitOPs of one sample's forward pass on a log axis."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ux, uy = zip(*uniform.values(), strict=True)
    ax.plot(ux, uy, "o-", color="C0", label="uniform")
    for label, (x, y) in uniform.items():
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8, color="C0")
    for i, (label, points) in enumerate(searched.items()):
        x, y = zip(*points, strict=True)
        ax.plot(x, y, "*", ms=12, alpha=0.8, color=f"C{i + 1}", label=f"searched: {label}")
    ax.set_xscale("log")
    ax.set(xlabel="BitOPs per sample (log scale)", ylabel="measured test accuracy (%)", title=title)
    ax.legend(fontsize=8)
    return fig
