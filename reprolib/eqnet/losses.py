"""EQ-Net's training losses: Weight Distribution Regularization and Group Progressive Guidance.

**WDR** (Sec. 3.4, Eq. 4–6). With ``μ``, ``σ`` the mean and (population) standard deviation of a
layer's latent float weights,

    Skew[w] = E[((w − μ)/σ)^3]                                               (Eq. 4)
    Kurt[w] = E[((w − μ)/σ)^4]                                               (Eq. 5)
    L_WDR   = (1/L) Σ_l  λ_s·Skew[w_l]^2 + λ_k·(Kurt[w_l] − K_T)^2           (Eq. 6)

``K_T = 1.8`` is the kurtosis of a uniform distribution: weights spread evenly over the range
survive every bit-width's grid better than a peaked (Gaussian, 3.0) or skewed distribution.

**GPG** (Sec. 3.4, Eq. 7–8). The subnets of one step, ordered highest → random → lowest:

    L_H = CE(y_H, y)
    L_R = λ·T²·KL(softmax(y_H/T) ‖ softmax(y_R/T)) + (1 − λ)·CE(y_R, y)        (Eq. 7)
    L_L = λ·T²·KL(softmax(y_R/T) ‖ softmax(y_L/T)) + (1 − λ)·CE(y_L, y)        (Eq. 8)

each teacher detached. The baselines of Fig. 3 train every subnet on the labels alone:
:func:`hard_label_losses` (CE) and :func:`label_smoothing_losses`.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor

from ..validate import check_floating, check_real

__all__ = [
    "skewness",
    "kurtosis",
    "wdr_loss",
    "gpg_losses",
    "hard_label_losses",
    "label_smoothing_losses",
    "GUIDANCE",
]


def _standardized(w: Tensor) -> Tensor:
    """``(w − μ)/σ`` of the flattened tensor, population ``σ`` (``[numel]``).

    The standardised moments do not depend on the scale of ``w``, so they are computed on
    ``w / 2^e`` with ``2^e ≤ max|w| < 2^(e+1)``: huge weights cannot overflow ``σ²``, tiny ones
    cannot underflow it, and dividing by a power of two is exact, so for ordinary weights the
    result (and its gradient) is bit for bit the unscaled formula's. float16 and bfloat16 tensors
    are promoted to float32 (their 8-bit mantissa would make ``σ`` a guess).
    A constant tensor has no standardised moments: ``σ = 0`` gives NaN, as in scipy, and so do
    NaN or infinite weights.
    """
    check_floating("w", w)
    w = w.flatten()
    if w.numel() < 2:
        raise ValueError(f"moments need at least 2 elements, got a tensor of {w.numel()}")
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()
    _, exponent = torch.frexp(w.detach().abs().amax())              # max|w| = m·2^exponent, m ∈ [0.5, 1)
    w = w / torch.ldexp(torch.ones((), dtype=w.dtype, device=w.device), exponent)
    mu = w.mean()
    sigma = (w - mu).pow(2).mean().sqrt()
    return (w - mu) / sigma


def skewness(w: Tensor) -> Tensor:
    """Population skewness ``E[((w − μ)/σ)^3]`` of the flattened ``w`` (Eq. 4); differentiable.

    Equals ``scipy.stats.skew(w.flatten(), bias=True)``; NaN for a constant ``w`` (no
    spread to standardise by); float32 for 16-bit input.
    """
    return _standardized(w).pow(3).mean()


def kurtosis(w: Tensor) -> Tensor:
    """Non-excess population kurtosis ``E[((w − μ)/σ)^4]`` (Eq. 5); a normal gives 3, a uniform 1.8.

    Equals ``scipy.stats.kurtosis(w.flatten(), fisher=False, bias=True)``; NaN for a constant ``w``.
    """
    return _standardized(w).pow(4).mean()


def wdr_loss(
    weights: Sequence[Tensor],
    kurtosis_target: float = 1.8,
    kurtosis_weight: float = 1.0,
    skewness_weight: float = 1.0,
) -> Tensor:
    """Weight Distribution Regularization (Eq. 6): the mean over ``weights`` of
    ``skewness_weight·Skew² + kurtosis_weight·(Kurt − kurtosis_target)²``.

    Args:
        weights: the latent float weights, one tensor per layer (any shapes).
        kurtosis_target: ``K_T``; 1.8 is a uniform distribution's kurtosis.
        kurtosis_weight, skewness_weight: the terms' weights (the paper writes 1 and 1; the
            authors' code uses 0.015 and 1).

    Returns:
        a non-negative scalar (float32 for 16-bit weights); NaN when a tensor is constant or
        holds NaN/inf, so that :func:`reprolib.train.fit` stops with a clear message.
    """
    if isinstance(weights, Tensor):
        raise TypeError("weights must be a sequence of tensors (one per layer), not one tensor; use [w]")
    weights = list(weights)
    if not weights:
        raise ValueError("wdr_loss needs at least one weight tensor")
    check_real("kurtosis_target", kurtosis_target)
    check_real("kurtosis_weight", kurtosis_weight, low=0)
    check_real("skewness_weight", skewness_weight, low=0)
    terms = [skewness_weight * skewness(w) ** 2 + kurtosis_weight * (kurtosis(w) - kurtosis_target) ** 2
             for w in weights]
    return torch.stack(terms).mean()


def _check_logits(logits: Sequence[Tensor]) -> list[Tensor]:
    logits = list(logits)
    if not logits:
        raise ValueError("need the logits of at least one subnet")
    return logits


def gpg_losses(logits: Sequence[Tensor], target: Tensor, lam: float = 0.5, temperature: float = 1.0) -> list[Tensor]:
    """Group Progressive Guidance (Eq. 7–8): one loss per subnet.

    Args:
        logits: ``[N, K]`` logits of each subnet, ordered from the highest down (H, R, L).
        target: ``[N]`` class labels.
        lam: ``λ``, the weight of the distillation term.
        temperature: ``T``; the KL term is multiplied by ``T²`` (Hinton et al. 2015).

    Returns:
        ``[CE(z_0, y), …, λ·T²·KL(softmax(z_{i−1}/T).detach() ‖ softmax(z_i/T)) + (1−λ)·CE(z_i, y)]``,
        KL averaged over the batch.
    """
    logits = _check_logits(logits)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    losses = [F.cross_entropy(logits[0], target)]
    for prev, cur in pairwise(logits):
        teacher = F.softmax(prev.detach() / temperature, dim=1)  # [N, K]
        kl = F.kl_div(F.log_softmax(cur / temperature, dim=1), teacher, reduction="batchmean")
        losses.append(lam * temperature**2 * kl + (1 - lam) * F.cross_entropy(cur, target))
    return losses


def hard_label_losses(logits: Sequence[Tensor], target: Tensor) -> list[Tensor]:
    """Baseline of Fig. 3: cross-entropy against the labels for every subnet."""
    return [F.cross_entropy(z, target) for z in _check_logits(logits)]


def label_smoothing_losses(logits: Sequence[Tensor], target: Tensor, smoothing: float = 0.1) -> list[Tensor]:
    """Baseline of Fig. 3: cross-entropy against labels smoothed by ``smoothing`` (Szegedy et al.
    2016: target ``(1 − ε)·onehot + ε/K``) for every subnet."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    return [F.cross_entropy(z, target, label_smoothing=smoothing) for z in _check_logits(logits)]


GUIDANCE = {"gpg": gpg_losses, "hard": hard_label_losses, "smooth": label_smoothing_losses}
