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


def _dot_to(a: Tensor, b: Tensor, shape: torch.Size) -> Tensor:
    """``(a · b)`` summed down to ``shape``; per tensor a dot product, without a temporary."""
    if math.prod(shape) == 1:
        return torch.dot(a.reshape(-1), b.reshape(-1)).reshape(shape)
    return _sum_to(a * b, shape)


class _FakeQuantize(torch.autograd.Function):
    """Fake quantization with the STE for ``x`` and LSQ/LSQ+ gradients for ``step``/``zero_point``.

    Written for speed with float arithmetic only (boolean masks and ``torch.where`` cost several
    times a multiply on the CPU). The forward pass keeps one tensor beside ``x``, the rounded
    code before clamping ``r = round(x/s) + z``; the backward pass rebuilds everything from it:

        q = clamp(r, q_min, q_max),   σ = sign(r − q) ∈ {−1 below, 0 inside, +1 above}
        ∂L/∂x = g · (1 − σ²)
        ∂L/∂s = Σ g · (q − z) − Σ (∂L/∂x) · x/s        (inside: q − z − x/s = round(x/s) − x/s)
        ∂L/∂z = −s · Σ g · σ² = −s · (Σ g − Σ ∂L/∂x)

    Like torch's kernels, ``x/s`` is computed as ``x · (1/s)``, so the forward pass equals
    ``torch.fake_quantize_per_tensor_affine`` bit for bit. NaN inputs give NaN outputs and NaN
    gradients (σ is NaN), so a diverged network is never silently turned into finite garbage.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, zero_point: Tensor | None, qmin: int, qmax: int) -> Tensor:
        inv_step = torch.reciprocal(step)
        code = torch.mul(x, inv_step).round_()
        if zero_point is not None:
            code.add_(zero_point)
        out = code.clamp(qmin, qmax)
        if zero_point is not None:
            out.sub_(zero_point)
        out.mul_(step)
        ctx.qmin, ctx.qmax = qmin, qmax
        ctx.save_for_backward(x, step, inv_step, zero_point, code)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, step, inv_step, zero_point, code = ctx.saved_tensors
        # One new tensor: ``buf`` holds q, then σ², then 1 − σ², then ∂L/∂x (in place: a fresh
        # allocation costs more than the arithmetic on the CPU).
        buf = code.clamp(ctx.qmin, ctx.qmax)
        sum_gq = _dot_to(grad_out, buf, step.shape) if ctx.needs_input_grad[1] else None
        buf.neg_().add_(code).sign_().square_()
        grad_x = buf.neg_().add_(1.0).mul_(grad_out)
        grad_step = grad_zp = None
        # Σ g over the elements sharing a (step, zero point) pair, when z needs it.
        joint = step.shape if zero_point is None else torch.broadcast_shapes(step.shape, zero_point.shape)
        sum_g = _sum_to(grad_out, joint) if zero_point is not None else None
        if ctx.needs_input_grad[1]:
            if zero_point is not None:
                sum_gq = sum_gq - _sum_to(zero_point * sum_g, step.shape)
            grad_step = sum_gq - _dot_to(grad_x, x, step.shape) * inv_step
        if zero_point is not None and ctx.needs_input_grad[2]:
            grad_zp = _sum_to(-step * (sum_g - _sum_to(grad_x, joint)), zero_point.shape)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_step, grad_zp, None, None


def _check_inputs(x: object, step: object, zero_point: object, bits: int, qmin: int, qmax: int) -> None:
    """Reject what :func:`fake_quantize` cannot do, from metadata alone (no look at the elements of
    a tensor ``step``: that would stall a GPU, and learned steps are ``exp(log s) > 0`` anyway)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        what = f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point tensor, got {what}")
    for name, value in (("step", step), ("zero_point", zero_point)):
        if isinstance(value, Tensor):
            if not value.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor or a number, got dtype {value.dtype}")
            try:
                fits = torch.broadcast_shapes(value.shape, x.shape) == x.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to x's shape "
                                 f"{tuple(x.shape)} without growing it; per channel, use e.g. [C, 1, 1, 1]")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number or a floating-point tensor, got {value!r} "
                            f"({type(value).__name__})")
        elif not math.isfinite(value) or (name == "step" and value <= 0):
            allowed = "a positive finite number" if name == "step" else "a finite number"
            raise ValueError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    largest = torch.finfo(x.dtype).max
    if max(qmax, -qmin) > largest:
        raise ValueError(f"bits={bits} gives integer codes up to {max(qmax, -qmin)}, beyond {x.dtype}'s "
                         f"largest value {largest:g}; use fewer bits or a wider dtype")


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
        NaN in ``x`` gives NaN in ``x̂`` and in the gradients (never a finite value).

    Raises:
        TypeError: ``x`` not a floating-point tensor; ``step``/``zero_point`` not a number or a
            floating-point tensor; ``bits`` not an int.
        ValueError: ``bits`` outside 1..32 or beyond what ``x``'s dtype holds; a number ``step``
            that is not positive and finite; a ``step``/``zero_point`` tensor that does not
            broadcast to ``x``'s shape.

    Example:
        >>> fake_quantize(torch.tensor([0.26, -3.0]), 0.5, bits=2)   # range [-2, 1] · 0.5
        tensor([ 0.5000, -1.0000])
    """
    qmin, qmax = qrange(bits, signed)
    _check_inputs(x, step, zero_point, bits, qmin, qmax)
    step = torch.as_tensor(step, dtype=x.dtype, device=x.device)
    if isinstance(zero_point, (int, float)) and zero_point == 0:
        zero_point = None  # the common symmetric case: no zero-point arithmetic at all
    else:
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
