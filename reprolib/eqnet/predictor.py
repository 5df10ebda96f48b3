"""EQ-Net: the Conditional Quantization-Aware accuracy Predictor (CQAP, Sec. 3.5).

Measuring a subnet's accuracy means re-calibrating BatchNorm and running a validation pass; the
genetic search needs thousands of such numbers. CQAP learns them instead:

    acc ≈ MLP( [g, s_w, s_a] ⊕ onehot(w_1) ⊕ … ⊕ onehot(w_L) ⊕ onehot(a_1) ⊕ … ⊕ onehot(a_L) )

with the *conditions* ``g`` = 1 for per-channel weights (0 per-tensor), ``s_w`` = 1 for asymmetric
weights, ``s_a`` = 1 for asymmetric activations, and a one-hot over the bit choices of every
elastic layer's weight and activation bits (``3 + 2·L·K`` inputs for ``K`` choices). The paper's
MLP has 7 hidden layers of 200 units with ReLU, trained with the SmoothL1 loss on (configuration,
accuracy) pairs measured on held-out training data after BN re-calibration; it reports
Pearson > 0.90 and Kendall's τ > 0.80 between predicted and measured accuracy of unseen subnets.

The authors' encoder never set the asymmetry flag (every configuration looked symmetric to the
predictor); :func:`encode_bits` sets it.

The predictor trains through the one training loop, :func:`reprolib.train.fit`, with
:func:`regression_step` as its step and :func:`rank_metrics` as its evaluation.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ..train import History, TrainConfig, fit, progress_enabled, resolve_device
from ..validate import check_int, check_ints
from .quantizer import BIT_CHOICES
from .space import evaluate_config

__all__ = [
    "encode_bits",
    "encode_configs",
    "CQAPPredictor",
    "regression_step",
    "rank_metrics",
    "rank_correlation",
    "measure_configs",
    "train_predictor",
]


def encode_bits(
    w_bits: Any,
    a_bits: Any,
    *,
    granularity: str,
    w_symmetric: bool,
    a_symmetric: bool,
    bit_choices: Sequence[int] = BIT_CHOICES,
) -> Tensor:
    """CQAP's input for a population sharing one quantization form.

    Args:
        w_bits, a_bits: ``[N, L]`` per-elastic-layer bits (each one of ``bit_choices``).
        granularity: ``"channel"`` or ``"tensor"``; ``w_symmetric``, ``a_symmetric``: the form.
    Returns:
        ``[N, 3 + 2·L·K]`` float features: ``[per-channel, w-asymmetric, a-asymmetric]`` flags,
        then the one-hot of every weight gene, then of every activation gene.
    """
    if granularity not in ("channel", "tensor"):
        raise ValueError(f"granularity must be 'channel' or 'tensor', got {granularity!r}")
    choices = torch.as_tensor(check_ints("bit_choices", bit_choices, low=1, increasing=True))
    w = torch.as_tensor(np.asarray(w_bits), dtype=torch.long)
    a = torch.as_tensor(np.asarray(a_bits), dtype=torch.long)
    if w.dim() != 2 or w.shape != a.shape:
        raise ValueError(f"w_bits and a_bits must both be [N, L], got {tuple(w.shape)} and {tuple(a.shape)}")
    genes = torch.cat([w, a], 1)                                    # [N, 2L]
    hit = genes.unsqueeze(-1) == choices                            # [N, 2L, K]
    if not hit.any(-1).all():
        bad = sorted(set(genes[~hit.any(-1)].tolist()))
        raise ValueError(f"bits {bad} are not among the bit choices {tuple(bit_choices)}")
    onehot = hit.float().flatten(1)                                 # [N, 2L·K]
    flags = torch.tensor([granularity == "channel", not w_symmetric, not a_symmetric], dtype=torch.float32)
    return torch.cat([flags.expand(len(genes), 3), onehot], 1)


def encode_configs(configs: Iterable[Any], *, bit_choices: Sequence[int] = BIT_CHOICES) -> Tensor:
    """:func:`encode_bits` of a list of ``SubnetConfig`` (each may have its own form); ``[N, D]``."""
    rows = [encode_bits([c.w_bits], [c.a_bits], granularity=c.granularity, w_symmetric=c.w_symmetric,
                        a_symmetric=c.a_symmetric, bit_choices=bit_choices) for c in configs]
    if not rows:
        raise ValueError("encode_configs needs at least one configuration")
    return torch.cat(rows)


class CQAPPredictor(nn.Module):
    """MLP from :func:`encode_bits` features to accuracy (paper: 7 hidden layers × 200, ReLU).

    The network predicts the *standardised* accuracy ``(acc − μ)/σ`` (``μ, σ`` of the training
    pairs, stored as buffers by :func:`train_predictor`); :meth:`predict` returns percent.

    Args:
        num_layers: ``L``, elastic layers of the supernet.
        bit_choices: the bit-widths of the one-hot code (``K`` of them).
        depth: hidden layers; ``width``: units per hidden layer.
    """

    def __init__(self, num_layers: int, *, bit_choices: Sequence[int] = BIT_CHOICES,
                 depth: int = 7, width: int = 200) -> None:
        super().__init__()
        check_int("num_layers", num_layers, low=1)
        check_int("depth", depth, low=1)
        check_int("width", width, low=1)
        self.num_layers, self.bit_choices = num_layers, check_ints("bit_choices", bit_choices, low=1, increasing=True)
        self.in_features = 3 + 2 * num_layers * len(self.bit_choices)
        dims = [self.in_features] + [width] * depth
        hidden = [m for d_in, d_out in pairwise(dims) for m in (nn.Linear(d_in, d_out), nn.ReLU())]
        self.mlp = nn.Sequential(*hidden, nn.Linear(width, 1))
        self.register_buffer("target_mean", torch.tensor(0.0))
        self.register_buffer("target_std", torch.tensor(1.0))

    def forward(self, features: Tensor) -> Tensor:
        """``[N, D]`` features → ``[N]`` standardised accuracy."""
        if features.shape[-1] != self.in_features:
            raise ValueError(f"expected {self.in_features} features, got {features.shape[-1]}")
        return self.mlp(features).squeeze(-1)

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """Predicted accuracy in percent, ``[N]`` (eval mode, no gradient)."""
        self.eval()
        device = self.target_mean.device
        return self(features.to(device)) * self.target_std + self.target_mean

    def fitness(self, *, granularity: str, w_symmetric: bool, a_symmetric: bool):
        """The genetic search's fitness for one quantization form:
        ``f(w_bits [P, L], a_bits [P, L]) -> predicted accuracy [P]`` (a numpy array)."""
        def predicted_accuracy(w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
            x = encode_bits(w_bits, a_bits, granularity=granularity, w_symmetric=w_symmetric,
                            a_symmetric=a_symmetric, bit_choices=self.bit_choices)
            return self.predict(x).cpu().numpy()
        return predicted_accuracy


def regression_step(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """SmoothL1 (Huber, β = 1) between predicted and measured standardised accuracy: fit's step."""
    return F.smooth_l1_loss(model(x), y)


