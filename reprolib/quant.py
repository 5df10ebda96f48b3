"""Fake-quantization primitives shared by all three papers.

Uniform affine quantization (EQ-Net Eq. 1, and the LSQ paper of Esser et al., 2020):

    q  = clamp(round(x / s) + z, q_min, q_max)        (integer code)
    x̂  = (q − z) · s                                  (de-quantized value)

with ``s`` the step size, ``z`` the zero point and ``[q_min, q_max]`` the integer range of
``b`` bits (:func:`qrange`). ``round`` is round-half-to-even, as in ``torch.round`` and in
torch's own fake-quant kernels, so :func:`fake_quantize` equals
``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine`` bit for bit.

Gradients (the straight-through estimator, Bengio et al. 2013, and LSQ):

    ∂x̂/∂x = 1 inside the range, 0 where the code was clamped
    ∂x̂/∂s = round(x/s) − x/s inside,  q_min − z below,  q_max − z above
    ∂x̂/∂z = 0 inside,  −s outside

The step gradient is *unscaled*: LSQ multiplies it by ``g = 1/sqrt(numel · q_max)``, which the
caller applies with :func:`scale_grad` (see :class:`reprolib.nn.LSQQuantizer`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "qrange",
    "fake_quantize",
    "round_ste",
    "scale_grad",
    "lsq_grad_scale",
    "lsq_init_step",
]


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    """Integer range of a ``bits``-bit code.

    Signed: ``[−2^(b−1), 2^(b−1) − 1]`` (weights); unsigned: ``[0, 2^b − 1]`` (activations after
    a ReLU). EQ-Net Sec. 3.1.

    >>> qrange(4), qrange(4, signed=False)
    ((-8, 7), (0, 15))
    """
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, got {bits!r} ({type(bits).__name__})")
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be between 1 and 32, got {bits}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``grad`` over the dimensions that were broadcast to reach its shape from ``shape``."""
    if grad.shape == shape:
        return grad
    return grad.sum_to_size(shape) if len(shape) else grad.sum()


class _FakeQuantize(torch.autograd.Function):
    """Fake quantization with the STE for ``x`` and LSQ/LSQ+ gradients for ``step``/``zero_point``.

    NaN inputs stay NaN (a NaN code is neither below nor above the range), so a diverged
    network is never silently turned into finite garbage.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
        xs = x / step
        code = torch.round(xs) + zero_point
        below = code < qmin
        above = code > qmax
        out = (code.clamp(qmin, qmax) - zero_point) * step
        ctx.qmin, ctx.qmax = qmin, qmax
        ctx.save_for_backward(xs, step, zero_point, below, above)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        xs, step, zero_point, below, above = ctx.saved_tensors
        outside = below | above
        grad_x = grad_step = grad_zp = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out.masked_fill(outside, 0.0)
        if ctx.needs_input_grad[1]:
            # ∂x̂/∂s: round(x/s) − x/s inside, q_min − z below, q_max − z above.
            d_step = torch.where(
                below,
                ctx.qmin - zero_point,
                torch.where(above, ctx.qmax - zero_point, torch.round(xs) - xs),
            )
            grad_step = _sum_to(grad_out * d_step, step.shape)
        if ctx.needs_input_grad[2]:
            # ∂x̂/∂z = −s where clamped, 0 inside.
            grad_zp = _sum_to((grad_out * -step).masked_fill(~outside, 0.0), zero_point.shape)
        return grad_x, grad_step, grad_zp, None, None


def fake_quantize(
    x: Tensor,
    step: Tensor | float,
    zero_point: Tensor | float = 0.0,
    bits: int = 8,
    signed: bool = True,
) -> Tensor:
    """Quantize and de-quantize ``x``: ``(clamp(round(x/s) + z, q_min, q_max) − z) · s``.

    Args:
        x: any shape, e.g. a conv weight ``[C_out, C_in, k, k]`` or activations ``[N, C, H, W]``.
        step: positive step size ``s``; a scalar (per tensor) or broadcastable to ``x``, e.g.
            ``[C_out, 1, 1, 1]`` (per output channel).
        zero_point: ``z``, broadcastable like ``step``; may be a learned real number (LSQ+).
        bits, signed: the integer range, see :func:`qrange`.

    Returns:
        ``x̂`` with ``x``'s shape. Gradients: straight-through for ``x`` inside the range and
        zero outside; LSQ's (unscaled) for ``step``; ``−s`` outside / 0 inside for ``zero_point``.

    Example:
        >>> fake_quantize(torch.tensor([0.26, -3.0]), 0.5, bits=2)   # range [-2, 1] · 0.5
        tensor([ 0.5000, -1.0000])
    """
    qmin, qmax = qrange(bits, signed)
    step = torch.as_tensor(step, dtype=x.dtype, device=x.device)
    zero_point = torch.as_tensor(zero_point, dtype=x.dtype, device=x.device)
    return _FakeQuantize.apply(x, step, zero_point, qmin, qmax)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` in the forward pass, identity gradient in the backward pass (the STE)."""
    return _RoundSTE.apply(x)


def scale_grad(x: Tensor, g: float) -> Tensor:
    """Return ``x`` unchanged, but multiply the gradient flowing back into it by ``g``.

    LSQ's trick (Esser et al. 2020, Sec. 2.2): ``(x − g·x).detach() + g·x``.
    """
    scaled = x * g
    return (x - scaled).detach() + scaled


def lsq_grad_scale(numel: int, bits: int, signed: bool = True) -> float:
    """LSQ's step-size gradient scale ``g = 1 / sqrt(numel · q_max)``.

    ``numel`` is the number of elements one step size quantizes (a weight tensor's size, or the
    per-sample feature count for activations).
    """
    _, qmax = qrange(bits, signed)
    return 1.0 / math.sqrt(max(numel, 1) * max(qmax, 1))


def lsq_init_step(x: Tensor, bits: int, signed: bool = True, dim: int | None = None) -> Tensor:
    """LSQ's initial step size ``2 · mean|x| / sqrt(q_max)``.

    With ``dim=None`` one scalar; with ``dim=0`` one per slice along dimension 0, shaped to
    broadcast against ``x`` (``[C, 1, 1, 1]`` for a conv weight).
    """
    _, qmax = qrange(bits, signed)
    if dim is None:
        mean_abs = x.detach().abs().mean()
    else:
        reduce = [d for d in range(x.dim()) if d != dim]
        mean_abs = x.detach().abs().mean(dim=reduce, keepdim=True)
    return (2 * mean_abs / math.sqrt(max(qmax, 1))).clamp_min(1e-8)
