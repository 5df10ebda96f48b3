"""One EQ-Net supernet step against three single-configuration LSQ QAT steps.

Question: is training the elastic supernet (WDR + the H, R and L subnets on one batch, their
losses summed, one backward and one Adam step) any dearer than training three fixed-precision
LSQ models one step each? ResNet-20, 3×32×32, batch 128; the LSQ model steps at 8, 4 and 2
bits, the three precisions the supernet visits. Target ≤ 1.10×.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from reprolib.eqnet import build_supernet, make_supernet_step
from reprolib.nn import LSQFactory, quantize_model, set_precision

from ._harness import Result, compare, ms
from ._models import batch, resnet20

TARGET = 1.10


def run(tiny: bool = False, repeats: int | None = None) -> list[Result]:
    repeats = repeats or (1 if tiny else 20)   # the random subnet's form varies the step: many rounds
    x, y = batch(tiny)
    float_model = resnet20(tiny)
    supernet = build_supernet(copy.deepcopy(float_model), calib_batch=x[:32])
    lsq = quantize_model(copy.deepcopy(float_model), LSQFactory(bits=(2, 4, 8)))
    step = make_supernet_step(guidance="gpg", seed=0)
    opt_s = torch.optim.Adam(supernet.parameters(), lr=1e-3)
    opt_l = torch.optim.Adam(lsq.parameters(), lr=1e-3)
    supernet.train()
    lsq.train()

    def eqnet_step() -> None:
        opt_s.zero_grad(set_to_none=True)
        step(supernet, x, y)["loss"].backward()
        torch.nn.utils.clip_grad_value_(supernet.parameters(), 1.0)
        opt_s.step()

    def three_lsq_steps() -> None:
        for bits in (8, 4, 2):
            set_precision(lsq, bits)
            opt_l.zero_grad(set_to_none=True)
            F.cross_entropy(lsq(x), y).backward()
            torch.nn.utils.clip_grad_value_(lsq.parameters(), 1.0)
            opt_l.step()

    timed = compare({"lsq×3": three_lsq_steps, "eqnet": eqnet_step}, "lsq×3", repeats=repeats, warmup=1)
    ratio = timed["eqnet"][1]
    return [Result("eqnet_step", "ResNet-20 supernet step (WDR + H/R/L) / 3 LSQ steps (8/4/2 bits)", ratio, "×",
                   f"≤ {TARGET}×", ratio <= TARGET,
                   f"supernet {ms(timed['eqnet'][0])} vs 3 LSQ steps {ms(timed['lsq×3'][0])}")]
