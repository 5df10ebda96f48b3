"""Switching a frozen Any-Precision ResNet-20 from 8 bits to a lower bit-width.

Question: is switching by truncating the stored 8-bit codes (Any-Precision's runtime switch)
faster than re-quantizing the float weights, and under 1 ms? Two switch costs are measured for
every target bit-width 1..7: ``set_precision`` alone (the layers truncate lazily, in their next
forward pass), and ``set_precision`` plus materialising every layer's runtime weight (truncate
the codes, de-quantize), the full work before the first inference. The baseline re-quantizes
each layer's float weight at the target bits (DoReFa codes from ``tanh``, then de-quantize).
"""
from __future__ import annotations

import torch

from reprolib.anyprec import add_bn_copies, any_precision_model, dequantize_codes, freeze, weight_codes
from reprolib.nn import quantized_layers, set_precision

from ._harness import Result, compare

TARGET_MS = 1.0


def run(tiny: bool = False, repeats: int | None = None) -> list[Result]:
    from ._models import resnet20

    repeats = repeats or (2 if tiny else 50)
    model = any_precision_model(resnet20(tiny)).eval()
    add_bn_copies(model, (3, 5, 6, 7), copy_from=8)   # BN for the bit-widths never trained
    frozen = freeze(model).eval()
    layers = [m for _, m in quantized_layers(frozen) if m.weight is None]
    floats = [m.weight.detach() for _, m in quantized_layers(model) if hasattr(m.weight_quantizer, "semantics")]
    worst = {"switch": 0.0, "switch+weights": 0.0, "requantize": 0.0}
    ratios = []
    with torch.no_grad():
        for bits in range(1, 8):
            state = {"at": 8}

            def switch(bits=bits, state=state) -> None:
                """One switch per call, alternately 8 → k and k → 8 (the two cost the same)."""
                state["at"] = bits if state["at"] == 8 else 8
                set_precision(frozen, state["at"])

            def switch_and_weights(bits=bits) -> None:
                set_precision(frozen, 8)   # back to 8 first: two switches timed, an upper bound
                set_precision(frozen, bits)
                for layer in layers:
                    layer.quantized_weight()

            def requantize(bits=bits) -> None:
                for w in floats:
                    codes, E = weight_codes(w, bits)
                    dequantize_codes(codes, bits, E)

            timed = compare({"requantize": requantize, "switch": switch, "switch+weights": switch_and_weights},
                            "requantize", repeats=repeats)
            for k in worst:
                worst[k] = max(worst[k], timed[k][0])
            ratios.append(timed["switch+weights"][1])
    ratio = max(ratios)
    out = [Result("anyprec_switch", "set_precision 8→k, worst k in 1..7", worst["switch"] * 1e3, "ms",
                  f"< {TARGET_MS} ms", worst["switch"] * 1e3 < TARGET_MS),
           Result("anyprec_switch", "set_precision + all runtime weights 8→k, worst k", worst["switch+weights"] * 1e3,
                  "ms", f"< {TARGET_MS} ms", worst["switch+weights"] * 1e3 < TARGET_MS),
           Result("anyprec_switch", "(switch + runtime weights) / re-quantize float weights, worst k", ratio, "×",
                  "< 1×", ratio < 1.0, f"re-quantize worst {worst['requantize'] * 1e3:.2f} ms")]
    return out
