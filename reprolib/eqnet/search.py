"""EQ-Net: the genetic mixed-precision search (Sec. 3.5; the evolutionary search of OFA).

A *genome* holds one bit-width per elastic layer for the weights and one for the activations,
``[w_1 … w_L | a_1 … a_L]``, each gene drawn from the bit choices (2..8). The quantization form
(granularity, symmetry) is fixed by the target hardware and is not searched. The fitness of a
genome is the accuracy the CQAP predictor (:mod:`.predictor`) gives it; a constraint says which
genomes are allowed:

* :class:`AverageBits` — average weight bits and average activation bits (weighted by parameters
  and feature-map sizes, :mod:`.accounting`) both in ``(c − 0.5, c]``, as in the paper;
* :class:`BitOpsBudget` — ``BitOPs ≤ budget``, the natural alternative.

One generation (the paper's defaults: population 100, top 25 % kept):

    elites    = the best ``elite_frac · P`` genomes, kept unchanged (elitism)
    mutants   = half of the rest: an elite with every gene resampled with probability p = 0.1
    children  = the other half: uniform crossover of two elites (each gene from either parent)

An offspring that breaks the constraint is drawn again (up to ``retries`` times), after which its
first parent takes its place, so every member of every generation satisfies the constraint. The
authors' GA ignored its mutation-probability argument; :func:`mutate` honours it (tested).
All randomness comes from one ``numpy`` generator seeded by ``seed``; the fitness is called once
per generation on the whole batch of new genomes, so 100 generations of 100 take well under 30 s.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..validate import check_int, check_ints, check_real
from .accounting import CostModel
from .quantizer import BIT_CHOICES

__all__ = [
    "AverageBits",
    "BitOpsBudget",
    "SearchResult",
    "mutate",
    "crossover",
    "initial_population",
    "genetic_search",
]

Fitness = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``fitness(w_bits [P, L], a_bits [P, L]) -> [P]`` (higher is better)."""


