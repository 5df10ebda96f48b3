"""Figures of notebook 00: staircases, quantization error, STE and LSQ gradients, training curves."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["staircase", "error_vs_bits", "ste_gradient", "lsq_step_gradient", "training_curves"]


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def staircase(x, outputs: Mapping[str, object], *, title: str = "Quantize → de-quantize") -> Figure:
    """``x̂ = Q(x)`` against ``x`` for each labelled quantizer output, with the identity for reference."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = _np(x)
    ax.plot(xs, xs, color="0.6", lw=1, ls="--", label="identity")
    for label, y in outputs.items():
        ax.step(xs, _np(y), where="mid", lw=1.6, label=label)
    ax.set(xlabel="input x (real value)", ylabel="de-quantized x̂", title=title)
    ax.legend(loc="upper left", fontsize="small")
    return fig


def error_vs_bits(bits: Sequence[int], errors: Mapping[str, Sequence[float]], *,
                  ylabel: str = "RMS error ‖x − x̂‖ / √n") -> Figure:
    """Quantization error (log scale) against bit-width, one line per step-size rule."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, err in errors.items():
        ax.semilogy(bits, err, marker="o", label=label)
    ax.set(xlabel="bit-width b", ylabel=ylabel, title="Quantization error falls ~2× per extra bit")
    ax.set_xticks(list(bits))
    ax.legend(fontsize="small")
    return fig


def ste_gradient(x, xhat, grad, *, qrange_x: tuple[float, float]) -> Figure:
    """Left: the forward staircase; right: the gradient autograd passes back through it (the STE)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = _np(x)
    a.step(xs, _np(xhat), where="mid", color="C0")
    a.set(xlabel="input x", ylabel="x̂ = Q(x)", title="Forward: round and clamp")
    b.plot(xs, _np(grad), color="C3")
    b.set(xlabel="input x", ylabel="∂L/∂x for ∂L/∂x̂ = 1", title="Backward: straight-through estimator",
          ylim=(-0.1, 1.2))
    for ax in (a, b):
        for edge in qrange_x:
            ax.axvline(edge, color="0.5", ls=":", lw=1)
    b.annotate("clamped: gradient 0", xy=(qrange_x[1], 0.05), xytext=(qrange_x[1] * 0.3, 0.35),
               arrowprops={"arrowstyle": "->", "color": "0.4"}, fontsize="small")
    return fig


def lsq_step_gradient(x, grads: Mapping[str, object], *, step: float) -> Figure:
    """∂x̂/∂s against x (LSQ, Esser et al. 2020, Eq. 3), one curve per bit-width."""
    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    xs = _np(x)
    for label, g in grads.items():
        ax.plot(xs, _np(g), lw=1.4, label=label)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set(xlabel=f"input x (step s = {step})", ylabel="∂x̂ / ∂s",
           title="LSQ step-size gradient: sawtooth inside, q_min / q_max outside")
    ax.legend(fontsize="small")
    return fig


def training_curves(histories: Mapping[str, Sequence[Sequence[float]]], *, ylabel: str = "validation accuracy (%)",
                    title: str = "Training curves (mean ± std over seeds)") -> Figure:
    """One line per label: the mean over seeds of a per-epoch metric, with a ±1 std band.

    ``histories[label]`` holds one sequence per seed (e.g. ``history["val_acc"]``).
    """
    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    for label, runs in histories.items():
        arr = np.asarray(runs, dtype=float)
        epochs = np.arange(1, arr.shape[1] + 1)
        mean = arr.mean(0)
        ax.plot(epochs, mean, label=label)
        if arr.shape[0] > 1:
            std = arr.std(0, ddof=1)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    return fig
