"""EQ-Net accounting, CQAP predictor and genetic search (reprolib.eqnet.accounting/predictor/search)."""
from __future__ import annotations

import random
import time
from itertools import pairwise

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

from reprolib import eqnet as E
from reprolib.train import TrainConfig


class Toy(nn.Module):
    """conv 1→2 (3×3, pad 1, 6×6) → conv 2→4 (3×3, stride 2, pad 1) → conv 4→4 (1×1) → pool → linear 4→3."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False)
        self.c3 = nn.Conv2d(4, 4, 1, bias=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def costs() -> E.CostModel:
    return E.measure_costs(Toy(), torch.randn(5, 1, 6, 6))


def test_costs_match_hand_counts(costs):
    # c1: 2·1·9 = 18 params; output 2×6×6 = 72 values × 9 MACs each; input 1×6×6 = 36.
    # c2: 4·2·9 = 72 params; output 4×3×3 = 36 values × 18 MACs; input 2×6×6 = 72.
    # c3: 4·4 = 16 params; output 4×3×3 = 36 values × 4 MACs; input 4×3×3 = 36.
    # fc: 3·4 = 12 params and MACs; input 4.
    got = [(c.name, c.params, c.macs, c.act_numel) for c in costs.layers]
    assert got == [("c1", 18, 648, 36), ("c2", 72, 648, 72), ("c3", 16, 144, 36), ("fc", 12, 12, 4)]
    assert [c.name for c in costs.elastic] == ["c2", "c3"]


def test_averages_and_bitops_by_hand(costs):
    w, a = (2, 8), (4, 6)
    assert costs.average_weight_bits(w) == pytest.approx((72 * 2 + 16 * 8) / 88)
    assert costs.average_act_bits(a) == pytest.approx((72 * 4 + 36 * 6) / 108)
    assert costs.bitops(w, a) == pytest.approx(648 * 2 * 4 + 144 * 8 * 6 + (648 + 12) * 64)
    cfg = E.SubnetConfig((2, 8), (4, 6))
    assert costs.of(cfg) == pytest.approx({"avg_w_bits": (72 * 2 + 16 * 8) / 88,
                                           "avg_a_bits": (72 * 4 + 36 * 6) / 108,
                                           "bitops": costs.bitops(w, a)})


def test_population_accounting_matches_rows(costs):
    rng = np.random.default_rng(0)
    w, a = rng.choice(E.BIT_CHOICES, (6, 2)), rng.choice(E.BIT_CHOICES, (6, 2))
    rows = np.array([costs.bitops(wi, ai) for wi, ai in zip(w, a, strict=True)])
    np.testing.assert_allclose(costs.bitops(w, a), rows)
    with pytest.raises(ValueError, match="one entry per elastic layer"):
        costs.bitops((2, 3, 4), (2, 3, 4))


def test_costs_of_a_supernet_match_the_float_model():
    float_costs = E.measure_costs(Toy(), torch.randn(2, 1, 6, 6))
    supernet = E.build_supernet(Toy(), calib_batch=torch.randn(8, 1, 6, 6))
    assert E.measure_costs(supernet, torch.randn(2, 1, 6, 6)) == float_costs
    assert float_costs.num_elastic == E.num_elastic_layers(supernet)


# --- CQAP encoding and predictor -------------------------------------------------------------


def test_encoding_flags_and_one_hot():
    x = E.encode_bits([[2, 8]], [[5, 3]], granularity="tensor", w_symmetric=False, a_symmetric=True)
    k = len(E.BIT_CHOICES)
    assert x.shape == (1, 3 + 2 * 2 * k)
    assert x[0, :3].tolist() == [0.0, 1.0, 0.0]  # per-tensor, weights asymmetric (the authors never set it)
    onehot = x[0, 3:].view(4, k)
    assert onehot.sum(1).tolist() == [1.0] * 4
    assert [E.BIT_CHOICES[i] for i in onehot.argmax(1).tolist()] == [2, 8, 5, 3]
    cfg = E.SubnetConfig((2, 8), (5, 3), granularity="channel", a_symmetric=False)
    assert E.encode_configs([cfg])[0, :3].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="not among the bit choices"):
        E.encode_bits([[1, 8]], [[5, 3]], granularity="tensor", w_symmetric=True, a_symmetric=True)


def test_predictor_shape_and_rank_correlation_oracle():
    p = E.CQAPPredictor(3, depth=2, width=16)
    assert len([m for m in p.mlp if isinstance(m, nn.Linear)]) == 3
    assert p(torch.zeros(5, p.in_features)).shape == (5,)
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=30), rng.normal(size=30)
    r = E.rank_correlation(u, v)
    assert r["pearson"] == pytest.approx(np.corrcoef(u, v)[0, 1])
    assert r["kendall"] == pytest.approx(stats.kendalltau(u, v)[0])


def test_predictor_learns_an_additive_accuracy_model():
    """Accuracy = 60 + 4·mean bits (+ 3 for per-channel): the MLP must rank unseen configs well."""
    rng = random.Random(0)
    configs = list({E.sample_random(3, rng) for _ in range(260)})

    def truth(c):
        return 60 + 4 * np.mean(c.w_bits + c.a_bits) + 3 * (c.granularity == "channel")

    acc = [truth(c) for c in configs]
    model, history = E.train_predictor(configs[:200], acc[:200], num_layers=3, val_configs=configs[200:],
                                       val_accuracies=acc[200:], depth=3, width=64,
                                       config=TrainConfig(epochs=60, lr=3e-3, progress=False))
    pred = model.predict(E.encode_configs(configs[200:])).numpy()
    assert E.rank_correlation(pred, acc[200:])["pearson"] > 0.9
    assert history.last["val_pearson"] == pytest.approx(E.rank_correlation(pred, acc[200:])["pearson"], abs=1e-5)


# --- genetic search ----------------------------------------------------------------------------


def test_mutation_probability_is_honoured():
    rng = np.random.default_rng(0)
    k = len(E.BIT_CHOICES)
    genes = rng.integers(k, size=(400, 50))
    for prob in (0.0, 0.1, 0.5):
        changed = (E.mutate(genes, rng, prob=prob, num_choices=k) != genes).mean()
        expected = prob * (1 - 1 / k)  # a resampled gene keeps its value with probability 1/k
        assert abs(changed - expected) < 4 * np.sqrt(expected * (1 - expected) / genes.size) + 1e-12
    with pytest.raises(ValueError, match="mutation prob"):
        E.mutate(genes, rng, prob=1.5, num_choices=k)


def test_crossover_takes_each_gene_from_a_parent():
    rng = np.random.default_rng(0)
    mother, father = np.zeros((100, 40), int), np.ones((100, 40), int)
    child = E.crossover(mother, father, rng)
    assert set(np.unique(child)) == {0, 1}
    assert abs(child.mean() - 0.5) < 0.02


def _toy_fitness(w, a):
    # more bits are better, but the last layer's weights count most: a clear, rankable optimum
    return w.sum(1) + a.sum(1) + 5 * w[:, -1]


@settings(max_examples=15, deadline=None)
@given(target=st.sampled_from([2.5, 3.0, 4.0, 5.5, 8.0]), seed=st.integers(0, 1000))
def test_average_bit_constraint_always_holds(costs, target, seed):
    constraint = E.AverageBits(costs, target)
    result = E.genetic_search(_toy_fitness, constraint, num_layers=2, population=16, generations=5, seed=seed)
    w, a = result.population[:, :2], result.population[:, 2:]
    assert constraint.satisfied(w, a).all()
    assert np.all((costs.average_weight_bits(w) > target - 0.5) & (costs.average_weight_bits(w) <= target))
    assert [h["feasible"] for h in result.history] == [1.0] * 6


@settings(max_examples=10, deadline=None)
@given(fraction=st.floats(0.2, 1.0), seed=st.integers(0, 1000))
def test_bitops_budget_always_holds(costs, fraction, seed):
    budget = costs.bitops((2, 2), (2, 2)) + fraction * (costs.bitops((8, 8), (8, 8)) - costs.bitops((2, 2), (2, 2)))
    result = E.genetic_search(_toy_fitness, E.BitOpsBudget(costs, budget), num_layers=2, population=12,
                              generations=4, seed=seed)
    assert np.all(costs.bitops(result.population[:, :2], result.population[:, 2:]) <= budget)
    assert costs.bitops(result.w_bits, result.a_bits) <= budget


def test_unreachable_constraint_is_an_error(costs):
    with pytest.raises(ValueError, match="reachable"):
        E.genetic_search(_toy_fitness, E.AverageBits(costs, 1.5), num_layers=2, population=8, generations=1)


def _pattern_fitness(w, a):
    # closeness to the pattern 2, 6, 2, 6, ... in every row: random genomes start far from it
    pattern = np.resize([2, 6], w.shape[1])
    return -np.abs(w - pattern).sum(1) - np.abs(a - pattern).sum(1)


def test_elitism_never_loses_the_best_and_search_is_seeded():
    big = E.CostModel(tuple(E.LayerCost(f"l{i}", 10 + i, 100 * (i + 1), 50) for i in range(12)))
    constraint = E.AverageBits(big, 4.5)
    def run(seed):
        return E.genetic_search(_pattern_fitness, constraint, num_layers=10, population=40, generations=30, seed=seed)

    result = run(3)
    best = [h["best"] for h in result.history]
    assert all(b2 >= b1 for b1, b2 in pairwise(best))
    assert best[-1] > best[0]  # and it does improve
    assert result.fitness == best[-1] == _pattern_fitness(np.array([result.w_bits]), np.array([result.a_bits]))[0]
    again = run(3)
    assert (again.w_bits, again.a_bits, again.history) == (result.w_bits, result.a_bits, result.history)


def test_search_with_the_predictor_is_fast():
    """Population 100 × 100 generations with a 7×200 CQAP on a ResNet-20-sized genome: < 30 s."""
    n = 20
    big = E.CostModel(tuple(E.LayerCost(f"l{i}", 100 * (i + 1), 1000, 64) for i in range(n + 2)))
    predictor = E.CQAPPredictor(n)
    fitness = predictor.fitness(granularity="channel", w_symmetric=True, a_symmetric=False)
    t0 = time.perf_counter()
    result = E.genetic_search(fitness, E.AverageBits(big, 3.0), num_layers=n, population=100, generations=100)
    assert time.perf_counter() - t0 < 30
    assert len(result.history) == 101
