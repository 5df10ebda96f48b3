"""The genetic mixed-precision search with the CQAP predictor, population 100 × 100 generations.

Question: is EQ-Net's search fast enough to run interactively? The fitness is a CQAP predictor
(7 × 200 MLP, untrained: training does not change what a prediction costs) for ResNet-20's
elastic layers, under an average-bit constraint of 4 bits (ResNet-20's measured layer sizes).
Target ≤ 30 s.
"""
from __future__ import annotations

import time

import torch

from reprolib.eqnet import AverageBits, CQAPPredictor, build_supernet, genetic_search, measure_costs, num_elastic_layers

from ._harness import Result
from ._models import batch, resnet20

TARGET_S = 30.0


def run(tiny: bool = False, repeats: int | None = None) -> list[Result]:
    population, generations = (8, 2) if tiny else (100, 100)
    model = resnet20(tiny)
    sample = batch(tiny)[0][:2]
    costs = measure_costs(model, sample)
    layers = num_elastic_layers(build_supernet(model, calib_batch=sample))
    torch.manual_seed(0)
    fitness = CQAPPredictor(layers).fitness(granularity="channel", w_symmetric=True, a_symmetric=False)
    t0 = time.perf_counter()
    genetic_search(fitness, AverageBits(costs, 4.0), num_layers=layers, population=population,
                   generations=generations, seed=0)
    seconds = time.perf_counter() - t0
    return [Result("ga_search", f"population {population} × {generations} generations, CQAP fitness "
                   f"({layers} layers)", seconds, "s", f"≤ {TARGET_S:.0f} s", seconds <= TARGET_S)]
