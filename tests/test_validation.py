"""Bad input at every public boundary: the right exception type, and a message that names the
argument, shows the bad value and says what is allowed.

One table, ``BAD_INPUTS``: each row builds its call lazily (models are built inside the lambda),
so a row that fails shows which boundary let the value through.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from reprolib import claims, data, eqnet, models, notebook, qts, train
from reprolib.anyprec import AnyPrecisionStep, SwitchableBatchNorm2d, any_precision_model, qfn, truncate, weight_codes
from reprolib.nn import LSQFactory, LSQQuantizer, Precision, quantize_model, set_precision
from reprolib.quant import fake_quantize, qrange
from reprolib.validate import check_int, check_ints, check_real


def small_cnn():
    torch.manual_seed(0)
    return models.build_model("small_cnn", in_channels=1, num_classes=10, image_size=8, width=0.25)


def lsq_model(bits=4):
    return quantize_model(small_cnn(), LSQFactory(bits=bits))


def setup(tmp, **kwargs):
    return notebook.setup("00_test", results_dir=tmp, **kwargs)



BAD_INPUTS = [
    # -- quant: bit-widths --------------------------------------------------------------------------
    ("qrange bits 0", lambda t: qrange(0), ValueError, r"bits must be between 1 and 32, got 0"),
    ("fake_quantize bits 33", lambda t: fake_quantize(torch.ones(3), 0.1, 0.0, 33), ValueError, r"got 33"),
    ("fake_quantize bits 2.5", lambda t: fake_quantize(torch.ones(3), 0.1, 0.0, 2.5), TypeError, r"got 2\.5 \(float\)"),
    ("fake_quantize bits '4'", lambda t: fake_quantize(torch.ones(3), 0.1, 0.0, "4"), TypeError, r"got '4' \(str\)"),
    # -- quant: step, zero point, input --------------------------------------------------------------
    pytest.param("fake_quantize step 0", lambda t: fake_quantize(torch.ones(3), 0.0, 0.0, 4), ValueError,
                 r"step.*positive.*got 0\.0"),
    pytest.param("fake_quantize step -0.1", lambda t: fake_quantize(torch.ones(3), -0.1, 0.0, 4), ValueError,
                 r"step.*positive.*got -0\.1"),
    pytest.param("fake_quantize step nan", lambda t: fake_quantize(torch.ones(3), float("nan"), 0.0, 4), ValueError,
                 r"step.*got nan"),
    pytest.param("fake_quantize step not broadcastable",
                 lambda t: fake_quantize(torch.ones(3, 4), torch.full((5,), 0.1), 0.0, 4), ValueError,
                 r"step.*\(5,\).*\(3, 4\)"),
    pytest.param("fake_quantize step would grow x",
                 lambda t: fake_quantize(torch.ones(3), torch.full((2, 3), 0.1), 0.0, 4), ValueError,
                 r"step.*\(2, 3\).*\(3,\)"),
    pytest.param("fake_quantize zero_point not broadcastable",
                 lambda t: fake_quantize(torch.ones(3, 4), 0.1, torch.ones(5), 4), ValueError,
                 r"zero_point.*\(5,\)"),
    pytest.param("fake_quantize integer x", lambda t: fake_quantize(torch.arange(3), 0.1, 0.0, 4), TypeError,
                 r"x must be a floating-point tensor.*int64"),
    pytest.param("fake_quantize list x", lambda t: fake_quantize([1.0, 2.0], 0.1, 0.0, 4), TypeError,
                 r"x must be a floating-point (torch\.)?[Tt]ensor.*list"),
    # -- nn ------------------------------------------------------------------------------------------
    ("Precision w_bits 0", lambda t: Precision(w_bits=0), ValueError, r"w_bits must be between 1 and 32.*got 0"),
    ("Precision a_bits 2.5", lambda t: Precision(a_bits=2.5), TypeError, r"a_bits .*got 2\.5 \(float\)"),
    ("Precision granularity", lambda t: Precision(granularity="group"), ValueError,
     r"granularity must be 'channel' or 'tensor', got 'group'"),
    ("Precision w_symmetric 'yes'", lambda t: Precision(w_symmetric="yes"), TypeError,
     r"w_symmetric must be True or False, got 'yes' \(str\)"),
    ("LSQQuantizer bits 33", lambda t: LSQQuantizer("weight", 33, channels=4), ValueError, r"bits .*got 33"),
    ("LSQQuantizer bits ()", lambda t: LSQQuantizer("weight", (), channels=4), ValueError, r"at least one bit-width"),
    ("LSQQuantizer channels 0", lambda t: LSQQuantizer("weight", 4, channels=0), ValueError,
     r"channels must be an int >= 1, got 0"),
    ("LSQQuantizer role", lambda t: LSQQuantizer("bias", 4), ValueError, r"role must be 'weight' or 'act', got 'bias'"),
    ("LSQFactory bits 2.5", lambda t: LSQFactory(bits=2.5), TypeError, r"bits .*got 2\.5 \(float\)"),
    ("set_precision 2.5", lambda t: set_precision(lsq_model(), 2.5), TypeError, r"got 2\.5 \(float\)"),
    ("set_precision unsupported bits", lambda t: set_precision(lsq_model(4), 2), ValueError,
     r"built for bits \(4,\), got 2"),
    ("set_precision layer count", lambda t: set_precision(lsq_model(), [4]), ValueError,
     r"got 1 per-layer precisions but the model has 3 quantized layers"),
    ("quantize_model skip str", lambda t: quantize_model(small_cnn(), LSQFactory(), skip="features.3"), TypeError,
     r"skip must be a sequence of layer names.*\['features\.3'\]"),
    # -- models --------------------------------------------------------------------------------------
    ("build_model unknown", lambda t: models.build_model("resnet18", in_channels=3, num_classes=10, image_size=32),
     ValueError, r"unknown model 'resnet18'; choose one of \['resnet20', 'small_cnn', 'vgg_small'\]"),
    ("build_model width 0", lambda t: models.build_model("small_cnn", in_channels=1, num_classes=10, image_size=8,
                                                         width=0),
     ValueError, r"width must be a finite number > 0, got 0"),
    ("build_model width '1'", lambda t: models.build_model("small_cnn", in_channels=1, num_classes=10, image_size=8,
                                                           width="1"), TypeError, r"width .*got '1' \(str\)"),
    ("build_model in_channels 0", lambda t: models.build_model("resnet20", in_channels=0, num_classes=10,
                                                               image_size=32), ValueError, r"in_channels .*got 0"),
    ("VGGSmall image_size 12", lambda t: models.VGGSmall(image_size=12), ValueError, r"multiple of 8, got 12"),
    # -- data ----------------------------------------------------------------------------------------
    ("get_loaders unknown dataset", lambda t: data.get_loaders("imagenet"), ValueError,
     r"unknown dataset 'imagenet'; choose one of \['cifar10', 'digits', 'mnist', 'svhn'\]"),
    ("get_loaders batch_size 0", lambda t: data.get_loaders("digits", batch_size=0), ValueError,
     r"batch_size must be an int >= 1, got 0"),
    ("get_loaders batch_size 2.5", lambda t: data.get_loaders("digits", batch_size=2.5), TypeError,
     r"batch_size .*got 2\.5 \(float\)"),
    # -- notebook parameters (the cell after the parameters cell) ------------------------------------
    ("setup dataset", lambda t: setup(t, dataset="cifar"), ValueError, r"parameter dataset='cifar' is unknown"),
    ("setup quick 'yes'", lambda t: setup(t, quick="yes"), TypeError, r"parameter quick must be True or False"),
    ("setup seed -1", lambda t: setup(t, seed=-1), ValueError, r"parameter seed must be a non-negative int, got -1"),
    ("setup epochs 0", lambda t: setup(t, epochs=0), ValueError, r"parameter epochs must be a positive int, got 0"),
    ("setup epochs 2.5", lambda t: setup(t, epochs=2.5), ValueError, r"parameter epochs .*got 2\.5 \(float\)"),
    ("setup epochs above bound", lambda t: setup(t, epochs=1000, bounds={"epochs": (1, 500)}), ValueError,
     r"parameter epochs must be an int in 1\.\.500, got 1000"),
    ("setup width below bound", lambda t: setup(t, width=0.0, bounds={"width": (0.05, 4.0)}), ValueError,
     r"parameter width must be a finite number in \[0\.05, 4\], got 0\.0"),
    ("setup bound of a missing parameter", lambda t: setup(t, bounds={"epohcs": (1, 5)}), ValueError,
     r"bounds name parameters that were not passed to setup: \['epohcs'\]"),
    ("setup device 'tpu'", lambda t: setup(t, device="tpu"), ValueError, r"parameter device='tpu' is not a device"),
    # -- claims --------------------------------------------------------------------------------------
    ("record claim_id", lambda t: claims.record("foo", paper=1, ours=1, holds=True, results_dir=t), ValueError,
     r"claim_id must look like '<paper>\.<name>'.*got 'foo'"),
    ("record holds", lambda t: claims.record("qts.x", paper=1, ours=1, holds="yes", results_dir=t), ValueError,
     r"holds must be True, False, None or one of .*got 'yes'"),
    # -- EQ-Net --------------------------------------------------------------------------------------
    ("ElasticQuantizer bits 1", lambda t: eqnet.ElasticQuantizer("act", (1, 4)), ValueError,
     r"bit_widths\[0\] must be an int in 2\.\.16, got 1"),
    ("ElasticQuantizer bits 2.5", lambda t: eqnet.ElasticQuantizer("act", (2.5,)), TypeError,
     r"bit_widths\[0\] .*got 2\.5 \(float\)"),
    ("ElasticQuantizer bits '48'", lambda t: eqnet.ElasticQuantizer("act", "48"), TypeError,
     r"bit_widths must be a sequence of ints"),
    ("SubnetConfig bits 9", lambda t: eqnet.SubnetConfig((9,), (4,)), ValueError,
     r"w_bits has bit-widths \[9\] outside BIT_CHOICES"),
    ("SubnetConfig lengths", lambda t: eqnet.SubnetConfig((4, 4), (4,)), ValueError, r"got 2 and 1"),
    ("apply_config layer count", lambda t: eqnet.apply_config(eqnet.build_supernet(small_cnn()),
                                                              eqnet.SubnetConfig.uniform(2, 4)), ValueError,
     r"the config has 2 layers but the supernet has 3 elastic layers"),
    ("sample_random n_layers 0", lambda t: eqnet.sample_random(0, random.Random(0)), ValueError,
     r"n_layers must be an int >= 1, got 0"),
    ("make_supernet_step lam 3", lambda t: eqnet.make_supernet_step(lam=3), ValueError,
     r"lam must be a finite number in \[0, 1\], got 3"),
    ("wdr_loss no tensors", lambda t: eqnet.wdr_loss([]), ValueError, r"at least one weight tensor"),
    ("wdr_loss one tensor", lambda t: eqnet.wdr_loss(torch.randn(5)), TypeError, r"not one tensor; use \[w\]"),
    ("wdr_loss integer weights", lambda t: eqnet.wdr_loss([torch.ones(5, dtype=torch.long)]), TypeError,
     r"w must be a floating-point tensor, got dtype torch\.int64"),
    ("wdr_loss kurtosis_target nan", lambda t: eqnet.wdr_loss([torch.randn(5)], kurtosis_target=float("nan")),
     ValueError, r"kurtosis_target must be a finite number, got nan"),
    ("skewness empty", lambda t: eqnet.skewness(torch.empty(0)), ValueError, r"at least 2 elements, got a tensor of 0"),
    ("CQAPPredictor bit_choices unsorted", lambda t: eqnet.CQAPPredictor(3, bit_choices=(4, 2)), ValueError,
     r"bit_choices must be strictly increasing \(sorted, no repeats\), got \(4, 2\)"),
    ("AverageBits costs", lambda t: eqnet.AverageBits(None, 4), TypeError, r"costs must be a CostModel"),
    ("mutate prob 2", lambda t: eqnet.mutate(np.zeros((2, 2), int), np.random.default_rng(0), prob=2, num_choices=3),
     ValueError, r"prob must be a finite number in \[0, 1\], got 2"),
    # -- Any-Precision -------------------------------------------------------------------------------
    ("weight_codes bits 9", lambda t: weight_codes(torch.randn(4), 9), ValueError,
     r"bits must be between 1 and 8, got 9"),
    ("weight_codes NaN weight", lambda t: weight_codes(torch.tensor([0.5, float("nan")]), 4), ValueError,
     r"w holds NaN"),
    ("truncate to more bits", lambda t: truncate(torch.zeros(2, dtype=torch.uint8), 4, 8), ValueError,
     r"cannot truncate 4-bit codes to more bits \(8\)"),
    ("truncate float codes", lambda t: truncate(torch.zeros(2), 8, 4), TypeError,
     r"codes must be an integer tensor.*torch\.float32"),
    ("truncate codes out of range", lambda t: truncate(torch.tensor([0, 300]), 8, 4), ValueError,
     r"codes of 8 bits must lie in \[0, 255\], got values in \[0, 300\]"),
    ("qfn bits 0", lambda t: qfn(torch.rand(3), 0), ValueError, r"bits must be an int in 1\.\.31, got 0"),
    ("SwitchableBatchNorm2d bits 0", lambda t: SwitchableBatchNorm2d(4, (0, 8)), ValueError,
     r"bit-widths must be ints in 1\.\.32 or None \(float\), got 0"),
    ("Any-Precision bits without a BN copy", lambda t: set_precision(any_precision_model(small_cnn(), (2, 8)), 3),
     ValueError, r"no BatchNorm copy for 3 bits.*calibrate_bn"),
    ("AnyPrecisionStep distill", lambda t: AnyPrecisionStep(distill="x"), ValueError,
     r"distill must be 'recursive', 'soft' or 'hard', got 'x'"),
    # -- QTS -----------------------------------------------------------------------------------------
    ("resolve_values unsorted", lambda t: qts.resolve_values((1.0, -1.0)), ValueError,
     r"strictly increasing \(sorted, no repeats\), got \(1\.0, -1\.0\)"),
    ("resolve_values repeats", lambda t: qts.resolve_values((-1.0, 1.0, 1.0)), ValueError, r"no repeats"),
    ("resolve_values unknown bit-width", lambda t: qts.resolve_values(4), ValueError,
     r"values=4 is not a known bit-width; use one of \[1, 2, 3\]"),
    ("resolve_values str", lambda t: qts.resolve_values("12"), TypeError, r"got '12' \(str\)"),
    ("rdhs_select unsorted tensor values", lambda t: qts.rdhs_select(torch.zeros(3, 2), torch.tensor([1.0, -1.0])),
     ValueError, r"strictly increasing"),
    ("rdhs_select logit count", lambda t: qts.rdhs_select(torch.zeros(3, 3), (-1.0, 1.0)), ValueError,
     r"one logit per value: alpha \(3, 3\), 2 values"),
    ("sgt_select integer logits", lambda t: qts.sgt_select(torch.zeros(3, 2, dtype=torch.long), (-1.0, 1.0)),
     TypeError, r"alpha must be a floating-point tensor, got dtype torch\.int64"),
    ("SearchFactory init_noise", lambda t: qts.SearchFactory(init_noise=-1.0), ValueError,
     r"init_noise must be a finite number >= 0, got -1\.0"),
    # -- train ---------------------------------------------------------------------------------------
    ("TrainConfig seed -1", lambda t: train.TrainConfig(seed=-1), ValueError, r"seed must be an int >= 0, got -1"),
    ("TrainConfig lr inf", lambda t: train.TrainConfig(lr=float("inf")), ValueError, r"lr must be a finite number > 0"),
    ("TrainConfig lr str", lambda t: train.TrainConfig(lr="0.1"), TypeError, r"lr must be .*got '0\.1' \(str\)"),
    ("TrainConfig momentum", lambda t: train.TrainConfig(momentum=-0.1), ValueError, r"momentum .*got -0\.1"),
    ("TrainConfig weight_decay", lambda t: train.TrainConfig(weight_decay=-1e-4), ValueError, r"weight_decay"),
    ("TrainConfig gamma 0", lambda t: train.TrainConfig(gamma=0), ValueError, r"gamma must be a finite number > 0"),
    ("TrainConfig milestones unsorted", lambda t: train.TrainConfig(milestones=(5, 3)), ValueError,
     r"milestones must be strictly increasing"),
    ("TrainConfig device tpu", lambda t: train.TrainConfig(device="tpu"), ValueError, r"device must be .*'tpu'"),
    ("TrainConfig optimizer", lambda t: train.TrainConfig(optimizer="adamw"), ValueError,
     r"optimizer must be one of \('adam', 'sgd'\), got 'adamw'"),
    ("resolve_device int", lambda t: train.resolve_device(5), TypeError, r"device must be .*got 5 \(int\)"),
    ("seed_everything float", lambda t: train.seed_everything(2.5), TypeError, r"seed must be an int >= 0, got 2\.5"),
    ("recalibrate_bn num_batches 0", lambda t: train.recalibrate_bn(torch.nn.BatchNorm2d(2), [], num_batches=0),
     ValueError, r"num_batches must be an int >= 1, got 0"),
    ("fit config dict", lambda t: train.fit(torch.nn.Linear(2, 2), [(torch.zeros(1, 2), torch.zeros(1))],
                                            config={"epochs": 1}), TypeError, r"config must be a TrainConfig"),
    ("fit step not callable", lambda t: train.fit(torch.nn.Linear(2, 2), [(torch.zeros(1, 2), torch.zeros(1))],
                                                  step="ce"), TypeError, r"step must be a callable"),
]


def _id(row) -> str:
    return (row.values if hasattr(row, "values") else row)[0]


@pytest.mark.parametrize("name,call,exc,message", BAD_INPUTS, ids=[_id(r) for r in BAD_INPUTS])
def test_bad_input_is_rejected_with_a_clear_message(name, call, exc, message, tmp_path):
    with pytest.raises(exc, match=message):
        call(tmp_path)


def test_the_table_is_large_enough():
    assert len(BAD_INPUTS) >= 30


# -- the checkers themselves ---------------------------------------------------------------------------
@pytest.mark.parametrize("value,low,high", [(1, 1, 8), (8, 1, 8), (np.int64(3), 1, None), (-5, None, 0)])
def test_check_int_accepts(value, low, high):
    assert check_int("n", value, low=low, high=high) == int(value)
    assert type(check_int("n", value, low=low, high=high)) is int


@pytest.mark.parametrize("value,exc,message", [
    (True, TypeError, r"n must be an int in 1\.\.8, got True \(bool\)"),
    (2.0, TypeError, r"got 2\.0 \(float\)"),
    (0, ValueError, r"n must be an int in 1\.\.8, got 0 \(int\)"),
    (9, ValueError, r"got 9"),
])
def test_check_int_rejects(value, exc, message):
    with pytest.raises(exc, match=message):
        check_int("n", value, low=1, high=8)


@pytest.mark.parametrize("value,kwargs,ok", [
    (0.5, {"low": 0, "high": 1}, True), (0, {"low": 0, "low_open": True}, False),
    (1, {"high": 1, "high_open": True}, False),
    (float("inf"), {}, False), (float("nan"), {"low": 0}, False), (1e300, {}, True), (-1e-300, {"low": 0}, False),
])
def test_check_real_bounds(value, kwargs, ok):
    if ok:
        assert check_real("x", value, **kwargs) == value
    else:
        with pytest.raises(ValueError, match=r"x must be a finite number"):
            check_real("x", value, **kwargs)


def test_check_ints():
    assert check_ints("b", [2, 4, 8], increasing=True) == (2, 4, 8)
    assert check_ints("b", np.array([3, 1])) == (3, 1)
    assert check_ints("b", torch.tensor([5])) == (5,)
    with pytest.raises(TypeError, match=r"b must be a sequence of ints, got 4 \(int\)"):
        check_ints("b", 4)
    with pytest.raises(TypeError, match=r"b\[1\] must be an int"):
        check_ints("b", [1, 2.5])
    with pytest.raises(ValueError, match="at least one"):
        check_ints("b", [])
    with pytest.raises(ValueError, match=r"strictly increasing.*\(2, 2\)"):
        check_ints("b", (2, 2), increasing=True)


def test_setup_accepts_parameters_within_their_bounds(tmp_path):
    nb = notebook.setup("00_test", results_dir=tmp_path, epochs=3, width=0.25, seed=7,
                        bounds={"epochs": (1, 500), "width": (0.05, 4.0), "seed": (0, 100)})
    assert (nb.seed, nb.results_dir) == (7, tmp_path)
    with pytest.raises(ValueError, match=r"parameter seed must be an int in 0\.\.100, got 101"):
        notebook.setup("00_test", results_dir=tmp_path, seed=101, bounds={"seed": (0, 100)})
    with pytest.raises(TypeError, match=r"parameter epochs must be an int in 1\.\.5, got 2\.5"):
        notebook.setup("00_test", results_dir=tmp_path, epochs=2.5, bounds={"epochs": (1, 5)})
