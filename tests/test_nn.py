"""Quantized layers, the model converter and set_precision."""
import math

import pytest
import torch
from torch import nn

from reprolib import models
from reprolib.nn import (
    LSQFactory,
    LSQQuantizer,
    Precision,
    QuantConv2d,
    QuantLinear,
    quantize_model,
    quantized_layers,
    set_precision,
    using_precision,
)
from reprolib.quant import fake_quantize, lsq_init_step


def small(bits=(2, 4, 8)):
    torch.manual_seed(0)
    m = models.build_model("small_cnn", in_channels=1, num_classes=10, image_size=8, width=0.25)
    return quantize_model(m, LSQFactory(bits=bits))


def test_quantize_model_keeps_first_and_last_float():
    m = small()
    convs = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    assert not isinstance(convs[0], QuantConv2d) and not isinstance(convs[-1], QuantLinear)
    assert all(isinstance(c, QuantConv2d) for c in convs[1:-1])
    assert [n for n, _ in quantized_layers(m)] == ["features.3", "features.7", "features.10"]
    assert m(torch.randn(5, 1, 8, 8)).shape == (5, 10)


def test_quantize_model_options_and_shared_weights():
    torch.manual_seed(0)
    m = models.build_model("small_cnn", in_channels=1, num_classes=10, image_size=8, width=0.25)
    w = m.features[3].weight
    quantize_model(m, LSQFactory(bits=4), keep_first=False, keep_last=False, skip=["features.7"])
    assert m.features[3].weight is w  # parameters are shared, not copied
    assert isinstance(m.features[0], QuantConv2d) and isinstance(m.classifier, QuantLinear)
    assert not isinstance(m.features[7], QuantConv2d)
    with pytest.raises(ValueError, match="does not have"):
        quantize_model(models.SmallCNN(), LSQFactory(), skip=["nope"])


def test_float_precision_equals_float_model():
    torch.manual_seed(0)
    ref = models.build_model("resnet20", in_channels=3, num_classes=10, image_size=32, width=0.5).eval()
    float_model = models.build_model("resnet20", in_channels=3, num_classes=10, image_size=32, width=0.5)
    q = quantize_model(float_model, LSQFactory(bits=4)).eval()
    q.load_state_dict(ref.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    set_precision(q, None)
    torch.testing.assert_close(q(x), ref(x))
    set_precision(q, 4)
    assert not torch.allclose(q(x), ref(x))


def test_quant_conv_computes_with_quantized_weight_and_input():
    conv = nn.Conv2d(3, 4, 3, bias=False)
    wq, aq = LSQQuantizer("weight", 4, channels=4), LSQQuantizer("act", 4)
    layer = QuantConv2d.from_float(conv, wq, aq)
    x = torch.rand(2, 3, 5, 5)
    out = layer(x)
    s_w, s_a = wq.step(), aq.step()
    expect = nn.functional.conv2d(fake_quantize(x, s_a, 0, 4, False), fake_quantize(conv.weight, s_w, 0, 4, True))
    torch.testing.assert_close(out, expect)
    torch.testing.assert_close(s_w, lsq_init_step(conv.weight, 4, dim=0))


def test_lsq_step_gradient_is_scaled():
    """∂L/∂log s = s · g · ∂L/∂s, with ∂L/∂s from fake_quantize and g = 1/sqrt(numel · q_max)."""
    w = torch.randn(8, 4, 3, 3)
    q = LSQQuantizer("weight", 4)
    q(w)  # initialise
    q.log_step["4"].grad = None
    q(w).sum().backward()
    s = q.step().clone().requires_grad_()
    fake_quantize(w, s, 0, 4).sum().backward()
    expected = s.item() * s.grad.item() / math.sqrt(w.numel() * 7)
    assert q.log_step["4"].grad.item() == pytest.approx(expected, rel=1e-5)


def test_lsq_steps_stay_positive_under_adam():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3) * 0.05
    q = LSQQuantizer("weight", 8, channels=16)
    q(w)
    opt = torch.optim.Adam(q.parameters(), lr=3e-3)
    for _ in range(200):  # a loss that pushes every step towards zero
        opt.zero_grad()
        q(w).pow(2).sum().neg().backward()
        opt.step()
    assert (q.step() > 0).all()


def test_set_precision_uniform_per_layer_and_errors():
    m = small()
    set_precision(m, 2)
    assert all(q.bits == 2 for q in m.modules() if isinstance(q, LSQQuantizer))
    set_precision(m, [Precision(w_bits=8, a_bits=4), 2, None])
    layers = [layer for _, layer in quantized_layers(m)]
    assert (layers[0].weight_quantizer.bits, layers[0].act_quantizer.bits) == (8, 4)
    assert layers[1].weight_quantizer.bits == 2 and layers[2].weight_quantizer.bits is None
    with pytest.raises(ValueError, match="3 quantized layers"):
        set_precision(m, [2, 2])
    with pytest.raises(ValueError, match="built for bits"):
        set_precision(m, 3)
    with pytest.raises(TypeError):
        set_precision(m, "4")
    with pytest.raises(ValueError, match="w_bits"):
        Precision(w_bits=0)
    with pytest.raises(ValueError, match="granularity"):
        Precision(granularity="row")


def test_using_precision_restores():
    m = small()
    set_precision(m, [2, 4, 8])
    with using_precision(m, 8):
        assert all(q.bits == 8 for q in m.modules() if isinstance(q, LSQQuantizer))
    assert [layer.weight_quantizer.bits for _, layer in quantized_layers(m)] == [2, 4, 8]


def test_lsq_quantized_output_has_few_levels():
    m = small(bits=2).eval()
    layer = quantized_layers(m)[0][1]
    m(torch.randn(4, 1, 8, 8))
    assert layer.quantized_weight()[0].unique().numel() <= 4
