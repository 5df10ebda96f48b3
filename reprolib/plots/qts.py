"""Figures of notebook 06 (Quantization Through Search): curves, value usage, settling choices."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

__all__ = ["search_curves", "value_usage", "choice_settling"]


def search_curves(curves: Mapping[str, Sequence[Sequence[float]]], *, ylabel: str = "validation accuracy (%)",
                  title: str = "Training curves (mean over seeds, band: min–max)"):
    """One line per configuration: the mean over seeds of a per-epoch metric, a min–max band.

    Args:
        curves: label → one sequence per seed of per-epoch values (e.g. ``History["val_acc"]``).
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, runs in curves.items():
        values = np.asarray(runs, dtype=float)                 # [seeds, epochs]
        epochs = np.arange(1, values.shape[1] + 1)
        line, = ax.plot(epochs, values.mean(0), label=label, lw=1.8,
                        ls="--" if "SGT" in label else "-")
        ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.legend(ncol=2, fontsize="small", loc="lower right")
    return fig


def value_usage(fractions: Mapping[str, object], *, ncols: int = 3,
                title: str = "Which values the layers chose"):
    """Stacked bars: for each model (panel) and searchable layer (bar), the fraction of each value.

    Args:
        fractions: model label → :func:`reprolib.qts.value_fractions` of that model (layers × values).
        ncols: panels per row.
    """
    n = len(fractions)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, min(n, ncols), figsize=(4.2 * min(n, ncols), 3.2 * nrows),
                             sharey=True, squeeze=False)
    for ax, (label, frame) in zip(axes.flat, fractions.items(), strict=True):
        values = list(frame.columns)
        colors = plt.get_cmap("coolwarm")(np.linspace(0, 1, len(values)))
        bottom = np.zeros(len(frame))
        for value, color in zip(values, colors, strict=True):
            share = frame[value].to_numpy()
            ax.bar(range(len(frame)), share, bottom=bottom, color=color, label=f"{value:g}", edgecolor="white")
            bottom += share
        ax.set_xticks(range(len(frame)), [f"layer {i + 1}" for i in range(len(frame))], fontsize="small")
        ax.set_title(label, fontsize="medium")
        handles, labels = ax.get_legend_handles_labels()  # largest value on top, as in the bars
        ax.legend(handles[::-1], labels[::-1], title="value", fontsize="x-small", title_fontsize="x-small",
                  loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("fraction of the weights")
    fig.suptitle(title, fontweight="bold")
    fig.tight_layout()
    return fig


def choice_settling(changes: Mapping[str, object], *, title: str = "How the choices settle"):
    """Left: the share of weights whose chosen value changed during each epoch (all searchable
    layers pooled), log scale; right: the temperature ``τ`` of each RDHS run's schedule.

    Args:
        changes: label → :meth:`reprolib.qts.ChoiceTracker.frame` of one run.
    """
    fig, (ax, ax_tau) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]})
    for label, frame in changes.items():
        per_epoch = frame.groupby("epoch")[["changed", "numel"]].sum()
        share = 100 * per_epoch["changed"] / per_epoch["numel"]
        epochs = per_epoch.index + 1
        line, = ax.plot(epochs, share.clip(lower=1e-3), marker="o", ms=3, label=label)
        if (frame["method"] == "rdhs").any():  # SGT has no temperature
            tau = frame.groupby("epoch")["tau"].first()
            ax_tau.plot(tau.index + 1, tau, color=line.get_color(), marker="o", ms=3, label=label)
    ax.set(yscale="log", xlabel="epoch", ylabel="weights that changed value (%)", title=title)
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize="small")
    ax_tau.set(xlabel="epoch", ylabel="temperature τ", title="τ during the epoch", ylim=(0, None))
    fig.tight_layout()
    return fig
