"""Figures of the EQ-Net notebooks 01–03: the elastic space, WDR's effect, GPG's convergence."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from ..nn import Precision
from ..train import History

__all__ = [
    "elastic_staircases",
    "channel_steps",
    "accuracy_heatmap",
    "weight_histograms",
    "layer_moments",
    "convergence_curves",
]


def elastic_staircases(
    quantizer, x: torch.Tensor, *, bits: Sequence[int] = (2, 3), granularity: str = "tensor"
) -> Figure:
    """Input vs. quantized output of one elastic quantizer, symmetric vs. asymmetric, one panel
    per bit-width. ``x``: the 1-D inputs to sweep (sorted), in the tensor's units."""
    fig, axes = plt.subplots(1, len(bits), figsize=(4.2 * len(bits), 3.6), sharey=True, squeeze=False)
    saved = quantizer.precision
    for ax, b in zip(axes[0], bits, strict=True):
        for sym, style in ((True, "-"), (False, "--")):
            quantizer.apply_precision(Precision(b, b, granularity, sym, sym))
            with torch.no_grad():
                y = quantizer(x.reshape(1, -1) if quantizer.role == "weight" else x)
            label = "symmetric (β = 0)" if sym else "asymmetric (offset β)"
            ax.plot(x.numpy(), y.flatten().numpy(), style, lw=2, label=label)
        ax.plot(x.numpy(), x.numpy(), ":", color="grey", lw=1, label="identity")
        ax.set(title=f"{b}-bit", xlabel="input value", ylabel="quantized value")
        ax.legend(fontsize=8)
    quantizer.apply_precision(saved)
    fig.tight_layout()
    return fig


def channel_steps(quantizer, *, bits: Sequence[int] = (2, 4, 8)) -> Figure:
    """One layer's learned per-channel weight steps (bars, zoomed on their spread) against its per-tensor step: learned
    (solid) and derived from the per-channel ones by min / mean / max (dotted), per bit-width."""
    fig, axes = plt.subplots(1, len(bits), figsize=(4.2 * len(bits), 3.4), squeeze=False)
    for ax, b in zip(axes[0], bits, strict=True):
        steps = quantizer.step_and_offset(b, "channel")[0].detach().flatten().numpy()
        ax.bar(np.arange(len(steps)), np.sort(steps), color="C0", alpha=0.7, label="per-channel steps (sorted)")
        learned = quantizer.log_step_tensor[str(b)].exp().item()
        ax.axhline(learned, color="C3", lw=2, label="per-tensor, learned")
        derived = (("min", steps.min(), "C2"), ("mean", steps.mean(), "C1"), ("max", steps.max(), "C4"))
        for name, value, color in derived:
            ax.axhline(value, color=color, ls=":", lw=1.5, label=f"per-tensor from {name}")
        ax.set_ylim(0.9 * min(steps.min(), learned), 1.05 * max(steps.max(), learned))  # zoom on the spread
        ax.set(title=f"{b}-bit weight steps", xlabel="output channel (sorted by step)", ylabel="step size s")
    fig.tight_layout()
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8,
               bbox_to_anchor=(0.5, 1.0))
    return fig


def accuracy_heatmap(table: pd.DataFrame, *, title: str = "accuracy (%) of each uniform subnet") -> Figure:
    """Heat map of accuracies: rows bit-widths, columns quantization forms (from ``evaluate_grid``)."""
    fig, ax = plt.subplots(figsize=(1.6 * table.shape[1] + 2, 0.45 * table.shape[0] + 1.8))
    sns.heatmap(table, annot=True, fmt=".1f", cmap="viridis", cbar_kws={"label": "accuracy (%)"}, ax=ax)
    ax.set(title=title, xlabel="granularity / symmetry", ylabel="bit-width (weights = activations)")
    fig.tight_layout()
    return fig


def weight_histograms(weights: Mapping[str, torch.Tensor], *, title: str = "") -> Figure:
    """Overlaid histograms of one layer's latent weights, one per training variant; the legend
    gives each one's kurtosis and skewness."""
    from ..eqnet.losses import kurtosis, skewness

    rows = []
    for name, w in weights.items():
        w = w.detach().flatten()
        label = f"{name}: kurt {kurtosis(w).item():.2f}, skew {skewness(w).item():+.2f}"
        rows += [(label, v) for v in w.tolist()]
    frame = pd.DataFrame(rows, columns=["variant", "weight"])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.histplot(frame, x="weight", hue="variant", stat="density", common_norm=False, element="step", bins=60, ax=ax)
    ax.set(title=title or "latent weights", xlabel="weight value", ylabel="density")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="variant")
    fig.tight_layout()
    return fig


def layer_moments(frame: pd.DataFrame) -> Figure:
    """Kurtosis and skewness of every layer, grouped by variant. ``frame`` columns: ``layer``,
    ``variant``, ``kurtosis``, ``skewness``. Reference lines: 1.8 (uniform) and 3 (normal); 0."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    sns.barplot(frame, x="layer", y="kurtosis", hue="variant", ax=axes[0])
    axes[0].axhline(1.8, color="k", ls=":", lw=1, label="uniform (1.8)")
    axes[0].axhline(3.0, color="grey", ls="--", lw=1, label="normal (3.0)")
    sns.barplot(frame, x="layer", y="skewness", hue="variant", ax=axes[1])
    axes[1].axhline(0.0, color="k", lw=1)
    axes[0].set(title="kurtosis per layer", ylabel="kurtosis (non-excess)")
    axes[1].set(title="skewness per layer", ylabel="skewness")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def convergence_curves(
    histories: Mapping[str, Sequence[History]],
    keys: Mapping[str, str] | None = None,
) -> Figure:
    """Validation accuracy per epoch of each method (mean over seeds, band = min..max), one panel
    per metric ``keys`` (history key → panel title; default 2-bit, 8-bit and the 2/4/8 mean)."""
    keys = keys or {"val_acc_2bit": "2-bit", "val_acc_8bit": "8-bit", "val_acc": "mean of 2/4/8-bit"}
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys.items(), strict=True):
        for i, (name, runs) in enumerate(histories.items()):
            curves = np.array([h[key] for h in runs])  # [seeds, epochs]
            epochs = np.arange(1, curves.shape[1] + 1)
            ax.plot(epochs, curves.mean(0), color=f"C{i}", lw=2, label=f"{name} (n={len(runs)})")
            ax.fill_between(epochs, curves.min(0), curves.max(0), color=f"C{i}", alpha=0.15)
        ax.set(title=label, xlabel="epoch", ylabel="validation accuracy (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