def rank_correlation(predicted: Any, measured: Any) -> dict[str, float]:
    """Pearson's r and Kendall's τ (``scipy.stats``) between two ``[N]`` sequences, and the MAE."""
    from scipy import stats

    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if p.shape != m.shape or p.ndim != 1 or len(p) < 3:
        raise ValueError(f"need two equal-length 1-D sequences of at least 3 values, got {p.shape} and {m.shape}")
    return {"pearson": float(stats.pearsonr(p, m)[0]), "kendall": float(stats.kendalltau(p, m)[0]),
            "mae": float(np.abs(p - m).mean())}


@torch.no_grad()
def rank_metrics(model: nn.Module, loader: DataLoader, device: torch.device | str = "auto") -> dict[str, float]:
    """fit's ``evaluate_fn`` for a :class:`CQAPPredictor`: :func:`rank_correlation` of its
    predictions (percent) against the loader's standardised targets converted back to percent."""
    device = resolve_device(device)
    was_training = model.training
    pred, true = [], []
    for x, y in loader:
        pred.append(model.predict(x.to(device)).cpu())  # predict() switches to eval mode
        true.append(y * model.target_std.cpu() + model.target_mean.cpu())
    model.train(was_training)
    return rank_correlation(torch.cat(pred).numpy(), torch.cat(true).numpy())


