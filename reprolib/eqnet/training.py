"""Training the EQ-Net supernet (Sec. 3.4) through the one loop, :func:`reprolib.train.fit`.

One step (:func:`make_supernet_step`) on a batch ``(x, y)``:

1. draw a random subnet R (:func:`.sample_random`); H and L are the all-8-bit and all-2-bit
   subnets *of R's granularity and symmetry*, so every form is trained at both ends of the
   bit range;
2. forward H, R and L on the same batch (weights, BN and quantizer parameters shared);
3. loss ``= L_WDR + L_H + L_R + L_L`` with GPG (or a baseline guidance): summing the losses sums
   their gradients; :func:`fit` then clips them by value (1.0) and takes one Adam step with a
   cosine learning-rate schedule (:func:`supernet_config`).

Evaluation (:func:`subnet_evaluator`) re-calibrates BatchNorm on training batches before every
subnet it measures ("adaptive BN", Sec. 4.1).
"""
from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..models import build_model
from ..nn import quantized_layers
from ..train import EpochHook, History, TrainConfig, fit, seed_everything
from ..validate import check_int, check_ints, check_real
from .losses import GUIDANCE, wdr_loss
from .quantizer import BIT_CHOICES, build_supernet, num_elastic_layers
from .space import SubnetConfig, apply_config, evaluate_config, highest, lowest, sample_random

__all__ = [
    "supernet_config",
    "make_supernet_step",
    "subnet_evaluator",
    "train_supernet",
    "DEFAULT_EVAL_BITS",
    "fresh_supernet",
    "supernet_ablation",
]

DEFAULT_EVAL_BITS = (2, 4, 8)


def supernet_config(**overrides: Any) -> TrainConfig:
    """EQ-Net's optimiser settings (Sec. 4.1): Adam, lr 1e-3, cosine schedule, gradients clipped
    by value at 1.0; ``overrides`` replace any :class:`TrainConfig` field (``epochs=…``)."""
    base = TrainConfig(optimizer="adam", lr=1e-3, schedule="cosine", clip_grad_value=1.0, desc="supernet")
    return replace(base, **overrides)


def make_supernet_step(
    *,
    guidance: str = "gpg",
    kurtosis_weight: float = 0.015,
    skewness_weight: float = 1.0,
    kurtosis_target: float = 1.8,
    lam: float = 0.5,
    temperature: float = 1.0,
    smoothing: float = 0.1,
    seed: int = 0,
) -> Callable[[nn.Module, Tensor, Tensor], dict[str, Tensor]]:
    """The supernet's step function for :func:`reprolib.train.fit`.

    Args:
        guidance: how the three subnets learn: ``"gpg"`` (Eq. 7–8), ``"hard"`` (CE each) or
            ``"smooth"`` (label smoothing each), the three curves of Fig. 3.
        kurtosis_weight, skewness_weight: weights of WDR's terms (Eq. 6), on the latent weights
            of every quantized layer but the first. Defaults: the authors' code (0.015, 1.0).
            Both 0 turns WDR off (Table 3's baseline).
        kurtosis_target: ``K_T`` (1.8, uniform).
        lam, temperature: GPG's ``λ`` and ``T``.
        smoothing: ``ε`` of the label-smoothing baseline.
        seed: seeds the random-subnet sampler (its own ``random.Random``).

    Returns:
        ``step(model, x, y)`` giving ``{"loss", "loss_H", "loss_R", "loss_L", "wdr"}``. The step
        has ``state_dict()``/``load_state_dict()`` (its sampler's state), which :func:`fit`
        checkpoints, so that a resumed run samples the same subnets as an uninterrupted one.
    """
    if guidance not in GUIDANCE:
        raise ValueError(f"guidance must be one of {sorted(GUIDANCE)}, got {guidance!r}")
    check_real("kurtosis_weight", kurtosis_weight, low=0)
    check_real("skewness_weight", skewness_weight, low=0)
    check_real("kurtosis_target", kurtosis_target)
    check_real("lam", lam, low=0, high=1)
    check_real("temperature", temperature, low=0, low_open=True)
    check_real("smoothing", smoothing, low=0, high=1, high_open=True)
    check_int("seed", seed)
    kwargs = {"gpg": {"lam": lam, "temperature": temperature}, "smooth": {"smoothing": smoothing}}.get(guidance, {})
    wdr = (kurtosis_target, kurtosis_weight, skewness_weight) if kurtosis_weight > 0 or skewness_weight > 0 else None
    return _SupernetStep(GUIDANCE[guidance], kwargs, wdr, random.Random(seed))


