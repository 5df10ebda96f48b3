"""reprolib.quant against torch's own fake-quant kernels, closed forms and hypothesis properties."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reprolib.quant import fake_quantize, lsq_grad_scale, lsq_init_step, qrange, round_ste, scale_grad


@pytest.mark.parametrize("bits,signed,expected", [
    (2, True, (-2, 1)), (4, True, (-8, 7)), (8, True, (-128, 127)), (1, True, (-1, 0)),
    (1, False, (0, 1)), (4, False, (0, 15)), (8, False, (0, 255)),
])
def test_qrange(bits, signed, expected):
    assert qrange(bits, signed) == expected


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (33, ValueError), (2.5, TypeError), ("4", TypeError),
                                     (True, TypeError)])
def test_qrange_rejects(bad, exc):
    with pytest.raises(exc, match="bits"):
        qrange(bad)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_matches_torch_per_tensor(bits, signed):
    torch.manual_seed(bits)
    x = torch.randn(1000) * 3
    qmin, qmax = qrange(bits, signed)
    for scale, zp in [(0.1, 0), (0.37, qmin + (qmax - qmin) // 3), (1.3, qmax)]:
        ours = fake_quantize(x, scale, zp, bits, signed)
        ref = torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_matches_torch_per_channel(bits):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    qmin, qmax = qrange(bits, True)
    scale = torch.rand(16) * 0.5 + 0.05
    zp = torch.randint(qmin, qmax + 1, (16,), dtype=torch.int32)
    ref = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, qmin, qmax)
    ours = fake_quantize(w, scale.view(-1, 1, 1, 1), zp.float().view(-1, 1, 1, 1), bits, True)
    assert torch.equal(ours, ref)


def test_round_half_to_even():
    out = fake_quantize(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5]), 1.0, 0, 8)
    assert out.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0]


def test_gradients_match_torch_learnable_op():
    """Torch's learnable fake-quant op (grad_factor=1) computes LSQ's unscaled gradients."""
    torch.manual_seed(1)
    x = (torch.randn(500) * 2).requires_grad_()
    s = torch.tensor([0.3], requires_grad=True)
    upstream = torch.randn(500)
    fake_quantize(x, s, 0.0, 4).backward(upstream)
    x_ref, s_ref = x.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()
    torch._fake_quantize_learnable_per_tensor_affine(x_ref, s_ref, torch.zeros(1), -8, 7, 1.0).backward(upstream)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(s.grad, s_ref.grad)


@pytest.mark.parametrize("per_channel", [False, True])
def test_all_gradients_match_torch_learnable_ops_with_zero_point(per_channel):
    """x, step and an integer zero point, per tensor and per channel (4-bit unsigned).

    Torch's backward kernels re-derive the zero point as ``int(z + 0.5)``, which truncates
    towards zero for negative z; non-negative zero points are where torch is its own oracle.
    """
    torch.manual_seed(2)
    x = (torch.randn(6, 5, 3, 3) * 2).requires_grad_()
    upstream = torch.randn(6, 5, 3, 3)
    n = 6 if per_channel else 1
    s = (torch.rand(n) * 0.4 + 0.1).requires_grad_()
    z = torch.randint(0, 12, (n,)).float().requires_grad_()
    view = (-1, 1, 1, 1) if per_channel else ()
    fake_quantize(x, s.view(view), z.view(view), 4, signed=False).backward(upstream)
    refs = [t.detach().clone().requires_grad_() for t in (x, s, z)]
    if per_channel:
        out = torch._fake_quantize_learnable_per_channel_affine(*refs, 0, 0, 15, 1.0)
    else:
        out = torch._fake_quantize_learnable_per_tensor_affine(*refs, 0, 15, 1.0)
    out.backward(upstream)
    for ours, ref in zip((x, s, z), refs, strict=True):
        torch.testing.assert_close(ours.grad, ref.grad)


def test_mixed_step_and_zero_point_shapes():
    """A per-channel step with a per-tensor real zero point, and the reverse: each gradient is
    reduced to its own parameter's shape. Oracles: the closed form of ∂x̂/∂s written out element
    by element with boolean masks, and central finite differences for z (x̂ is piecewise linear
    in z with slope −s where clamped, 0 inside)."""
    torch.manual_seed(3)
    x = torch.randn(4, 7, dtype=torch.float64) * 2
    up = torch.randn(4, 7, dtype=torch.float64)
    qmin, qmax = qrange(3)
    cases = [(torch.rand(4, 1, dtype=torch.float64) * 0.3 + 0.2, torch.tensor(0.4, dtype=torch.float64)),
             (torch.tensor(0.3, dtype=torch.float64), torch.rand(4, 1, dtype=torch.float64) * 2 - 1)]
    for s0, z0 in cases:
        s, z = s0.clone().requires_grad_(), z0.clone().requires_grad_()
        (fake_quantize(x, s, z, 3) * up).sum().backward()
        assert s.grad.shape == s0.shape and z.grad.shape == z0.shape
        t = x / s0
        code = torch.round(t) + z0
        d_step = torch.where(code < qmin, qmin - z0, torch.where(code > qmax, qmax - z0, torch.round(t) - t))
        torch.testing.assert_close(s.grad, (up * d_step).sum_to_size(s0.shape) if s0.dim() else (up * d_step).sum())
        for i in range(z0.numel()):
            eps = torch.zeros(z0.numel(), dtype=torch.float64)
            eps[i] = 1e-7
            eps = eps.view(z0.shape)
            fd = ((fake_quantize(x, s0, z0 + eps, 3) - fake_quantize(x, s0, z0 - eps, 3)) * up).sum() / 2e-7
            assert z.grad.flatten()[i].item() == pytest.approx(fd.item(), abs=1e-5)


def test_step_gradient_closed_form_by_hand():
    # step 0.5, 2 bits signed: codes in [-2, 1]; x/s = [0.6, -5, 4, 0.2]
    x = torch.tensor([0.3, -2.5, 2.0, 0.1])
    s = torch.tensor(0.5, requires_grad=True)
    fake_quantize(x, s, 0.0, 2).sum().backward()
    # inside: round(x/s) - x/s = 1-0.6, 0-0.2 ; below: qmin = -2 ; above: qmax = 1
    assert s.grad.item() == pytest.approx((1 - 0.6) + (-2) + 1 + (0 - 0.2))


def test_ste_gradient_is_one_inside_zero_outside():
    x = torch.tensor([-10.0, -0.7, 0.0, 0.4, 0.74, 10.0], requires_grad=True)
    fake_quantize(x, 0.1, 0.0, 4).sum().backward()  # range [-0.8, 0.7]
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_zero_point_gradient_matches_finite_differences():
    x = torch.tensor([-3.0, 0.2, 3.0], dtype=torch.float64)
    s = torch.tensor(0.25, dtype=torch.float64)
    z = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    fake_quantize(x, s, z, 3).sum().backward()
    eps = 1e-6
    fd = (fake_quantize(x, s, z.detach() + eps, 3).sum() - fake_quantize(x, s, z.detach() - eps, 3).sum()) / (2 * eps)
    assert z.grad.item() == pytest.approx(fd.item(), abs=1e-6)
    assert z.grad.item() == pytest.approx(-2 * 0.25)  # two clamped elements, -s each


def test_per_channel_step_gradient_is_reduced_per_channel():
    w = torch.randn(4, 3, 2, 2)
    s = torch.full((4, 1, 1, 1), 0.2, requires_grad=True)
    fake_quantize(w, s, 0.0, 3).sum().backward()
    assert s.grad.shape == (4, 1, 1, 1)
    for c in range(4):
        sc = torch.tensor(0.2, requires_grad=True)
        fake_quantize(w[c], sc, 0.0, 3).sum().backward()
        assert s.grad[c].item() == pytest.approx(sc.grad.item(), rel=1e-5)


def test_nan_input_stays_nan():
    out = fake_quantize(torch.tensor([float("nan"), 1.0]), 0.5, 0.0, 4)
    assert math.isnan(out[0].item()) and out[1].item() == 1.0


def test_scale_grad_and_round_ste():
    x = torch.tensor([1.7, -2.2], requires_grad=True)
    y = scale_grad(x, 0.25)
    assert torch.equal(y, x.detach())
    y.sum().backward()
    assert x.grad.tolist() == [0.25, 0.25]
    x.grad = None
    round_ste(x).sum().backward()
    assert round_ste(x.detach()).tolist() == [2.0, -2.0] and x.grad.tolist() == [1.0, 1.0]


def test_lsq_init_and_grad_scale():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    assert lsq_init_step(w, 4).item() == pytest.approx(2 * 1.25 / math.sqrt(7))
    per_row = lsq_init_step(w, 4, dim=0)
    assert per_row.shape == (2, 1)
    assert per_row.flatten().tolist() == pytest.approx([2 * 2 / math.sqrt(7), 2 * 0.5 / math.sqrt(7)])
    assert lsq_grad_scale(100, 4) == pytest.approx(1 / math.sqrt(100 * 7))


tensors = st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=1, max_size=64)


@settings(max_examples=60, deadline=None)
@given(values=tensors, bits=st.integers(1, 8), signed=st.booleans(), step=st.floats(0.01, 5.0))
def test_properties(values, bits, signed, step):
    if signed and bits == 1:
        bits = 2
    x = torch.tensor(values)
    qmin, qmax = qrange(bits, signed)
    y = fake_quantize(x, step, 0.0, bits, signed)
    # at most 2^b levels, all on the grid k·s with k in [qmin, qmax]
    assert y.unique().numel() <= 2**bits
    codes = y / torch.tensor(step)
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.min() >= qmin - 1e-3 and codes.max() <= qmax + 1e-3
    # idempotent
    assert torch.equal(fake_quantize(y, step, 0.0, bits, signed), y)
    # error at most step/2 inside the range
    s32 = torch.tensor(step, dtype=torch.float32)
    inside = (x / s32 >= qmin - 0.5) & (x / s32 <= qmax + 0.5)
    assert ((y - x).abs()[inside] <= step / 2 * (1 + 1e-5) + 1e-6).all()
