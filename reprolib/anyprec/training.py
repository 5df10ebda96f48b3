"""Building and training Any-Precision models (Sec. 3.3.4 and 4.1), and evaluating them per bit-width.

A model is made any-precision in two conversions: :func:`reprolib.nn.quantize_model` with
:class:`AnyPrecisionFactory` (DoReFa weights, clamped activations; first conv and last linear
stay float, as in the paper) and :func:`switchable_bn` (one BN per candidate bit-width).

Training (:class:`AnyPrecisionStep`, one step function for :func:`reprolib.train.fit`): every
batch is forwarded once per candidate bit-width, from the highest down, and the losses summed, so
one optimizer step follows the summed gradients. With the candidates ``b_1 > b_2 > … > b_n``:

    L = CE(y_{b_1}, y) + Σ_{i ≥ 2} L_i                                      (Sec. 3.3.5)
    recursive:  L_i = H(softmax(y_{b_{i−1}}).detach(), y_{b_i})   (each taught by the next higher)
    soft:       L_i = H(softmax(y_{b_1}).detach(),     y_{b_i})   (the highest teaches all)
    hard:       L_i = CE(y_{b_i}, y)

with ``H(p, q) = −Σ_c p_c · log softmax(q)_c`` the soft cross-entropy, averaged over the batch.
A dedicated model is the same loop with a single bit-width.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..nn import QuantConv2d, QuantLinear, quantize_model, set_precision, using_precision
from ..train import evaluate
from .bn import _check_bit_widths, switchable_bn
from .codes import ClampActQuantizer, DoReFaWeightQuantizer, Semantics, _check_semantics

__all__ = [
    "CANDIDATE_BITS",
    "AnyPrecisionFactory",
    "any_precision_model",
    "soft_cross_entropy",
    "AnyPrecisionStep",
    "accuracy_by_bits",
]

CANDIDATE_BITS: tuple[int, ...] = (1, 2, 4, 8, 32)
Distill = Literal["recursive", "soft", "hard"]


@dataclass(frozen=True)
class AnyPrecisionFactory:
    """Builds Any-Precision layers for :func:`reprolib.nn.quantize_model`.

    Args:
        semantics: the weight quantizers' code semantics during training (see
            :class:`DoReFaWeightQuantizer`); the authors train with ``"requantize"``.
    """

    semantics: Semantics = "requantize"

    def __post_init__(self) -> None:
        _check_semantics(self.semantics)

    def __call__(self, name: str, module: nn.Module) -> nn.Module:
        cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
        return cls.from_float(module, DoReFaWeightQuantizer(semantics=self.semantics), ClampActQuantizer())


def any_precision_model(
    model: nn.Module, bit_widths: Sequence[int] = CANDIDATE_BITS, *, semantics: Semantics = "requantize"
) -> nn.Module:
    """Convert a float model in place: DoReFa quantized layers (first and last kept float) and a
    switchable BN per bit-width of ``bit_widths`` (32 = float). Returns ``model``, at its highest
    bit-width."""
    widths = _check_bit_widths(bit_widths)
    quantize_model(model, AnyPrecisionFactory(semantics=semantics))
    switchable_bn(model, widths)
    set_precision(model, max(widths))
    return model


def soft_cross_entropy(logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """``H(p, q) = −Σ_c p_c · log softmax(logits)_c``, averaged over the batch; ``[N, K]`` both."""
    return -(teacher_probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class AnyPrecisionStep:
    """The step function of Any-Precision training for :func:`reprolib.train.fit`.

    Args:
        bit_widths: the candidate bit-widths (32 = float); one forward pass each, highest first.
            A single bit-width trains a dedicated model with plain cross-entropy.
        distill: ``"recursive"`` (each bit-width taught by the next higher; the paper),
            ``"soft"`` (the highest teaches all) or ``"hard"`` (cross-entropy everywhere).

    Returns from a call: ``{"loss": Σ losses, "loss_<b>bit": each}`` (scalars). The model's
    precision is left as it was.
    """

    def __init__(self, bit_widths: Sequence[int] = CANDIDATE_BITS, *, distill: Distill = "recursive") -> None:
        if distill not in ("recursive", "soft", "hard"):
            raise ValueError(f"distill must be 'recursive', 'soft' or 'hard', got {distill!r}")
        self.bit_widths = tuple(sorted(_check_bit_widths(bit_widths), reverse=True))
        self.distill = distill

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        logs: dict[str, Tensor] = {}
        top = prev = None                                   # teachers' probabilities, [N, K]
        for i, b in enumerate(self.bit_widths):
            with using_precision(model, b):
                logits = model(x)                           # [N, K]
            if i == 0 or self.distill == "hard":
                loss = F.cross_entropy(logits, y)
            else:
                loss = soft_cross_entropy(logits, prev if self.distill == "recursive" else top)
            probs = F.softmax(logits.detach(), dim=1)
            top = probs if i == 0 else top
            prev = probs
            logs[f"loss_{b}bit"] = loss
        logs["loss"] = torch.stack(list(logs.values())).sum()
        return logs

    def __repr__(self) -> str:
        return f"AnyPrecisionStep(bit_widths={self.bit_widths}, distill={self.distill!r})"


def accuracy_by_bits(
    model: nn.Module, loader: DataLoader, bits: Iterable[int], device: torch.device | str = "auto"
) -> dict[int, float]:
    """Test accuracy (%) of ``model`` at each bit-width of ``bits``; its precision is restored."""
    out = {}
    for b in bits:
        with using_precision(model, b):
            out[b] = evaluate(model, loader, device)["acc"]
    return out
