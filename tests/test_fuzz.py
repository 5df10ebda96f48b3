"""Fuzzing the core with hypothesis: shapes (empty ones included), dtypes, extreme values.

For every draw: no crash, the documented shape and dtype, and the invariants of the function:

* ``fake_quantize`` — output on the grid ``{q·s : q_min ≤ q ≤ q_max}``, monotone, idempotent,
  within ``s/2`` of ``x`` inside the range, saturating outside it; STE gradient in {0, 1};
  equal to torch's own kernel (an independent oracle) in float32.
* ``truncate`` — equals floor division by ``2^(from − to)`` (NumPy as the oracle), stays in
  range, and truncating twice equals truncating once.
* ``rdhs_select`` / ``sgt_select`` — the chosen value of the argmax (an element of the value
  set), the soft sample inside ``[q_1, q_m]``, finite weights and gradients for finite logits.
* ``wdr_loss`` — a non-negative scalar equal to the scipy formula, unchanged by rescaling
  (even by 2^±100, where ``σ²`` would overflow or underflow), Pearson's ``Kurt ≥ Skew² + 1``.

Tensors are drawn as (shape, seed, exponent, dtype), then built with torch, so a few hundred
draws run in seconds. Each test is bounded by ``max_examples``; the file runs in well under a minute.
"""
from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reprolib import eqnet
from reprolib.anyprec import truncate
from reprolib.qts import VALUE_SETS, rdhs_select, sgt_select
from reprolib.quant import fake_quantize, qrange

FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# Mantissa bits: a code q is exact in the dtype, and q·s rounds back to q, while 2^bits ≤ 2^mantissa.
MANTISSA = {torch.float32: 24, torch.float64: 53, torch.bfloat16: 8, torch.float16: 11}
FUZZ = settings(max_examples=80, deadline=None)

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)
nonempty_shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


