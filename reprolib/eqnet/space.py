"""The elastic quantization space: subnet configurations, samplers, applying and evaluating them.

EQ-Net Sec. 3.3: the space ``ε = {ε_b, ε_g, ε_s}`` of bit-widths (per layer, weights and
activations separately), granularity and symmetry. A :class:`SubnetConfig` is one point of it;
the first and the last layer are not part of it (fixed at 8 bits, following the config's form).

    cfg = sample_random(num_elastic_layers(model), random.Random(0))
    acc = evaluate_config(model, cfg, train_loader, val_loader)   # BN re-calibrated first
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from ..nn import Precision, set_precision
from ..train import accuracy, recalibrate_bn, resolve_device
from ..validate import check_int
from .quantizer import BIT_CHOICES, num_elastic_layers

__all__ = [
    "FIXED_BITS",
    "GRANULARITIES",
    "SubnetConfig",
    "highest",
    "lowest",
    "sample_random",
    "apply_config",
    "evaluate_config",
    "FORMS",
    "form_label",
    "evaluate_grid",
]

FIXED_BITS = 8
GRANULARITIES = ("channel", "tensor")


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet of the supernet.

    Attributes:
        w_bits, a_bits: weight and input-activation bit-width of every elastic layer (forward
            order, first and last layer excluded); each one of :data:`BIT_CHOICES`.
        granularity: ``"channel"`` or ``"tensor"`` weight steps (all layers).
        w_symmetric, a_symmetric: zero offset (symmetric) or learned offset (asymmetric).
    """

    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]
    granularity: str = "channel"
    w_symmetric: bool = True
    a_symmetric: bool = True

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits"):
            bits = getattr(self, name)
            if not isinstance(bits, tuple):
                raise TypeError(f"{name} must be a tuple of ints, got {type(bits).__name__}")
            bad = [b for b in bits if isinstance(b, bool) or not isinstance(b, int) or b not in BIT_CHOICES]
            if bad:
                raise ValueError(f"{name} has bit-widths {bad} outside BIT_CHOICES {BIT_CHOICES} (ints only)")
        if len(self.w_bits) != len(self.a_bits) or not self.w_bits:
            raise ValueError(
                f"w_bits and a_bits need one entry per elastic layer (same non-zero length), "
                f"got {len(self.w_bits)} and {len(self.a_bits)}"
            )
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        for name in ("w_symmetric", "a_symmetric"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def n_layers(self) -> int:
        return len(self.w_bits)

    @property
    def form(self) -> dict[str, Any]:
        """Granularity and symmetry, as keyword arguments of the constructors below."""
        return {"granularity": self.granularity, "w_symmetric": self.w_symmetric, "a_symmetric": self.a_symmetric}

    def precisions(self) -> list[Precision]:
        """One :class:`Precision` per quantized layer: first and last at 8 bits, same form."""
        fixed = Precision(FIXED_BITS, FIXED_BITS, **self.form)
        return [fixed, *(Precision(w, a, **self.form) for w, a in zip(self.w_bits, self.a_bits, strict=True)), fixed]

    @classmethod
    def uniform(cls, n_layers: int, bits: int, **form: Any) -> SubnetConfig:
        """Every elastic layer at ``bits`` for weights and activations."""
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
        return cls((bits,) * n_layers, (bits,) * n_layers, **form)


def highest(n_layers: int, **form: Any) -> SubnetConfig:
    """The highest subnet H: every elastic layer at 8 bits."""
    return SubnetConfig.uniform(n_layers, max(BIT_CHOICES), **form)


def lowest(n_layers: int, **form: Any) -> SubnetConfig:
    """The lowest subnet L: every elastic layer at 2 bits."""
    return SubnetConfig.uniform(n_layers, min(BIT_CHOICES), **form)


def sample_random(n_layers: int, rng: random.Random) -> SubnetConfig:
    """A random subnet R (EQ-Net Sec. 3.4): every layer draws its weight bits and its activation
    bits independently and uniformly from :data:`BIT_CHOICES`; granularity and both symmetries
    are drawn uniformly too."""
    check_int("n_layers", n_layers, low=1)
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
    w = tuple(rng.choice(BIT_CHOICES) for _ in range(n_layers))
    a = tuple(rng.choice(BIT_CHOICES) for _ in range(n_layers))
    return SubnetConfig(w, a, rng.choice(GRANULARITIES), rng.random() < 0.5, rng.random() < 0.5)


def apply_config(model: nn.Module, cfg: SubnetConfig) -> None:
    """Switch ``model`` to subnet ``cfg`` with :func:`reprolib.nn.set_precision`.

    Raises:
        ValueError: ``cfg`` has a different number of layers than the model's elastic layers.
    """
    if not isinstance(cfg, SubnetConfig):
        raise TypeError(f"cfg must be a SubnetConfig, got {type(cfg).__name__}")
    n = num_elastic_layers(model)
    if cfg.n_layers != n:
        raise ValueError(f"the config has {cfg.n_layers} layers but the supernet has {n} elastic layers")
    set_precision(model, cfg.precisions())


def evaluate_config(
    model: nn.Module,
    cfg: SubnetConfig,
    calib_loader: DataLoader,
    eval_loader: DataLoader,
    *,
    calib_batches: int = 10,
    device: str = "auto",
) -> float:
    """Accuracy (%) of subnet ``cfg``: apply it, re-calibrate BatchNorm on ``calib_batches``
    batches of ``calib_loader`` (adaptive BN, Sec. 4.1), evaluate on ``eval_loader``."""
    check_int("calib_batches", calib_batches, low=1)
    dev = resolve_device(device)
    model.to(dev)
    apply_config(model, cfg)
    recalibrate_bn(model, calib_loader, calib_batches, dev)
    return accuracy(model, eval_loader, dev)


FORMS: tuple[dict[str, Any], ...] = tuple(
    {"granularity": g, "w_symmetric": s, "a_symmetric": s} for g in GRANULARITIES for s in (True, False)
)


def form_label(granularity: str, w_symmetric: bool, a_symmetric: bool) -> str:
    """A short name of a quantization form, e.g. ``"channel / sym"`` or ``"tensor / w-asym a-sym"``."""
    if w_symmetric == a_symmetric:
        return f"{granularity} / {'sym' if w_symmetric else 'asym'}"
    return f"{granularity} / w-{'sym' if w_symmetric else 'asym'} a-{'sym' if a_symmetric else 'asym'}"


def evaluate_grid(
    model: nn.Module,
    calib_loader: DataLoader,
    eval_loader: DataLoader,
    *,
    bits: Sequence[int] = BIT_CHOICES,
    forms: Sequence[dict[str, Any]] = FORMS,
    calib_batches: int = 10,
    device: str = "auto",
):
    """Accuracy (%) of every uniform subnet ``bits × forms`` of one supernet, BN re-calibrated
    for each: a pandas ``DataFrame`` indexed by bit-width, one column per form (:func:`form_label`)."""
    import pandas as pd

    n = num_elastic_layers(model)
    table = {
        form_label(**form): {b: evaluate_config(model, SubnetConfig.uniform(n, b, **form), calib_loader, eval_loader,
                                                calib_batches=calib_batches, device=device) for b in bits}
        for form in forms
    }
    return pd.DataFrame(table).rename_axis("bits")
