"""Figures of the Any-Precision notebook (05): one function each, returning the ``Figure``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = [
    "accuracy_vs_bits",
    "pre_bn_distributions",
    "candidate_ablation",
    "storage_comparison",
    "runtime_panel",
]

_FLOAT_X = 9.5   # where bit-width 32 (float) sits on a 1..8 axis


def _bit_axis(ax, bits: Sequence[int]) -> None:
    ticks = sorted(set(bits))
    ax.set_xticks([_FLOAT_X if b == 32 else b for b in ticks])
    ax.set_xticklabels(["32\n(float)" if b == 32 else str(b) for b in ticks])
    ax.set_xlabel("runtime bit-width (weights and activations)")


def accuracy_vs_bits(
    curves: Mapping[str, Mapping[int, Sequence[float]]], *, title: str = "Accuracy vs. runtime bit-width",
    ylabel: str = "test accuracy (%)", ylim: tuple[float, float] | None = None,
) -> Figure:
    """One line per method: mean ± std (error bars) of the accuracies measured at each bit-width.

    ``curves[name][bits]`` is a list of accuracies in % (one per seed); bit-width 32 is drawn at
    the right end, labelled float.
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    all_bits: list[int] = []
    for (name, by_bits), marker in zip(curves.items(), "osD^vP*X", strict=False):
        bits = sorted(by_bits)
        all_bits += bits
        x = [_FLOAT_X if b == 32 else b for b in bits]
        mean = [np.mean(by_bits[b]) for b in bits]
        std = [np.std(by_bits[b], ddof=1) if len(by_bits[b]) > 1 else 0.0 for b in bits]
        ax.errorbar(x, mean, yerr=std, marker=marker, capsize=3, label=name, alpha=0.85)
    _bit_axis(ax, all_bits)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.legend(fontsize=9, loc="lower right")
    return fig


def pre_bn_distributions(acts: Mapping[int, np.ndarray], *, layer: str, channel: int) -> Figure:
    """Left: the pre-BN activations of one channel at each bit-width (histograms); right: their
    per-channel mean and standard deviation, one point per channel and bit-width."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for bits, x in acts.items():
        a.hist(np.asarray(x)[:, channel].ravel(), bins=40, histtype="step", density=True, lw=1.6,
               label=f"{bits}-bit" if bits != 32 else "float")
        flat = np.asarray(x).transpose(1, 0, 2, 3).reshape(np.asarray(x).shape[1], -1)
        b.scatter(flat.mean(1), flat.std(1), s=14, label=f"{bits}-bit" if bits != 32 else "float", alpha=0.8)
    a.set_xlabel(f"pre-BN activation of {layer}, channel {channel}")
    a.set_ylabel("density")
    a.set_title("One channel's input to BatchNorm")
    a.legend()
    b.set_xlabel("channel mean")
    b.set_ylabel("channel standard deviation")
    b.set_title("Every channel's BN statistics")
    b.legend()
    return fig


def candidate_ablation(table: pd.DataFrame, *, title: str = "Candidate bit-width lists") -> Figure:
    """Heat map: rows are the training candidate lists, columns the runtime bit-widths, cells the
    mean test accuracy (%); trained bit-widths are outlined."""
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(table) + 1.6))
    im = ax.imshow(table.values, cmap="viridis", aspect="auto", vmin=max(0.0, np.nanmin(table.values)), vmax=100)
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index])
    for i, row in enumerate(table.index):
        trained = {int(b) for b in str(row).strip("{}").split(",")}
        for j, col in enumerate(table.columns):
            v = table.values[i, j]
            dark = im.norm(v) < 0.5   # white text on the dark half of the colour map
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="white" if dark else "black", fontsize=9)
            if int(col) in trained:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xlabel("runtime bit-width")
    ax.set_ylabel("trained on")
    ax.set_title(title + " (red: trained bit-widths)")
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    return fig


def storage_comparison(sizes: Mapping[str, float]) -> Figure:
    """Horizontal bars of storage in kB."""
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(sizes) + 1.2))
    names = list(sizes)
    vals = [sizes[n] / 1000 for n in names]
    ax.barh(names, vals, color=[plt.cm.tab10(i % 10) for i in range(len(names))])
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.1f} kB", va="center")
    ax.set_xlim(0, 1.18 * max(vals))
    ax.set_xlabel("storage (kB)")
    ax.set_title("What has to be stored to run at 1, 2, 4 and 8 bits")
    ax.invert_yaxis()
    return fig


def runtime_panel(view, images: np.ndarray, labels: Sequence[int], *, layer: str) -> Figure:
    """The runtime slider's figure: a grid of example predictions (red: wrong) and the histogram of
    one layer's weight codes at the view's bit-width, titled with the test accuracy.

    ``view`` is a :class:`reprolib.anyprec.RuntimeView`; ``images`` ``[n, H, W]``.
    """
    n = len(images)
    cols = min(8, n)
    rows = -(-n // cols)
    fig = plt.figure(figsize=(12, 2.0 * rows + 0.6))
    grid = fig.add_gridspec(rows, cols + 5)
    for i in range(n):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ax.imshow(images[i], cmap="gray_r")
        pred, true = int(view.predictions[i]), int(labels[i])
        ax.set_title(f"pred {pred}", color="black" if pred == true else "red", fontsize=9)
        ax.axis("off")
    hx = fig.add_subplot(grid[:, cols + 1:])
    levels = 2**view.bits
    counts = np.bincount(np.asarray(view.codes, dtype=np.int64), minlength=levels)
    hx.bar(range(levels), counts, width=0.9 if levels <= 16 else 1.0, color="tab:blue", edgecolor="none")
    hx.set_xlabel(f"weight code at {view.bits} bits (0..{levels - 1})")
    hx.set_ylabel("number of weights")
    hx.set_title(f"{layer}: weight codes")
    fig.suptitle(f"{view.bits}-bit runtime: test accuracy {view.accuracy:.1f} %", fontweight="bold")
    return fig
