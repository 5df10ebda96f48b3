"""``fake_quantize`` forward + backward against torch's own learnable fake-quant ops.

Question: is this library's quantizer, with LSQ's step gradient, at least as fast as
``torch._fake_quantize_learnable_per_tensor_affine`` / ``..._per_channel_affine`` (which compute
the same gradients)? Target ≤ 0.8×. Cases: a ResNet-20-sized weight (its largest conv,
64×64×3×3) and a batch of activations (128×16×32×32, ResNet-20's first stage at batch 128),
4 bits, per tensor and per channel, with a learnable step (and, for torch, its zero point).
"""
from __future__ import annotations

import torch

from reprolib.quant import fake_quantize, qrange

from ._harness import Result, compare, ms

TARGET = 0.8


def _cases(tiny: bool) -> dict[str, tuple[tuple[int, ...], bool, int]]:
    """name → (shape, signed, channel axis)."""
    if tiny:
        return {"weight": ((4, 3, 3, 3), True, 0), "activations": ((2, 4, 5, 5), False, 1)}
    return {"weight 64×64×3×3": ((64, 64, 3, 3), True, 0),
            "activations 128×16×32×32": ((128, 16, 32, 32), False, 1)}


def _pair(x: torch.Tensor, upstream: torch.Tensor, n: int, axis: int, bits: int, signed: bool, init: float):
    """The two calls timed against each other: forward and backward with ``n`` learnable steps
    (1: per tensor; else per slice along ``axis``), torch's with a learnable zero point too."""
    qmin, qmax = qrange(bits, signed)
    view = [1] * x.dim()
    view[axis] = n
    ours_step = torch.full(view if n > 1 else (), init, requires_grad=True)
    ref_step = torch.full((n,), init, requires_grad=True)
    ref_zp = torch.zeros(n, requires_grad=True)

    def ours() -> None:
        fake_quantize(x, ours_step, 0.0, bits, signed).backward(upstream)

    def theirs() -> None:
        if n > 1:
            out = torch._fake_quantize_learnable_per_channel_affine(x, ref_step, ref_zp, axis, qmin, qmax, 1.0)
        else:
            out = torch._fake_quantize_learnable_per_tensor_affine(x, ref_step, ref_zp, qmin, qmax, 1.0)
        out.backward(upstream)

    return ours, theirs


def run(tiny: bool = False, repeats: int | None = None) -> list[Result]:
    repeats = repeats or (2 if tiny else 30)
    bits = 4
    results = []
    gen = torch.Generator().manual_seed(0)
    for name, (shape, signed, axis) in _cases(tiny).items():
        _, qmax = qrange(bits, signed)
        x = torch.randn(shape, generator=gen)
        if not signed:
            x = x.relu()
        x.requires_grad_()
        upstream = torch.randn(shape, generator=gen)
        init = 2 * x.detach().abs().mean().item() / qmax ** 0.5
        for granularity in ("per tensor", "per channel"):
            n = shape[axis] if granularity == "per channel" else 1
            ours, theirs = _pair(x, upstream, n, axis, bits, signed, init)
            timed = compare({"torch": theirs, "reprolib": ours}, "torch", repeats=repeats)
            ratio = timed["reprolib"][1]
            results.append(Result("fake_quantize", f"{name}, {granularity}, fwd+bwd", ratio, "×", f"≤ {TARGET}×",
                                  ratio <= TARGET,
                                  f"reprolib {ms(timed['reprolib'][0])} vs torch {ms(timed['torch'][0])}"))
    return results