class _SupernetStep:
    """The step :func:`make_supernet_step` builds; ``rng`` draws the random subnets."""

    def __init__(self, guidance: Callable[..., list[Tensor]], guidance_kwargs: dict[str, float],
                 wdr: tuple[float, float, float] | None, rng: random.Random) -> None:
        self.guidance, self.guidance_kwargs, self.wdr, self.rng = guidance, guidance_kwargs, wdr, rng

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        n = num_elastic_layers(model)
        rand = sample_random(n, self.rng)
        logits = []
        for cfg in (highest(n, **rand.form), rand, lowest(n, **rand.form)):
            apply_config(model, cfg)
            logits.append(model(x))  # [N, K]
        loss_h, loss_r, loss_l = self.guidance(logits, y, **self.guidance_kwargs)
        out = {"loss_H": loss_h, "loss_R": loss_r, "loss_L": loss_l}
        total = loss_h + loss_r + loss_l
        if self.wdr is not None:
            weights = [m.weight for _, m in quantized_layers(model)[1:]]
            out["wdr"] = wdr_loss(weights, *self.wdr)
            total = total + out["wdr"]
        out["loss"] = total
        return out

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state (plain Python ints: a weights-only checkpoint can hold it)."""
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


def subnet_evaluator(
    calib_loader: DataLoader,
    *,
    configs: Mapping[str, SubnetConfig] | None = None,
    bits: Sequence[int] = DEFAULT_EVAL_BITS,
    calib_batches: int = 10,
) -> Callable[[nn.Module, DataLoader, Any], dict[str, float]]:
    """An ``evaluate_fn`` for :func:`fit` measuring several subnets after BN re-calibration.

    Args:
        calib_loader: training batches for the re-calibration.
        configs: named subnets to measure; by default the uniform per-channel symmetric subnets
            at ``bits`` (2, 4 and 8), named ``"2bit"``…
    Returns:
        ``evaluate_fn(model, loader, device)`` giving ``{"acc_<name>": %, …, "acc": their mean}``.
    """
    check_int("calib_batches", calib_batches, low=1)
    check_ints("bits", bits, low=min(BIT_CHOICES), high=max(BIT_CHOICES))

    def evaluate_fn(model: nn.Module, loader: DataLoader, device: Any) -> dict[str, float]:
        chosen = configs or {f"{b}bit": SubnetConfig.uniform(num_elastic_layers(model), b) for b in bits}
        accs = {f"acc_{name}": evaluate_config(model, cfg, calib_loader, loader, calib_batches=calib_batches,
                                               device=device) for name, cfg in chosen.items()}
        return {**accs, "acc": sum(accs.values()) / len(accs)}

    return evaluate_fn


def train_supernet(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    config: TrainConfig | None = None,
    val_loader: DataLoader | None = None,
    eval_bits: Sequence[int] = DEFAULT_EVAL_BITS,
    calib_batches: int = 10,
    on_epoch_end: Sequence[EpochHook] = (),
    **step_kwargs: Any,
) -> History:
    """Train a supernet (from :func:`.build_supernet`) with :func:`fit` and the EQ-Net step.

    Args:
        config: a :class:`TrainConfig`; default :func:`supernet_config` (10 epochs).
        val_loader: when given, after every epoch the uniform subnets at ``eval_bits`` are
            measured on it after BN re-calibration (``val_acc_2bit``, …, ``val_acc`` their mean).
        step_kwargs: passed to :func:`make_supernet_step` (``guidance``, WDR weights, ``seed``…);
            ``seed`` defaults to ``config.seed``.
    """
    cfg = config or supernet_config()
    step_kwargs.setdefault("seed", cfg.seed)
    return fit(
        model, train_loader, config=cfg, step=make_supernet_step(**step_kwargs), val_loader=val_loader,
        evaluate_fn=subnet_evaluator(train_loader, bits=eval_bits, calib_batches=calib_batches),
        on_epoch_end=on_epoch_end,
    )


def fresh_supernet(
    name: str, *, model_kwargs: Mapping[str, int], calib_batch: Tensor, width: float = 1.0, seed: int = 0
) -> nn.Module:
    """A new float model of :mod:`reprolib.models` (initialised with ``seed``), turned into a
    supernet whose quantizers are initialised on ``calib_batch`` ``[N, C, H, W]``."""
    seed_everything(seed)
    model = build_model(name, **model_kwargs, width=width)
    return build_supernet(model, calib_batch=calib_batch)


def supernet_ablation(
    make_supernet: Callable[[int], nn.Module],
    variants: Mapping[str, Mapping[str, Any]],
    train_loader: DataLoader,
    *,
    seeds: Sequence[int],
    config: TrainConfig,
    val_loader: DataLoader | None = None,
    eval_bits: Sequence[int] = DEFAULT_EVAL_BITS,
) -> dict[tuple[str, int], tuple[nn.Module, History]]:
    """Train one supernet per ``(variant, seed)``; variants of a seed start from the same weights.

    Args:
        make_supernet: ``seed -> supernet`` (e.g. :func:`fresh_supernet`), called once per seed;
            every variant trains a copy of it, so the variants differ only by their step.
        variants: name → keyword arguments of :func:`make_supernet_step` (``guidance``, WDR...).
        config: the :class:`TrainConfig`; its ``seed`` is replaced by each seed.

    Returns:
        ``{(variant, seed): (trained model, History)}``.
    """
    seeds = check_ints("seeds", seeds, low=0)
    for kwargs in variants.values():  # a typo fails now, not after the first variant has trained
        make_supernet_step(**kwargs)
    runs: dict[tuple[str, int], tuple[nn.Module, History]] = {}
    for seed in seeds:
        base = make_supernet(seed)
        for name, kwargs in variants.items():
            model = copy.deepcopy(base)
            cfg = replace(config, seed=seed, desc=f"{name} (seed {seed})")
            runs[name, seed] = model, train_supernet(model, train_loader, config=cfg, val_loader=val_loader,
                                                     eval_bits=eval_bits, **kwargs)
    return runs
