"""Any-Precision DNNs: DoReFa codes, truncation, switchable BN, distillation step, frozen models."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from reprolib import models
from reprolib.anyprec import (
    AnyPrecisionStep,
    ClampActQuantizer,
    CodeWeightQuantizer,
    DoReFaWeightQuantizer,
    SwitchableBatchNorm2d,
    add_bn_copies,
    any_precision_model,
    bn_inputs,
    calibrate_bn,
    dequantize_codes,
    freeze,
    requantize_codes,
    set_code_semantics,
    soft_cross_entropy,
    storage_bytes,
    truncate,
    weight_codes,
)
from reprolib.nn import Precision, set_precision, using_precision


def tiny(bits=(1, 2, 4, 8, 32), seed=0):
    torch.manual_seed(seed)
    m = models.build_model("small_cnn", in_channels=1, num_classes=10, image_size=8, width=0.25)
    return any_precision_model(m, bits)


def loader(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)),
                      batch_size=16)


# --- codes -------------------------------------------------------------------------------------

def test_truncation_table_by_hand():
    c = torch.tensor([255, 128, 127, 0], dtype=torch.uint8)
    assert truncate(c, 8, 2).tolist() == [3, 2, 1, 0]
    assert truncate(c, 8, 1).tolist() == [1, 1, 0, 0]
    assert truncate(c, 8, 4).tolist() == [15, 8, 7, 0]
    assert truncate(c, 8, 8).tolist() == [255, 128, 127, 0]
    assert truncate(torch.tensor([7, 4, 3], dtype=torch.uint8), 3, 1).tolist() == [1, 1, 0]


def test_requantize_codes_by_hand_and_thresholds():
    # 2 bits from 8: round(c·3/255); thresholds near 255/6, 255/2, 5·255/6 (not 64, 128, 192).
    c = torch.tensor([0, 42, 43, 127, 128, 212, 213, 255], dtype=torch.uint8)
    assert requantize_codes(c, 8, 2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert truncate(c, 8, 2).tolist() == [0, 0, 0, 1, 2, 3, 3, 3]


def test_code_errors():
    c = torch.tensor([1], dtype=torch.uint8)
    with pytest.raises(ValueError, match="more bits"):
        truncate(c, 2, 4)
    with pytest.raises(TypeError, match="integer"):
        truncate(torch.tensor([1.0]), 8, 2)
    with pytest.raises(ValueError, match="between 1 and 8"):
        weight_codes(torch.randn(3), 9)


def test_weight_codes_against_the_formula():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    for k in (1, 2, 3, 8):
        codes, E = weight_codes(w, k)
        t = np.tanh(w.numpy())
        expected = np.round((t / (2 * np.abs(t).max()) + 0.5) * (2**k - 1))
        np.testing.assert_array_equal(codes.numpy(), expected)
        assert codes.dtype == torch.uint8 and codes.max() <= 2**k - 1
        assert E.item() == pytest.approx(np.abs(w.numpy()).mean())
    codes, E = weight_codes(w, 1)   # 1 bit is E·sign(W)
    torch.testing.assert_close(dequantize_codes(codes, 1, E), E * torch.sign(w))


def test_dequantize_codes_by_hand():
    out = dequantize_codes(torch.tensor([0, 1, 2, 3], dtype=torch.uint8), 2, 0.3)
    torch.testing.assert_close(out, torch.tensor([-0.3, -0.1, 0.1, 0.3]))


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_quantizer_equals_codes_and_truncation_is_a_shift(k, seed):
    w = torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(seed))
    q = DoReFaWeightQuantizer()
    q.apply_precision(Precision.uniform(k))
    codes, E = weight_codes(w, k)
    torch.testing.assert_close(q(w), dequantize_codes(codes, k, E))
    assert q(w).unique().numel() <= 2**k
    q = DoReFaWeightQuantizer(semantics="truncate")
    q.apply_precision(Precision.uniform(k))
    codes8, E = weight_codes(w, 8)
    torch.testing.assert_close(q(w), dequantize_codes(codes8 >> (8 - k), k, E))


def test_weight_and_activation_ste_gradients():
    w = torch.randn(5, 3, requires_grad=True)
    q = DoReFaWeightQuantizer()
    q.apply_precision(Precision.uniform(2))
    q(w).sum().backward()
    # STE through round: d/dW of (2·w' − 1)·E with E detached, w' = tanh(W)/(2·max|tanh W|) + 1/2.
    w2 = w.detach().clone().requires_grad_()
    t = torch.tanh(w2)
    ((t / t.abs().max()) * w.detach().abs().mean()).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)
    # truncation semantics: STE through round and floor, d/dW of (2·w'·255/2^6/3 − 1)·E at 2 bits
    w.grad = None
    q = DoReFaWeightQuantizer(semantics="truncate")
    q.apply_precision(Precision.uniform(2))
    q(w).sum().backward()
    w3 = w.detach().clone().requires_grad_()
    t = torch.tanh(w3)
    ((2 * (t / (2 * t.abs().max()) + 0.5) * 255 / 64 / 3 - 1) * w.detach().abs().mean()).sum().backward()
    torch.testing.assert_close(w.grad, w3.grad)
    x = torch.tensor([-0.5, 0.2, 0.7, 1.5], requires_grad=True)
    a = ClampActQuantizer()
    a.apply_precision(Precision.uniform(2))
    y = a(x)
    torch.testing.assert_close(y, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    a.apply_precision(Precision.uniform(32))   # 32 bits is float: no clamp
    assert torch.equal(a(x), x)


# --- switchable BN -------------------------------------------------------------------------------

def test_bn_copies_keep_separate_statistics():
    sbn = SwitchableBatchNorm2d(3, [2, 8, None])
    assert sbn.bit_widths == (2, 8, 32)
    sbn.train()
    for bits, shift in ((2, 5.0), (8, -3.0)):
        sbn.apply_precision(Precision.uniform(bits))
        sbn(torch.randn(64, 3, 4, 4) + shift)
    assert sbn.bn["2"].running_mean.mean() > 0.4 and sbn.bn["8"].running_mean.mean() < -0.2
    assert torch.equal(sbn.bn["32"].running_mean, torch.zeros(3))
    with pytest.raises(ValueError, match="no BatchNorm copy for 4 bits"):
        sbn.apply_precision(Precision.uniform(4))


def test_new_bn_copies_clone_the_nearest_trained_copy_above():
    sbn = SwitchableBatchNorm2d(2, [4, 8])
    with torch.no_grad():
        sbn.bn["4"].weight.fill_(4.0)
        sbn.bn["8"].weight.fill_(8.0)
    sbn.add_copy(6)
    sbn.add_copy(5)                              # from 8 (trained), not from the added 6
    sbn.add_copy(3)
    assert sbn.bn["5"].weight.tolist() == [8.0, 8.0] and sbn.bn["3"].weight.tolist() == [4.0, 4.0]
    assert sbn.bn["5"] is not sbn.bn["8"] and sbn.bit_widths == (3, 4, 5, 6, 8)


def test_set_precision_switches_bn_and_quantizers():
    m = tiny()
    set_precision(m, 2)
    assert all(s.bits == 2 for s in m.modules() if isinstance(s, SwitchableBatchNorm2d))
    set_precision(m, None)
    assert all(s.bits == 32 for s in m.modules() if isinstance(s, SwitchableBatchNorm2d))
    assert all(q.bits is None for q in m.modules() if isinstance(q, (DoReFaWeightQuantizer, ClampActQuantizer)))


def test_calibrate_bn_equals_batch_statistics_and_leaves_other_copies():
    m = tiny()
    data = loader()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    calibrate_bn(m, [3], data, num_batches=2, device="cpu")
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # nothing else changed
    # Oracle: the 3-bit pre-BN activations of the two batches, mean and unbiased variance.
    x = torch.cat([b for b, _ in list(data)[:2]])
    feats = bn_inputs(m, x[:16], "features.8", [3])   # the BN of the 3rd conv
    assert feats[3].shape[1] == m.features[8].num_features
    sbn = m.features[1]
    with using_precision(m, 3):
        pre = m.features[0](x)
    torch.testing.assert_close(sbn.bn["3"].running_mean, pre.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sbn.bn["3"].running_var, pre.var((0, 2, 3)), rtol=1e-3, atol=1e-5)
    assert m.features[1].bits == 32   # precision restored


# --- training step -------------------------------------------------------------------------------

def test_recursive_step_losses_by_hand():
    m = tiny()
    x, y = next(iter(loader()))
    out = AnyPrecisionStep((32, 8, 1))(m, x, y)
    with torch.no_grad():
        logits = {b: m(x) for b in (32, 8, 1) if set_precision(m, b) is None}
    set_precision(m, 32)
    torch.testing.assert_close(out["loss_32bit"], F.cross_entropy(logits[32], y))
    torch.testing.assert_close(out["loss_1bit"], soft_cross_entropy(logits[1], F.softmax(logits[8], 1)))
    torch.testing.assert_close(out["loss"], out["loss_32bit"] + out["loss_8bit"] + out["loss_1bit"])
    soft = AnyPrecisionStep((32, 8, 1), distill="soft")(m, x, y)
    torch.testing.assert_close(soft["loss_1bit"], soft_cross_entropy(logits[1], F.softmax(logits[32], 1)))
    hard = AnyPrecisionStep((32, 8, 1), distill="hard")(m, x, y)
    torch.testing.assert_close(hard["loss_1bit"], F.cross_entropy(logits[1], y))
    assert m.features[1].bits == 32   # the step leaves the precision as it was
    # soft cross-entropy against one-hot targets is the cross-entropy
    torch.testing.assert_close(soft_cross_entropy(logits[1], F.one_hot(y, 10).float()), F.cross_entropy(logits[1], y))


# --- frozen models -------------------------------------------------------------------------------

def test_frozen_model_matches_training_semantics_and_has_no_float_weight():
    m = tiny()
    m.eval()
    f = freeze(m)
    layers = [mod for mod in f.modules() if isinstance(getattr(mod, "weight_quantizer", None), CodeWeightQuantizer)]
    assert len(layers) == 3 and all(layer.weight is None for layer in layers)
    x = torch.randn(8, 1, 8, 8)
    for semantics in ("truncate", "requantize"):
        set_code_semantics(m, semantics)
        set_code_semantics(f, semantics)
        for k in (1, 2, 4, 8):
            with using_precision(m, k), using_precision(f, k):
                # requantize from stored codes may differ from requantize from float only at ties
                torch.testing.assert_close(f(x), m(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="no float weight"):
        set_precision(f, 32)


def test_frozen_model_reloaded_from_disk_gives_identical_outputs(tmp_path):
    m = tiny()
    calibrate_bn(m, [3, 5, 6, 7], loader(), num_batches=1, device="cpu")
    f = freeze(m).eval()
    torch.save(f.state_dict(), tmp_path / "frozen.pt")
    skeleton = tiny(seed=1)                      # different weights, same architecture
    add_bn_copies(skeleton, [3, 5, 6, 7])
    g = freeze(skeleton).eval()
    g.load_state_dict(torch.load(tmp_path / "frozen.pt"))
    x = torch.randn(8, 1, 8, 8)
    for k in range(1, 9):
        with using_precision(f, k), using_precision(g, k):
            assert torch.equal(f(x), g(x)), k


def test_storage_bytes_counts_packed_codes():
    q = CodeWeightQuantizer(torch.zeros(10, 3, dtype=torch.uint8), torch.tensor(1.0), stored_bits=2)
    assert storage_bytes(q) == 8 + 4      # 30 codes · 2 bits = 60 bits → 8 bytes, plus E
    m = tiny()
    assert storage_bytes(freeze(m)) < storage_bytes(m)
    with pytest.raises(TypeError, match="uint8"):
        CodeWeightQuantizer(torch.zeros(3), torch.tensor(1.0))
