"""DoReFa weight codes, truncation, and the quantizers of Any-Precision DNNs (Yu et al., AAAI 2021).

Weights (DoReFa-Net, Zhou et al. 2016; Any-Precision Sec. 3.3.2). For a layer's float weight ``W``:

    w' = tanh(W) / (2·max|tanh W|) + 1/2              ∈ [0, 1]                 (Eq. 2)
    c  = round(w' · (2^k − 1))                        ∈ {0, …, 2^k − 1}        (Eq. 3)
    W_q = (2·c / (2^k − 1) − 1) · E,   E = mean|W|    (detached)               (Eq. 4)

so 1 bit gives ``E·sign(W)``. Activations (Sec. 3.3.3): ``clamp(x, 0, 1)``, then
``qfn(x, k) = round(x·(2^k − 1)) / (2^k − 1)``. Rounding passes gradients straight through (STE).

Runtime precision (Sec. 3.2): keep the 8-bit codes and obtain ``k`` bits by dropping the ``8 − k``
least significant bits, ``c_k = c_8 >> (8 − k)`` (:func:`truncate`). The authors' code never does
this: it re-quantizes the float weights at ``k`` bits, whose decision thresholds on ``w'`` differ
(at 2 bits 1/6, 1/2, 5/6 instead of 1/4, 1/2, 3/4). Both are available as *code semantics*:

* ``"requantize"`` (the authors' code): ``c_k = round(w'·(2^k − 1))``;
* ``"truncate"`` (the paper's text): ``c_k = round(w'·255) >> (8 − k)``.

Bit-width 32 means float (as in the paper's candidate list {1, 2, 4, 8, 32}); ``Precision(None)``
and 32 are the same thing here.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..nn import Precision, Quantizer
from ..quant import round_ste
from ..validate import check_floating, check_int, got

__all__ = [
    "FLOAT_BITS",
    "Semantics",
    "SEMANTICS",
    "effective_bits",
    "qfn",
    "normalized_weight",
    "weight_codes",
    "truncate",
    "requantize_codes",
    "convert_codes",
    "dequantize_codes",
    "DoReFaWeightQuantizer",
    "ClampActQuantizer",
    "set_code_semantics",
]

FLOAT_BITS = 32
Semantics = Literal["truncate", "requantize"]
SEMANTICS: tuple[str, ...] = ("truncate", "requantize")


def _check_code_bits(name: str, bits: object, max_bits: int = 8) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"{name} must be an int between 1 and {max_bits}, {got(bits)}")
    if not 1 <= bits <= max_bits:
        raise ValueError(f"{name} must be between 1 and {max_bits}, {got(bits)}")
    return bits


def _check_codes(codes: object, bits: int) -> Tensor:
    """Integer codes of ``bits`` bits: an integer tensor (not bool) with values in ``[0, 2^bits − 1]``.

    One min/max reduction; out-of-range codes would otherwise shift into wrong, finite values.
    """
    if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        what = f"dtype {codes.dtype}" if isinstance(codes, Tensor) else type(codes).__name__
        raise TypeError(f"codes must be an integer tensor (uint8 codes), got {what}")
    if codes.numel():
        lo, hi = torch.aminmax(codes)
        if lo < 0 or hi > 2**bits - 1:
            raise ValueError(f"codes of {bits} bits must lie in [0, {2**bits - 1}], got values in "
                             f"[{int(lo)}, {int(hi)}]")
    return codes


def _check_semantics(semantics: str) -> str:
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    return semantics


def effective_bits(bits: int | None) -> int | None:
    """A bit-width as the quantizers use it: ``None`` for float (``None`` or 32), else the int."""
    return None if bits is None or bits >= FLOAT_BITS else bits


def qfn(x: Tensor, bits: int) -> Tensor:
    """DoReFa's k-bit quantizer of ``x ∈ [0, 1]``: ``round(x·(2^k − 1)) / (2^k − 1)``, STE gradient.

    ``bits`` in 1..31 (32 is float: don't quantize). NaN inputs stay NaN.
    """
    check_int("bits", bits, low=1, high=FLOAT_BITS - 1)
    n = 2**bits - 1
    return round_ste(x * n) / n


def normalized_weight(w: Tensor) -> Tensor:
    """``w' = tanh(W) / (2·max|tanh W|) + 1/2 ∈ [0, 1]`` (Eq. 2), differentiable; ``w``'s shape."""
    t = torch.tanh(w)
    return t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5


@torch.no_grad()
def weight_codes(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """DoReFa integer codes of a float weight (Eq. 2–3) and its scale ``E = mean|W|``.

    Args:
        w: a layer's float weight, e.g. ``[C_out, C_in, k, k]``.
        bits: 1..8.

    Returns:
        ``(codes, E)``: ``uint8`` codes in ``[0, 2^bits − 1]`` with ``w``'s shape, and the scalar
        ``E`` (float, same dtype as ``w``).
    """
    _check_code_bits("bits", bits)
    check_floating("w", w)
    if torch.isnan(w).any():
        raise ValueError("w holds NaN; a code cannot represent it (did training diverge?)")
    codes = torch.round(normalized_weight(w) * (2**bits - 1)).to(torch.uint8)
    return codes, w.abs().mean()


def truncate(codes: Tensor, from_bits: int, to_bits: int) -> Tensor:
    """Drop the ``from_bits − to_bits`` least significant bits: ``codes >> (from − to)``.

    ``truncate(tensor([255, 128, 127, 0]), 8, 2)`` is ``[3, 2, 1, 0]``. Integer codes in, the
    same dtype out.
    """
    _check_code_bits("from_bits", from_bits)
    _check_code_bits("to_bits", to_bits)
    if to_bits > from_bits:
        raise ValueError(f"cannot truncate {from_bits}-bit codes to more bits ({to_bits})")
    return _check_codes(codes, from_bits) >> (from_bits - to_bits)


def requantize_codes(codes: Tensor, from_bits: int, to_bits: int) -> Tensor:
    """The authors' semantics applied to stored codes: ``round(c · (2^to − 1) / (2^from − 1))``.

    Re-quantizes the value ``w' ≈ c / (2^from − 1)`` that the codes represent at ``to_bits`` bits
    (within ``1/(2·(2^from − 1))`` of re-quantizing the float weight). Same dtype out.
    """
    _check_code_bits("from_bits", from_bits)
    _check_code_bits("to_bits", to_bits)
    return _requantize(_check_codes(codes, from_bits), from_bits, to_bits)


def _requantize(codes: Tensor, from_bits: int, to_bits: int) -> Tensor:
    scale = (2**to_bits - 1) / (2**from_bits - 1)
    return torch.round(codes.double() * scale).to(codes.dtype)


def convert_codes(codes: Tensor, from_bits: int, to_bits: int, semantics: Semantics) -> Tensor:
    """``to_bits``-bit codes from ``from_bits``-bit ones, by :func:`truncate` or :func:`requantize_codes`."""
    if _check_semantics(semantics) == "truncate":
        return truncate(codes, from_bits, to_bits)
    return requantize_codes(codes, from_bits, to_bits)


def _convert(codes: Tensor, from_bits: int, to_bits: int, semantics: str) -> Tensor:
    """:func:`convert_codes` without the checks, for codes validated once (a frozen layer's)."""
    if semantics == "truncate":
        return codes >> (from_bits - to_bits)
    return _requantize(codes, from_bits, to_bits)


def dequantize_codes(codes: Tensor, bits: int, E: Tensor | float) -> Tensor:
    """``W_q = (2·c / (2^bits − 1) − 1) · E`` (Eq. 4); float32 (or ``E``'s float dtype) out."""
    _check_code_bits("bits", bits)
    return _dequantize(_check_codes(codes, bits), bits, E)


def _dequantize(codes: Tensor, bits: int, E: Tensor | float) -> Tensor:
    E = torch.as_tensor(E)
    dtype = E.dtype if E.is_floating_point() else torch.float32
    # (2c / n − 1) · E, in place on one new tensor (the same roundings as written out).
    return codes.to(dtype).mul_(2).div_(2**bits - 1).sub_(1).mul_(E.to(codes.device, dtype))


class DoReFaWeightQuantizer(Quantizer):
    """The training-time weight quantizer: ``W_q`` of Eq. 4 from the float weight, STE gradient.

    Args:
        semantics: how a ``k``-bit code is obtained from the float weight: ``"requantize"``
            (the authors' code: round at ``k`` bits) or ``"truncate"`` (round at ``stored_bits``,
            then drop the low bits: what a frozen model computes at runtime).
        stored_bits: the bit-width of the stored codes that truncation starts from (8).

    Precision: ``w_bits`` 1..``stored_bits`` quantizes; ``None`` or 32 passes the float weight.
    A NaN anywhere in the weight makes the whole quantized weight NaN (Eq. 2 divides by
    ``max|tanh W|``), so a diverged layer cannot pass for a quantized one.
    """

    def __init__(self, *, semantics: Semantics = "requantize", stored_bits: int = 8) -> None:
        super().__init__("weight")
        self.semantics = _check_semantics(semantics)
        self.stored_bits = _check_code_bits("stored_bits", stored_bits)
        self.bits: int | None = None
        self.precision = Precision.uniform(None)

    def apply_precision(self, precision: Precision) -> None:
        bits = effective_bits(self.bits_of(precision))
        if bits is not None and (self.semantics == "truncate" and bits > self.stored_bits):
            raise ValueError(f"truncation needs bits <= stored_bits={self.stored_bits}, got {bits}")
        self.bits = bits
        self.precision = precision

    def forward(self, w: Tensor) -> Tensor:
        if self.bits is None:
            return w
        k = self.bits
        w01 = normalized_weight(w)                      # [C_out, C_in, kh, kw] in [0, 1]
        if self.semantics == "requantize":
            code = round_ste(w01 * (2**k - 1))          # c_k = round(w'·(2^k − 1))
        else:                                           # c_k = round(w'·(2^8 − 1)) >> (8 − k)
            shifted = round_ste(w01 * (2**self.stored_bits - 1)) / 2 ** (self.stored_bits - k)
            code = shifted + (torch.floor(shifted) - shifted).detach()  # floor, STE gradient
        E = w.detach().abs().mean()
        return (2 * code / (2**k - 1) - 1) * E          # Eq. 4

    def extra_repr(self) -> str:
        return f"semantics={self.semantics!r}, stored_bits={self.stored_bits}"


class ClampActQuantizer(Quantizer):
    """Activation quantizer (Sec. 3.3.3): ``qfn(clamp(x, 0, 1), k)``; ``None``/32 bits pass ``x``.

    The STE passes gradients inside ``[0, 1]`` (clamp's own gradient is zero outside). NaN
    inputs stay NaN.
    """

    def __init__(self) -> None:
        super().__init__("act")
        self.bits: int | None = None
        self.precision = Precision.uniform(None)

    def apply_precision(self, precision: Precision) -> None:
        self.bits = effective_bits(self.bits_of(precision))
        self.precision = precision

    def forward(self, x: Tensor) -> Tensor:
        if self.bits is None:
            return x
        return qfn(x.clamp(0.0, 1.0), self.bits)        # [N, C, H, W]

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def set_code_semantics(model: torch.nn.Module, semantics: Semantics) -> None:
    """Set how every weight quantizer of ``model`` derives k-bit codes (``"truncate"``/``"requantize"``).

    The one owner of this switch, as :func:`reprolib.nn.set_precision` is of the bit-width.
    """
    _check_semantics(semantics)
    found = [m for m in model.modules() if hasattr(m, "semantics") and isinstance(m, Quantizer)]
    if not found:
        raise ValueError("the model has no Any-Precision weight quantizer")
    for m in found:
        m.semantics = semantics
        m.apply_precision(m.precision)   # re-validate the current bits under the new semantics
