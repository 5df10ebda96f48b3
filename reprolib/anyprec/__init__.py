"""Any-Precision Deep Neural Networks (Yu, Li, Chen, Huang, Shi; AAAI 2021).

One set of weights, stored as 8-bit DoReFa codes, runs at any bit-width from 1 to 8 by dropping
least significant bits at runtime. The pieces, one module each:

* :mod:`.codes`    DoReFa weight codes (``weight_codes``, ``dequantize_codes``), ``truncate`` and
                   the authors' re-quantization, the weight and activation quantizers (STE);
* :mod:`.bn`       ``SwitchableBatchNorm2d`` (one BN per bit-width, chosen by ``set_precision``)
                   and BN calibration for bit-widths never trained;
* :mod:`.training` the model converter and the recursive-distillation step for ``fit``;
* :mod:`.frozen`   freezing a trained model to codes, and its storage size.

    model = any_precision_model(build_model("small_cnn", **info.model_kwargs()))
    fit(model, train, step=AnyPrecisionStep((32, 8, 4, 2, 1)))
    frozen = freeze(model)                  # uint8 codes + E + every BN copy
    set_precision(frozen, 3)                # c_3 = c_8 >> 5, no data, no float weight
"""
from .bn import SwitchableBatchNorm2d, add_bn_copies, bn_inputs, calibrate_bn, switchable_bn
from .codes import (
    FLOAT_BITS,
    SEMANTICS,
    ClampActQuantizer,
    DoReFaWeightQuantizer,
    convert_codes,
    dequantize_codes,
    effective_bits,
    normalized_weight,
    qfn,
    requantize_codes,
    set_code_semantics,
    truncate,
    weight_codes,
)
from .frozen import CodeWeightQuantizer, RuntimeView, freeze, runtime_view, storage_bytes
from .training import (
    CANDIDATE_BITS,
    AnyPrecisionFactory,
    AnyPrecisionStep,
    accuracy_by_bits,
    any_precision_model,
    soft_cross_entropy,
)

__all__ = [
    "FLOAT_BITS", "SEMANTICS", "CANDIDATE_BITS",
    "qfn", "normalized_weight", "weight_codes", "truncate", "requantize_codes", "convert_codes",
    "dequantize_codes", "effective_bits", "DoReFaWeightQuantizer", "ClampActQuantizer",
    "set_code_semantics",
    "SwitchableBatchNorm2d", "switchable_bn", "add_bn_copies", "calibrate_bn", "bn_inputs",
    "AnyPrecisionFactory", "any_precision_model", "soft_cross_entropy", "AnyPrecisionStep",
    "accuracy_by_bits",
    "CodeWeightQuantizer", "freeze", "storage_bytes", "RuntimeView", "runtime_view",
]