def _split(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Genomes ``[P, 2L]`` of bits → ``(w_bits [P, L], a_bits [P, L])``."""
    half = bits.shape[1] // 2
    return bits[:, :half], bits[:, half:]


def _check_costs(costs: object) -> None:
    if not isinstance(costs, CostModel):
        raise TypeError(f"costs must be a CostModel (from measure_costs(model, sample)), got {type(costs).__name__}")


@dataclass(frozen=True)
class AverageBits:
    """Average weight bits in ``(w_target − window, w_target]`` and average activation bits in
    ``(a_target − window, a_target]`` (EQ-Net Sec. 4.2; ``a_target`` defaults to ``w_target``).

    Args:
        costs: the model's measured layer sizes (:func:`.measure_costs`).
        w_target, a_target: the targets ``c``; ``window``: the width of the allowed interval.
    """

    costs: CostModel
    w_target: float
    a_target: float | None = None
    window: float = 0.5

    def __post_init__(self) -> None:
        _check_costs(self.costs)
        check_real("w_target", self.w_target, low=0, low_open=True)
        if self.a_target is not None:
            check_real("a_target", self.a_target, low=0, low_open=True)
        check_real("window", self.window, low=0, low_open=True)

    def _direction(self, avg: np.ndarray, target: float) -> np.ndarray:
        """−1 where the average is above the interval, +1 below it, 0 inside; ``[P]``."""
        return np.where(avg > target, -1, np.where(avg <= target - self.window, 1, 0))

    def directions(self, w_bits: np.ndarray, a_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which way each genome's weight genes and activation genes must move; two ``[P]``."""
        a_target = self.w_target if self.a_target is None else self.a_target
        return (self._direction(self.costs.average_weight_bits(w_bits), self.w_target),
                self._direction(self.costs.average_act_bits(a_bits), a_target))

    def satisfied(self, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
        """``[P]`` booleans: both averages inside their intervals."""
        dw, da = self.directions(w_bits, a_bits)
        return (dw == 0) & (da == 0)


@dataclass(frozen=True)
class BitOpsBudget:
    """``BitOPs(w, a) ≤ budget`` (:meth:`.CostModel.bitops`, one sample's forward pass)."""

    costs: CostModel
    budget: float

    def __post_init__(self) -> None:
        _check_costs(self.costs)
        check_real("budget", self.budget, low=0, low_open=True)

    def directions(self, w_bits: np.ndarray, a_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Over budget: every gene may move down (−1); within: none need to (0)."""
        over = -(self.costs.bitops(w_bits, a_bits) > self.budget).astype(int)
        return over, over

    def satisfied(self, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
        return self.costs.bitops(w_bits, a_bits) <= self.budget


Constraint = AverageBits | BitOpsBudget


def mutate(genes: np.ndarray, rng: np.random.Generator, *, prob: float, num_choices: int) -> np.ndarray:
    """Resample every gene independently with probability ``prob``, uniformly over the choices.

    Args:
        genes: ``[P, G]`` indices into the bit choices.
        prob: the per-gene mutation probability (a resampled gene may draw its old value, so the
            expected fraction of *changed* genes is ``prob · (1 − 1/num_choices)``).
    Returns:
        a new ``[P, G]`` array.
    """
    check_real("mutation prob", prob, low=0, high=1)
    check_int("num_choices", num_choices, low=1)
    resample = rng.random(genes.shape) < prob
    return np.where(resample, rng.integers(num_choices, size=genes.shape), genes)


def crossover(mother: np.ndarray, father: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform crossover: each gene from ``mother`` or ``father`` with probability ½; ``[P, G]``."""
    if mother.shape != father.shape:
        raise ValueError(f"parents must have the same shape, got {mother.shape} and {father.shape}")
    return np.where(rng.random(mother.shape) < 0.5, mother, father)


def _repair(genes: np.ndarray, choices: np.ndarray, constraint: Constraint,
            rng: np.random.Generator, max_steps: int) -> np.ndarray:
    """Move one gene per infeasible genome one choice up or down, as the constraint asks, until
    feasible or ``max_steps``; a random movable gene each time. Returns the repaired ``[P, G]``."""
    genes = genes.copy()
    rows = np.arange(len(genes))
    for _ in range(max_steps):
        dw, da = constraint.directions(*_split(choices[genes]))
        half = genes.shape[1] // 2
        move = np.concatenate([np.repeat(dw[:, None], half, 1), np.repeat(da[:, None], half, 1)], 1)
        movable = ((move < 0) & (genes > 0)) | ((move > 0) & (genes < len(choices) - 1))
        if not movable.any():
            break
        pick = np.where(movable, rng.random(genes.shape), -1.0).argmax(1)  # [P] a random movable gene
        has = movable.any(1)
        genes[rows[has], pick[has]] += move[rows[has], pick[has]]
    return genes


def initial_population(size: int, num_layers: int, constraint: Constraint, rng: np.random.Generator, *,
                       bit_choices: Sequence[int] = BIT_CHOICES, max_rounds: int = 20) -> np.ndarray:
    """``size`` feasible genomes ``[size, 2L]`` (indices into ``bit_choices``).

    Uniformly random genes rarely meet a low average-bit target (the mean of 2..8 is 5), so each
    random genome is *repaired*: one gene at a time moves one choice in the direction the
    constraint asks, until it is met.

    Raises:
        ValueError: no feasible genome was found (e.g. a target below the lowest bit choice).
    """
    check_int("size", size, low=1)
    check_int("num_layers", num_layers, low=1)
    choices = np.asarray(check_ints("bit_choices", bit_choices, low=1, increasing=True))
    found: list[np.ndarray] = []
    for _ in range(max_rounds):
        genes = rng.integers(len(choices), size=(size, 2 * num_layers))
        genes = _repair(genes, choices, constraint, rng, max_steps=2 * num_layers * len(choices))
        found.append(genes[constraint.satisfied(*_split(choices[genes]))])
        if sum(len(f) for f in found) >= size:
            return np.concatenate(found)[:size]
    raise ValueError(f"found no {size} genomes satisfying {constraint!r} with bits {tuple(choices)}; "
                     "is the constraint reachable?")


@dataclass
class SearchResult:
    """The best genome found and the search's progress.

    Attributes:
        w_bits, a_bits: per-elastic-layer bits of the fittest genome of the last generation.
        fitness: its fitness (predicted accuracy, %).
        history: per generation (0 is the initial population): ``generation``, ``best``,
            ``mean`` fitness and ``feasible`` (fraction satisfying the constraint; always 1).
        population: the last generation's bits ``[P, 2L]`` and ``fitnesses`` ``[P]``.
    """

    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]
    fitness: float
    history: list[dict[str, float]] = field(default_factory=list)
    population: np.ndarray | None = None
    fitnesses: np.ndarray | None = None

    def frame(self):
        """The history as a pandas ``DataFrame`` indexed by generation."""
        import pandas as pd

        return pd.DataFrame(self.history).set_index("generation")


def _offspring(make: Callable[[], tuple[np.ndarray, np.ndarray]], choices: np.ndarray,
               constraint: Constraint, retries: int) -> np.ndarray:
    """Draw offspring with ``make() -> (children, first_parents)``; redraw those breaking the
    constraint up to ``retries`` times, then let their first parent stand in."""
    children, parents = make()
    bad = ~constraint.satisfied(*_split(choices[children]))
    for _ in range(retries):
        if not bad.any():
            break
        again, again_parents = make()
        children[bad], parents[bad] = again[bad], again_parents[bad]
        bad = ~constraint.satisfied(*_split(choices[children]))
    children[bad] = parents[bad]
    return children


def genetic_search(
    fitness: Fitness,
    constraint: Constraint,
    *,
    num_layers: int,
    bit_choices: Sequence[int] = BIT_CHOICES,
    population: int = 100,
    generations: int = 100,
    elite_frac: float = 0.25,
    mutation_prob: float = 0.1,
    retries: int = 10,
    seed: int = 0,
) -> SearchResult:
    """Evolve per-layer weight and activation bits to maximise ``fitness`` under ``constraint``.

    Args:
        fitness: ``fitness(w_bits [P, L], a_bits [P, L]) -> [P]``, e.g.
            :meth:`.CQAPPredictor.fitness` (predicted accuracy); called once per generation.
        constraint: :class:`AverageBits` or :class:`BitOpsBudget`.
        num_layers: ``L``, the number of elastic layers.
        population: genomes per generation (paper: 100); ``generations``: paper 500.
        elite_frac: fraction kept unchanged each generation (paper: top 25 %).
        mutation_prob: per-gene resampling probability of the mutation half (paper: 0.1).
        retries: redraws of an offspring that breaks the constraint before its parent stands in.
        seed: seeds the search's own ``numpy`` generator.

    Returns:
        a :class:`SearchResult`; the best fitness in its history never decreases (elitism).
    """
    check_int("population", population, low=4)
    check_real("elite_frac", elite_frac, low=0, high=1, low_open=True, high_open=True)
    check_int("generations", generations, low=0)
    check_real("mutation_prob", mutation_prob, low=0, high=1)
    check_int("retries", retries, low=0)
    check_int("num_layers", num_layers, low=1)
    if not isinstance(constraint, (AverageBits, BitOpsBudget)):
        raise TypeError(f"constraint must be an AverageBits or a BitOpsBudget, got {type(constraint).__name__}")
    if constraint.costs.num_elastic != num_layers:
        raise ValueError(f"num_layers={num_layers} but the constraint's cost model has "
                         f"{constraint.costs.num_elastic} elastic layers")
    if not callable(fitness):
        raise TypeError(f"fitness must be a function of (w_bits, a_bits), got {type(fitness).__name__}")
    rng = np.random.default_rng(seed)
    choices = np.asarray(check_ints("bit_choices", bit_choices, low=1, increasing=True))
    n_elite = max(2, round(elite_frac * population))
    n_mutants = (population - n_elite) // 2
    n_children = population - n_elite - n_mutants

    def evaluate(genes: np.ndarray) -> np.ndarray:
        scores = np.asarray(fitness(*_split(choices[genes])), dtype=np.float64).reshape(-1)
        if scores.shape != (len(genes),):
            raise ValueError(f"fitness must return one score per genome ({len(genes)}), got shape {scores.shape}")
        return scores

    genes = initial_population(population, num_layers, constraint, rng, bit_choices=choices)
    scores = evaluate(genes)
    history: list[dict[str, float]] = []

    def log(generation: int) -> None:
        feasible = constraint.satisfied(*_split(choices[genes])).mean()
        history.append({"generation": generation, "best": float(scores.max()),
                        "mean": float(scores.mean()), "feasible": float(feasible)})

    log(0)
    for generation in range(1, generations + 1):
        order = np.argsort(-scores, kind="stable")
        elites, elite_scores = genes[order[:n_elite]], scores[order[:n_elite]]

        def mutants(elites: np.ndarray = elites) -> tuple[np.ndarray, np.ndarray]:
            parents = elites[rng.integers(n_elite, size=n_mutants)]
            return mutate(parents, rng, prob=mutation_prob, num_choices=len(choices)), parents

        def children(elites: np.ndarray = elites) -> tuple[np.ndarray, np.ndarray]:
            mothers = elites[rng.integers(n_elite, size=n_children)]
            fathers = elites[rng.integers(n_elite, size=n_children)]
            return crossover(mothers, fathers, rng), mothers

        new = np.concatenate([_offspring(mutants, choices, constraint, retries),
                              _offspring(children, choices, constraint, retries)])
        genes = np.concatenate([elites, new])
        scores = np.concatenate([elite_scores, evaluate(new)])
        log(generation)

    best = int(np.argmax(scores))
    w_best, a_best = _split(choices[genes[best:best + 1]])
    return SearchResult(tuple(int(b) for b in w_best[0]), tuple(int(b) for b in a_best[0]),
                        float(scores[best]), history, choices[genes], scores)
