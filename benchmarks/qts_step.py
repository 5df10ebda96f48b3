"""A Quantization-Through-Search training step, SGT and RDHS at 1/2/3 bits, against float.

Question: what do the two gradient estimators cost in time and memory over training the same
model in float (paper Table 4: SGT 1.33–1.74×, RDHS 1.47–1.96× time)? ResNet-20, 3×32×32,
batch 128, one Adam step; memory counted as in :func:`reprolib.cost.measure_training_cost`
(saved activations + parameters, gradients and Adam state). Targets: SGT ≤ 1.10× time and
≤ 1.05× memory; RDHS ≤ 1.25× time and ≤ 1.20× memory. The detail column splits memory into what
autograd saves and the parameter state, since ``m`` logits per weight (with their gradients and
Adam's two moments) are the method's own price: 16·m bytes per weight against float's 16.
"""
from __future__ import annotations

import copy

from reprolib.cost import measure_training_cost
from reprolib.nn import quantize_model
from reprolib.qts import SearchFactory

from ._harness import Result
from ._models import batch, resnet20

TARGETS = {"sgt": (1.10, 1.05), "rdhs": (1.25, 1.20)}


def run(tiny: bool = False, repeats: int | None = None) -> list[Result]:
    repeats = repeats or (1 if tiny else 8)
    base = resnet20(tiny)
    models = {"float": base}
    for method in TARGETS:
        for bits in (1, 2, 3):
            factory = SearchFactory(values=bits, method=method)
            models[f"{method} {bits}-bit"] = quantize_model(copy.deepcopy(base), factory)
    x, y = batch(tiny)
    frame = measure_training_cost(models, x, y, repeats=repeats, warmup=1)
    results = []
    for name in list(models)[1:]:
        t_max, m_max = TARGETS[name.split()[0]]
        row = frame.loc[name]
        results.append(Result("qts_step", f"{name} time / float", float(row["time_rel"]), "×", f"≤ {t_max}×",
                              row["time_rel"] <= t_max, f"{row['ms_per_step']:.0f} ms vs float "
                              f"{frame.loc['float', 'ms_per_step']:.0f} ms"))
        base_row = frame.loc["float"]
        results.append(Result("qts_step", f"{name} memory / float", float(row["memory_rel"]), "×", f"≤ {m_max}×",
                              row["memory_rel"] <= m_max,
                              f"{row['memory_mb']:.1f} MB vs {base_row['memory_mb']:.1f} MB: saved for backward "
                              f"{row['saved_mb']:.1f} vs {base_row['saved_mb']:.1f}, parameters + gradients + "
                              f"Adam {row['state_mb']:.1f} vs {base_row['state_mb']:.1f}"))
    return results
