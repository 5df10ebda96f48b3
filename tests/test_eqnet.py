"""EQ-Net part A: the elastic quantizer, the subnet space, WDR / GPG losses and the training step.

Oracles: scipy.stats for the moments, hand-written NumPy for WDR, GPG and label smoothing,
torch's ``fake_quantize_per_channel_affine`` for the symmetric quantizer, a plain loop for the
clipping search.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from reprolib import eqnet
from reprolib.eqnet.quantizer import CLIP_RATIOS, LP_NORM
from reprolib.models import build_model
from reprolib.nn import Precision, quantized_layers, set_precision
from reprolib.quant import lsq_grad_scale, qrange

finite = st.floats(-100, 100, allow_nan=False, width=32)


def _non_constant(a: np.ndarray) -> bool:
    return a.std() > 1e-2 * max(1.0, np.abs(a).max())


# -- moments and WDR -------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.integers(3, 200), elements=finite))
def test_moments_match_scipy(a):
    if not _non_constant(a):
        return
    w = torch.from_numpy(a)
    assert eqnet.skewness(w).item() == pytest.approx(scipy.stats.skew(a, bias=True), rel=1e-6, abs=1e-6)
    assert eqnet.kurtosis(w).item() == pytest.approx(scipy.stats.kurtosis(a, fisher=False, bias=True), rel=1e-6)


def test_moments_of_reference_distributions():
    g = torch.Generator().manual_seed(0)
    normal, uniform = torch.randn(200_000, generator=g), torch.rand(200_000, generator=g)
    assert eqnet.kurtosis(normal).item() == pytest.approx(3.0, abs=0.05)
    assert eqnet.kurtosis(uniform).item() == pytest.approx(1.8, abs=0.02)
    assert abs(eqnet.skewness(normal).item()) < 0.02


def test_moments_reject_single_element():
    with pytest.raises(ValueError, match="at least 2"):
        eqnet.kurtosis(torch.ones(1))


def test_wdr_loss_by_hand():
    ws = [torch.tensor([0.0, 1.0, 5.0]), torch.arange(12.0).reshape(3, 4) ** 2]
    expected = np.mean([0.3 * scipy.stats.skew(w.flatten().numpy()) ** 2
                        + 2.0 * (scipy.stats.kurtosis(w.flatten().numpy(), fisher=False) - 1.5) ** 2 for w in ws])
    got = eqnet.wdr_loss(ws, kurtosis_target=1.5, kurtosis_weight=2.0, skewness_weight=0.3)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_wdr_loss_is_differentiable_and_pushes_towards_uniform():
    w = torch.randn(5000, generator=torch.Generator().manual_seed(1)).requires_grad_()
    opt = torch.optim.Adam([w], lr=0.02)
    start = eqnet.wdr_loss([w]).item()
    for _ in range(150):
        opt.zero_grad()
        eqnet.wdr_loss([w]).backward()
        opt.step()
    assert eqnet.wdr_loss([w]).item() < 0.1 * start
    assert eqnet.kurtosis(w).item() == pytest.approx(1.8, abs=0.2)


# -- GPG and the baselines -------------------------------------------------------------------------
def _np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_gpg_losses_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(6, 4, generator=g) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    lam, t = 0.3, 2.0
    z = [lg.numpy().astype(np.float64) for lg in logits]

    def ce(zz):
        return float(np.mean(-np.log(_np_softmax(zz)[np.arange(6), y.numpy()])))

    def kl(teacher, student):
        p, q = _np_softmax(teacher / t), _np_softmax(student / t)
        return float(np.sum(p * (np.log(p) - np.log(q))) / 6)

    expected = [ce(z[0])] + [lam * t * t * kl(z[i - 1], z[i]) + (1 - lam) * ce(z[i]) for i in (1, 2)]
    got = eqnet.gpg_losses(logits, y, lam=lam, temperature=t)
    assert [v.item() for v in got] == pytest.approx(expected, rel=1e-5)


def test_gpg_teacher_is_detached():
    logits = [torch.randn(4, 3, requires_grad=True) for _ in range(2)]
    y = torch.tensor([0, 1, 2, 0])
    eqnet.gpg_losses(logits, y)[1].backward()
    assert logits[0].grad is None and logits[1].grad is not None


def test_gpg_with_lam_zero_is_hard_labels():
    logits = [torch.randn(5, 3) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 0, 1])
    hard = eqnet.hard_label_losses(logits, y)
    assert [v.item() for v in eqnet.gpg_losses(logits, y, lam=0.0)] == pytest.approx([v.item() for v in hard])


def test_label_smoothing_by_hand():
    z = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    eps = 0.2
    target = (1 - eps) * F.one_hot(y, 4).double().numpy() + eps / 4
    expected = float(np.mean(-(target * np.log(_np_softmax(z.double().numpy()))).sum(1)))
    assert eqnet.label_smoothing_losses([z], y, smoothing=eps)[0].item() == pytest.approx(expected, rel=1e-5)


def test_loss_argument_errors():
    y = torch.tensor([0])
    with pytest.raises(ValueError, match="lam"):
        eqnet.gpg_losses([torch.zeros(1, 2)], y, lam=1.5)
    with pytest.raises(ValueError, match="at least one"):
        eqnet.hard_label_losses([], y)
    with pytest.raises(ValueError, match="smoothing"):
        eqnet.label_smoothing_losses([torch.zeros(1, 2)], y, smoothing=1.0)


# -- the elastic quantizer -------------------------------------------------------------------------
def _loop_search(x, bits, signed, symmetric):
    """Plain-loop oracle of the L2.4 search on a whole tensor (no sub-sampling, no batching)."""
    best = None
    for r in CLIP_RATIOS:
        lo, hi = r * x.min(), r * x.max()
        qmin, qmax = qrange(bits, signed)
        if symmetric:
            s = max(abs(lo), abs(hi)) / -qmin if signed else hi / qmax
            b = 0.0
        else:
            s = (hi - lo) / (qmax - qmin)
            b = lo - qmin * s
        q = np.clip(np.round((x - b) / s), qmin, qmax) * s + b
        err = np.mean(np.abs(x - q) ** LP_NORM)
        if best is None or err < best[0]:
            best = (err, s, b)
    return best[1], best[2]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4])
def test_clipping_search_matches_loop(symmetric, bits):
    w = torch.randn(4, 50, generator=torch.Generator().manual_seed(bits)).double()
    step, offset = eqnet.clipping_search(w, bits, signed=True, symmetric=symmetric, per_channel=True)
    for c in range(4):
        s, b = _loop_search(w[c].numpy(), bits, True, symmetric)
        assert step[c].item() == pytest.approx(s, rel=1e-6)
        assert offset[c].item() == pytest.approx(b, rel=1e-6, abs=1e-9)
    a = torch.relu(torch.randn(300, generator=torch.Generator().manual_seed(9))).double()
    s_t, _ = eqnet.clipping_search(a, bits, signed=False, symmetric=symmetric, per_channel=False)
    assert s_t.item() == pytest.approx(_loop_search(a.numpy(), bits, False, symmetric)[0], rel=1e-6)


def _weight_quantizer(seed=0, channels=6):
    w = torch.randn(channels, 3, 3, 3, generator=torch.Generator().manual_seed(seed))
    q = eqnet.ElasticQuantizer("weight", channels=channels)
    q.calibrate(w)
    return q, w


@pytest.mark.parametrize("bits", [2, 5, 8])
def test_symmetric_per_channel_matches_torch(bits):
    q, w = _weight_quantizer()
    q.apply_precision(Precision(bits, bits, "channel", True, True))
    step = q.step_and_offset(bits, "channel")[0].detach()
    qmin, qmax = qrange(bits, True)
    ref = torch.fake_quantize_per_channel_affine(w, step.flatten(), torch.zeros(6, dtype=torch.int32), 0, qmin, qmax)
    torch.testing.assert_close(q(w), ref)


def test_asymmetric_per_tensor_is_lsq_plus():
    q, w = _weight_quantizer()
    q.apply_precision(Precision(3, 3, "tensor", False, True))
    s, b = (t.detach() for t in q.step_and_offset(3, "tensor"))
    expected = torch.clamp(torch.round((w - b) / s), -4, 3) * s + b
    torch.testing.assert_close(q(w), expected)
    assert b.abs().item() > 0  # the offset is actually used


def test_unsigned_symmetric_activation_levels():
    a = torch.relu(torch.randn(4000, generator=torch.Generator().manual_seed(2)))
    q = eqnet.ElasticQuantizer("act")
    q.calibrate(a)
    q.apply_precision(Precision(8, 3, a_symmetric=True))
    levels = q(a).unique() / q.step_and_offset(3, "tensor")[0].detach()
    assert levels.min().item() == 0.0 and len(levels) <= 8
    torch.testing.assert_close(levels, levels.round())


def test_step_gradient_is_lsq_scaled():
    q, w = _weight_quantizer()
    q.apply_precision(Precision(4, 4, "tensor", True, True))
    q(w).sum().backward()
    s = q.step_and_offset(4, "tensor")[0].detach()
    xs = w / s
    inside = torch.round(xs).clamp(-8, 7) == torch.round(xs)
    d = torch.where(inside, torch.round(xs) - xs, torch.round(xs).clamp(-8, 7))
    expected = d.sum() * lsq_grad_scale(w.numel(), 4, True) * s  # chain rule through s = exp(log_step)
    assert q.log_step_tensor["4"].grad.item() == pytest.approx(expected.item(), rel=1e-4)
    assert q.log_step_channel["4"].grad is None and q.zero_tensor["4"].grad is None  # only the active form learns


@pytest.mark.parametrize("mode", ["min", "mean", "max"])
def test_derived_tensor_step(mode):
    q, _ = _weight_quantizer()
    q.tensor_step = mode
    step, _ = q.step_and_offset(2, "tensor")
    assert step.item() == pytest.approx(getattr(q.log_step_channel["2"].exp(), mode)().item())


def test_quantizer_argument_errors():
    with pytest.raises(ValueError, match="channels"):
        eqnet.ElasticQuantizer("weight")
    with pytest.raises(ValueError, match="bit_widths"):
        eqnet.ElasticQuantizer("act", (1, 4))
    q = eqnet.ElasticQuantizer("act", (8,))
    with pytest.raises(ValueError, match="supports bits"):
        q.apply_precision(Precision.uniform(4))


# -- the space -------------------------------------------------------------------------------------
def test_subnet_config_validation_and_precisions():
    cfg = eqnet.SubnetConfig((2, 3), (4, 8), "tensor", False, True)
    ps = cfg.precisions()
    assert [(p.w_bits, p.a_bits) for p in ps] == [(8, 8), (2, 4), (3, 8), (8, 8)]
    assert all(p.granularity == "tensor" and not p.w_symmetric and p.a_symmetric for p in ps)
    with pytest.raises(ValueError, match="outside BIT_CHOICES"):
        eqnet.SubnetConfig((1, 2), (2, 2))
    with pytest.raises(ValueError, match="same non-zero length"):
        eqnet.SubnetConfig((2,), (2, 2))
    with pytest.raises(ValueError, match="granularity"):
        eqnet.SubnetConfig((2,), (2,), "group")
    with pytest.raises(TypeError, match="tuple"):
        eqnet.SubnetConfig([2], [2])
    assert eqnet.highest(3).w_bits == (8, 8, 8) and eqnet.lowest(2, granularity="tensor").a_bits == (2, 2)


def test_sample_random_draws_every_layer_independently():
    rng = random.Random(0)
    cfgs = [eqnet.sample_random(4, rng) for _ in range(400)]
    for field in ("w_bits", "a_bits"):
        for layer in range(4):
            assert {getattr(c, field)[layer] for c in cfgs} == set(eqnet.BIT_CHOICES)
    assert np.mean([c.w_bits[0] == c.a_bits[0] for c in cfgs]) < 0.3  # 1/7 if independent
    assert np.mean([c.w_bits[0] == c.w_bits[1] for c in cfgs]) < 0.3
    assert {c.granularity for c in cfgs} == {"channel", "tensor"}
    assert {(c.w_symmetric, c.a_symmetric) for c in cfgs} == {(a, b) for a in (True, False) for b in (True, False)}
    assert eqnet.sample_random(4, random.Random(3)) == eqnet.sample_random(4, random.Random(3))


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, num_classes=10, image_size=8, width=0.25)
    x = torch.randn(16, 1, 8, 8)
    bn_before = model.features[1].running_mean.clone()
    eqnet.build_supernet(model, calib_batch=x)
    assert torch.equal(model.features[1].running_mean, bn_before)
    return model, x


def test_build_supernet_structure(supernet):
    model, _ = supernet
    layers = quantized_layers(model)
    assert len(layers) == 5 and eqnet.num_elastic_layers(model) == 3
    assert layers[0][1].weight_quantizer.bit_widths == (8,) == layers[-1][1].act_quantizer.bit_widths
    assert layers[0][1].act_quantizer.signed and not layers[1][1].act_quantizer.signed
    assert all(q.initialized for q in eqnet.elastic_quantizers(model))
    with pytest.raises(ValueError, match="not an EQ-Net supernet"):
        eqnet.num_elastic_layers(build_model("small_cnn", in_channels=1, num_classes=10, image_size=8))


def test_apply_config(supernet):
    model, x = supernet
    cfg = eqnet.SubnetConfig((2, 5, 7), (3, 4, 8), "tensor", False, True)
    eqnet.apply_config(model, cfg)
    assert [m.weight_quantizer.bits for _, m in quantized_layers(model)] == [8, 2, 5, 7, 8]
    assert [m.act_quantizer.bits for _, m in quantized_layers(model)] == [8, 3, 4, 8, 8]
    with pytest.raises(ValueError, match="3 elastic layers"):
        eqnet.apply_config(model, eqnet.SubnetConfig.uniform(4, 2))
    low, high = (model(x).detach() for c in (eqnet.lowest(3), eqnet.highest(3)) if eqnet.apply_config(model, c) is None)
    assert not torch.allclose(low, high)


def test_supernet_step_sums_three_subnets_and_wdr(supernet):
    model, x = supernet
    y = torch.randint(0, 10, (16,))
    out = eqnet.make_supernet_step(seed=0)(model, x, y)
    total = out["loss_H"] + out["loss_R"] + out["loss_L"] + out["wdr"]
    assert out["loss"].item() == pytest.approx(total.item())
    out["loss"].backward()
    wq = quantized_layers(model)[1][1].weight_quantizer
    assert wq.log_step_channel["2"].grad is not None or wq.log_step_tensor["2"].grad is not None  # L: 2-bit
    assert "wdr" not in eqnet.make_supernet_step(kurtosis_weight=0, skewness_weight=0, guidance="hard")(model, x, y)
    with pytest.raises(ValueError, match="guidance"):
        eqnet.make_supernet_step(guidance="soft")
    model.zero_grad()


def test_train_and_evaluate_config():
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    model = eqnet.build_supernet(build_model("small_cnn", in_channels=1, num_classes=2, image_size=8, width=0.25))
    hist = eqnet.train_supernet(model, loader, config=eqnet.supernet_config(epochs=2, progress=False),
                                val_loader=loader, eval_bits=(2, 8))
    assert set(hist.last) >= {"loss", "val_acc_2bit", "val_acc_8bit", "val_acc"}
    acc = eqnet.evaluate_config(model, eqnet.highest(3), loader, loader, calib_batches=1)
    assert 0.0 <= acc <= 100.0
    set_precision(model, Precision.uniform(8))


def test_supernet_ablation_starts_variants_from_the_same_weights():
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.randn(8, 1, 8, 8)
    loader = DataLoader(TensorDataset(x, torch.zeros(8, dtype=torch.long)), batch_size=8)
    def make(s):
        kwargs = {"in_channels": 1, "num_classes": 2, "image_size": 8}
        return eqnet.fresh_supernet("small_cnn", model_kwargs=kwargs, calib_batch=x, width=0.25, seed=s)

    runs = eqnet.supernet_ablation(make, {"a": {}, "b": {"guidance": "hard"}}, loader, seeds=[0, 1],
                                   config=eqnet.supernet_config(epochs=0, progress=False))
    assert set(runs) == {("a", 0), ("b", 0), ("a", 1), ("b", 1)}
    w = {k: quantized_layers(m)[1][1].weight for k, (m, _) in runs.items()}
    assert torch.equal(w["a", 0], w["b", 0]) and w["a", 0] is not w["b", 0]
    assert not torch.equal(w["a", 0], w["a", 1])