def make(shape, seed, dtype, exponent=0, extremes=False) -> torch.Tensor:
    """``randn(shape) · 2^exponent`` in ``dtype``; with ``extremes``, some entries at ±(dtype's max)/2
    and at ± its smallest normal number."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0**exponent
    if extremes and x.numel():
        info = torch.finfo(dtype)
        flat = x.view(-1)
        picks = torch.randint(0, flat.numel(), (min(4, flat.numel()),), generator=g)
        for i, v in zip(picks.tolist(), (info.max / 2, -info.max / 2, info.tiny, -info.tiny), strict=False):
            flat[i] = v
    return x.to(dtype)


# -- fake_quantize ----------------------------------------------------------------------------------
@FUZZ
@given(shape=shapes, seed=st.integers(0, 2**16), dtype=st.sampled_from(FLOATS), bits=st.integers(1, 16),
       signed=st.booleans(), log2_step=st.integers(-8, 4), per_channel=st.booleans(), extremes=st.booleans())
def test_fake_quantize_grid_shape_and_gradient(shape, seed, dtype, bits, signed, log2_step, per_channel, extremes):
    qmin, qmax = qrange(bits, signed)
    assume(qmax <= torch.finfo(dtype).max)  # 16-bit unsigned codes in float16: see test_codes_beyond_the_dtype
    x = make(shape, seed, dtype, exponent=log2_step + bits - 1, extremes=extremes).requires_grad_()
    if per_channel and x.dim() >= 1:  # one step per slice along dim 0: s·2^(c mod 3)
        c = torch.arange(x.shape[0], dtype=torch.float64).reshape(-1, *([1] * (x.dim() - 1)))
        step = (2.0**log2_step * 2.0 ** (c % 3)).to(dtype)
    else:
        step = torch.tensor(2.0**log2_step, dtype=dtype)
    out = fake_quantize(x, step, 0.0, bits, signed)
    assert out.shape == x.shape and out.dtype == dtype
    largest = max(-qmin, qmax) * (step.double().amax().item() if step.numel() else 0.0)
    if largest <= torch.finfo(dtype).max:  # the grid fits in the dtype
        assert torch.isfinite(out).all()  # finite x (extremes included) saturates, never overflows
    out.backward(torch.ones_like(out))
    assert x.grad.shape == x.shape and set(x.grad.unique().tolist()) <= {0.0, 1.0}
    if bits > MANTISSA[dtype] - 1:
        return
    s = step.double().expand(x.shape)
    codes = out.detach().double() / s  # powers-of-two steps: exact
    assert torch.equal(codes, codes.round()) and ((codes >= qmin) & (codes <= qmax)).all()
    xd = x.detach().double()
    inside = (xd >= qmin * s) & (xd <= qmax * s)
    assert ((out.detach().double() - xd).abs()[inside] <= s[inside] / 2 * (1 + 2 * torch.finfo(dtype).eps)).all()
    assert (codes[xd > qmax * s] == qmax).all() and (codes[xd < qmin * s] == qmin).all()
    rounded = (xd / s).round()  # the code before clamping: the STE passes the gradient where it is in range
    assert torch.equal(x.grad == 1, (rounded >= qmin) & (rounded <= qmax))
    again = fake_quantize(out.detach(), step, 0.0, bits, signed)  # idempotent
    assert torch.equal(again, out.detach())


@FUZZ
@given(n=st.integers(0, 60), seed=st.integers(0, 2**16), dtype=st.sampled_from(FLOATS), bits=st.integers(1, 8),
       step=st.floats(1e-3, 10.0), zero=st.integers(-3, 3), extremes=st.booleans())
def test_fake_quantize_is_monotone_with_a_zero_point(n, seed, dtype, bits, step, zero, extremes):
    x = make((n,), seed, dtype, exponent=bits, extremes=extremes).sort().values
    out = fake_quantize(x, step, float(zero), bits, signed=True)
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert (out[1:] >= out[:-1]).all()
    levels = out.unique()
    assert levels.numel() <= 2**bits


@FUZZ
@given(shape=nonempty_shapes, seed=st.integers(0, 2**16), bits=st.integers(2, 16), signed=st.booleans(),
       step=st.floats(2.0**-13, 100.0, width=32), extremes=st.booleans(), zp_frac=st.floats(0, 1))
def test_fake_quantize_equals_torch_kernel_in_float32(shape, seed, bits, signed, step, extremes, zp_frac):
    x = make(shape, seed, torch.float32, exponent=int(math.log2(step)) + bits - 1, extremes=extremes)
    qmin, qmax = qrange(bits, signed)
    zp = qmin + round(zp_frac * (qmax - qmin))  # torch's kernel needs an integer zero point in range
    ours = fake_quantize(x, step, float(zp), bits, signed)
    ref = torch.fake_quantize_per_tensor_affine(x, step, zp, qmin, qmax)
    assert torch.equal(ours, ref)


# Codes up to 65535 do not fit in float16 (largest 65504): a clear error, not torch's overflow.
def test_codes_beyond_the_dtype_are_a_clear_error():
    with pytest.raises(ValueError, match=r"bits=16.*float16"):
        fake_quantize(torch.ones(3, dtype=torch.float16), 1.0, 0.0, 16, signed=False)


# -- truncate ---------------------------------------------------------------------------------------
INTS = [torch.uint8, torch.int16, torch.int32, torch.int64]


@FUZZ
@given(shape=shapes, seed=st.integers(0, 2**16), dtype=st.sampled_from(INTS), from_bits=st.integers(1, 8),
       data=st.data())
def test_truncate_is_floor_division(shape, seed, dtype, from_bits, data):
    to_bits = data.draw(st.integers(1, from_bits))
    mid_bits = data.draw(st.integers(to_bits, from_bits))
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**from_bits, shape, generator=g).to(dtype)
    if codes.numel():  # the extremes of the range
        codes.view(-1)[0] = 2**from_bits - 1
        codes.view(-1)[-1] = 0
    out = truncate(codes, from_bits, to_bits)
    assert out.shape == codes.shape and out.dtype == dtype
    expected = np.floor_divide(codes.numpy().astype(np.int64), 2 ** (from_bits - to_bits))
    assert np.array_equal(out.numpy().astype(np.int64), expected)
    assert ((out >= 0) & (out <= 2**to_bits - 1)).all()
    assert torch.equal(truncate(truncate(codes, from_bits, mid_bits), mid_bits, to_bits), out)


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([torch.int8, torch.int16, torch.int64]), bits=st.integers(1, 6),
       bad=st.sampled_from(["negative", "too large"]))
def test_truncate_rejects_codes_out_of_range(dtype, bits, bad):
    codes = torch.tensor([0, -1 if bad == "negative" else 2**bits], dtype=dtype)
    with pytest.raises(ValueError, match=rf"codes of {bits} bits must lie in \[0, {2**bits - 1}\]"):
        truncate(codes, bits, 1)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.bfloat16, torch.complex64])
def test_truncate_rejects_non_integer_codes(dtype):
    with pytest.raises(TypeError, match="codes must be an integer tensor"):
        truncate(torch.zeros(3, dtype=dtype), 8, 4)


# -- rdhs_select / sgt_select ----------------------------------------------------------------------------
def value_sets():
    drawn = st.lists(st.floats(-8, 8, allow_nan=False, width=16), min_size=2, max_size=8, unique=True)
    return st.one_of(st.sampled_from(list(VALUE_SETS.values())),
                     drawn.map(lambda v: tuple(sorted(v))).filter(lambda v: all(a < b for a, b in pairwise(v))))


@FUZZ
@given(shape=shapes, seed=st.integers(0, 2**16), dtype=st.sampled_from(FLOATS), values=value_sets(),
       log2_scale=st.integers(-10, 90), tau=st.floats(0.05, 5.0), extremes=st.booleans())
def test_selections_pick_values_of_the_set(shape, seed, dtype, values, log2_scale, tau, extremes):
    m = len(values)
    exponent = min(log2_scale, int(math.log2(torch.finfo(dtype).max)) - 8)  # logits within the dtype's range
    alpha = make((*shape, m), seed, dtype, exponent=exponent, extremes=extremes).requires_grad_()
    q = torch.tensor(values, dtype=torch.float64).to(dtype)
    chosen = q[alpha.detach().argmax(-1)]
    upstream = make(shape, seed + 1, dtype)
    # RDHS's soft sample divides by τ; where α/τ overflows (float32/64 only: 16-bit logits are
    # divided in float32) the documented result is a NaN weight, never a finite one.
    wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    overflow = (alpha.detach().double() / tau).amax(-1).abs() > torch.finfo(wide).max  # the row's largest
    for name, w in [("sgt", sgt_select(alpha, values)), ("rdhs", rdhs_select(alpha, values, tau=tau))]:
        assert w.shape == alpha.shape[:-1] and w.dtype == dtype, name
        ok = ~overflow if name == "rdhs" else torch.ones_like(overflow)
        assert torch.equal(w.detach()[ok], chosen[ok]) and torch.isnan(w.detach()[~ok]).all(), name
        (grad,) = torch.autograd.grad(w, alpha, upstream)
        assert grad.shape == alpha.shape and torch.isfinite(grad[ok]).all(), name
        if name == "sgt":  # ∂L/∂α_k = ∂L/∂w · sign(q_k − q_k*), exactly
            assert torch.equal(grad, upstream.unsqueeze(-1) * torch.sign(q - chosen.unsqueeze(-1)))
    soft = rdhs_select(alpha.detach(), values, tau=tau, hard=False)[~overflow]
    slack = 4 * torch.finfo(dtype).eps * max(abs(values[0]), abs(values[-1]))
    assert torch.isfinite(soft).all() and ((soft >= values[0] - slack) & (soft <= values[-1] + slack)).all()
    noisy = rdhs_select(alpha.detach(), values, tau=tau, mu=0.5)
    assert noisy.shape == alpha.shape[:-1] and torch.isin(noisy[~overflow], q).all()


# -- wdr_loss ---------------------------------------------------------------------------------------
@FUZZ
@given(shapes_=st.lists(nonempty_shapes.filter(lambda s: math.prod(s) >= 2), min_size=1, max_size=3),
       seed=st.integers(0, 2**16), dtype=st.sampled_from(FLOATS), exponent=st.integers(-100, 100),
       kw=st.floats(0, 2), sw=st.floats(0, 2), target=st.floats(1, 4))
def test_wdr_loss_is_a_scale_free_non_negative_scalar(shapes_, seed, dtype, exponent, kw, sw, target):
    info = torch.finfo(dtype)
    exponent = max(min(exponent, int(math.log2(info.max)) - 8), int(math.log2(info.tiny)) + 8)
    weights = [make(s, seed + i, dtype, exponent=exponent) for i, s in enumerate(shapes_)]
    weights = [w for w in weights if w.double().std() > 0]  # a constant tensor has no moments (NaN, tested apart)
    if not weights:
        return
    loss = eqnet.wdr_loss(weights, target, kw, sw)
    assert loss.shape == () and torch.isfinite(loss) and loss >= 0
    assert loss.dtype == (torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    # scipy on the same values (float64) as the oracle: Eq. 6.
    terms = []
    for w in weights:
        a = w.double().flatten().numpy()
        skew, kurt = scipy.stats.skew(a, bias=True), scipy.stats.kurtosis(a, fisher=False, bias=True)
        assert kurt >= skew**2 + 1 - 1e-9  # Pearson's inequality, of the data themselves
        terms.append(sw * skew**2 + kw * (kurt - target) ** 2)
    rtol = 1e-9 if dtype == torch.float64 else 1e-3
    assert loss.item() == pytest.approx(float(np.mean(terms)), rel=rtol, abs=rtol)
    # Scale-free: the same weights times 2^k (exact) give exactly the same loss.
    k = 6 if exponent < 0 else -6
    assert torch.equal(eqnet.wdr_loss([w * 2.0**k for w in weights], target, kw, sw), loss)


@FUZZ
@given(shape=nonempty_shapes, seed=st.integers(0, 2**16), dtype=st.sampled_from(FLOATS))
def test_moments_have_gradients_of_the_weights_shape(shape, seed, dtype):
    w = make(shape, seed, dtype).requires_grad_()
    if w.numel() < 2:
        with pytest.raises(ValueError, match="at least 2 elements"):
            eqnet.kurtosis(w)
        return
    if w.detach().double().std() == 0:
        return
    k = eqnet.kurtosis(w)
    (grad,) = torch.autograd.grad(k, w)
    assert grad.shape == w.shape and grad.dtype == dtype and torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", FLOATS)
def test_empty_tensors(dtype):
    """Empty inputs: an empty output of the right shape, or a ValueError where nothing is defined."""
    x = torch.empty(0, 3, dtype=dtype, requires_grad=True)
    out = fake_quantize(x, 0.1, 0.0, 4)
    out.sum().backward()
    assert out.shape == (0, 3) and x.grad.shape == (0, 3)
    for select in (sgt_select, rdhs_select):
        assert select(torch.empty(0, 2, 2, dtype=dtype), (-1.0, 1.0)).shape == (0, 2)
    assert truncate(torch.empty(0, dtype=torch.uint8), 8, 2).shape == (0,)
    with pytest.raises(ValueError, match="at least 2 elements, got a tensor of 0"):
        eqnet.wdr_loss([torch.empty(0, 4, dtype=dtype)])