def measure_configs(model: nn.Module, configs: Sequence[Any], *, calib_loader: DataLoader,
                    eval_loader: DataLoader, progress: bool | None = None, desc: str = "measure subnets",
                    **evaluate_kwargs: Any) -> np.ndarray:
    """Measured accuracy (%) of each configuration: ``evaluate_config`` (BN re-calibration on
    ``calib_loader``, then accuracy on ``eval_loader``), with a tqdm progress bar (``progress``
    defaults to :func:`reprolib.train.progress_enabled`).

    For CQAP's training pairs ``eval_loader`` holds data held out of supernet training (on
    ``digits`` the validation split); ``evaluate_kwargs`` pass through to ``evaluate_config``.
    Returns ``[N]`` accuracies.
    """
    from tqdm.auto import tqdm

    show = progress_enabled() if progress is None else progress
    return np.array([evaluate_config(model, cfg, calib_loader, eval_loader, **evaluate_kwargs)
                     for cfg in tqdm(configs, desc=desc, disable=not show)], dtype=np.float64)


def train_predictor(
    configs: Sequence[Any],
    accuracies: Sequence[float],
    *,
    num_layers: int,
    val_configs: Sequence[Any] | None = None,
    val_accuracies: Sequence[float] | None = None,
    config: TrainConfig | None = None,
    batch_size: int = 64,
    bit_choices: Sequence[int] = BIT_CHOICES,
    depth: int = 7,
    width: int = 200,
) -> tuple[CQAPPredictor, History]:
    """Train a :class:`CQAPPredictor` on (configuration, measured accuracy) pairs with ``fit``.

    Args:
        configs, accuracies: the training pairs (accuracy in %).
        num_layers: ``L``, elastic layers.
        val_configs, val_accuracies: unseen pairs, evaluated every epoch by :func:`rank_metrics`
            (logged as ``val_pearson``, ``val_kendall``, ``val_mae``).
        config: the :class:`TrainConfig` (default: 300 epochs of Adam, lr 1e-3, cosine, no bar).
        batch_size: pairs per step.
        depth, width: the MLP (paper: 7 × 200).
    Returns:
        the trained predictor (eval mode) and fit's :class:`History`.
    """
    cfg = config or TrainConfig(epochs=300, lr=1e-3, progress=False, desc="CQAP")
    check_int("batch_size", batch_size, low=1)
    acc = torch.as_tensor(np.asarray(accuracies, dtype=np.float32))
    if len(acc) != len(configs) or len(acc) < 2:
        raise ValueError(f"need at least 2 configs with one accuracy each, got {len(configs)} and {len(acc)}")
    predictor = CQAPPredictor(num_layers, bit_choices=bit_choices, depth=depth, width=width)
    predictor.target_mean.fill_(acc.mean())
    predictor.target_std.fill_(acc.std().clamp_min(1e-6))

    def pairs(cs: Sequence[Any], a: Tensor, shuffle: bool) -> DataLoader:
        target = (a - predictor.target_mean) / predictor.target_std
        data = TensorDataset(encode_configs(cs, bit_choices=bit_choices), target)
        return DataLoader(data, batch_size=batch_size if shuffle else len(data), shuffle=shuffle,
                          generator=torch.Generator().manual_seed(cfg.seed))

    val_loader = None
    if val_configs is not None:
        if val_accuracies is None:
            raise ValueError("val_configs needs val_accuracies")
        val_loader = pairs(val_configs, torch.as_tensor(np.asarray(val_accuracies, dtype=np.float32)), False)
    history = fit(predictor, pairs(configs, acc, True), config=cfg, step=regression_step,
                  val_loader=val_loader, evaluate_fn=rank_metrics)
    predictor.eval()
    return predictor, history
