"""One LSQ quantization-aware training step of ResNet-20 against the same step in float.

Question: what does quantization-aware training cost over float training? ResNet-20 on
3×32×32 inputs, batch 128, 4-bit weights (per channel) and activations with learned LSQ steps
(first and last layer float), one Adam step. Target ≤ 1.3×.
"""
from __future__ import annotations

import copy

from reprolib.cost import measure_training_cost
from reprolib.nn import LSQFactory, quantize_model

from ._harness import Result
from ._models import batch, resnet20

TARGET = 1.3


def run(tiny: bool = False, repeats: int | None = None) -> list[Result]:
    repeats = repeats or (1 if tiny else 12)
    model = resnet20(tiny)
    lsq = quantize_model(copy.deepcopy(model), LSQFactory(bits=4))
    x, y = batch(tiny)
    frame = measure_training_cost({"float": model, "lsq": lsq}, x, y, repeats=repeats, warmup=1)
    ratio = float(frame.loc["lsq", "time_rel"])
    return [Result("lsq_step", "ResNet-20 W4A4 LSQ step / float step, batch 128", ratio, "×", f"≤ {TARGET}×",
                   ratio <= TARGET,
                   f"LSQ {frame.loc['lsq', 'ms_per_step']:.0f} ms vs float {frame.loc['float', 'ms_per_step']:.0f} ms")]
