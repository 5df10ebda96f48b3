"""EQ-Net: what a subnet configuration costs — average bit-widths and BitOPs.

A mixed-precision configuration gives each *elastic* layer (every conv/linear layer but the first
and the last, which stay at 8 bits) its own weight bits ``w_l`` and activation bits ``a_l``. EQ-Net
(Sec. 4.2, following the mixed-precision literature) compares configurations by

    average weight bits      w̄ = Σ_l P_l · w_l / Σ_l P_l        (P_l: parameters of layer l)
    average activation bits  ā = Σ_l F_l · a_l / Σ_l F_l        (F_l: elements of layer l's input)

over the elastic layers only, and by the bit operations of one forward pass

    BitOPs = Σ_l MAC_l · w_l · a_l                              (first and last layer at 8 × 8)

where ``MAC_l`` counts the multiply-accumulates of layer ``l`` for one sample. ``P_l``, ``F_l`` and
``MAC_l`` are measured once by forward hooks on a sample input (:func:`measure_costs`); every
function then works on whole populations at once (``[P, L]`` arrays of bits), which is what the
genetic search (:mod:`.search`) needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .space import FIXED_BITS

__all__ = ["LayerCost", "CostModel", "measure_costs"]


@dataclass(frozen=True)
class LayerCost:
    """One conv/linear layer's size, for a single sample.

    Attributes:
        name: the module's name in the model.
        params: weight elements ``P_l`` (the bias is not quantized and not counted).
        macs: multiply-accumulates ``MAC_l`` of one forward pass on one sample.
        act_numel: elements ``F_l`` of the layer's input feature map (what ``a_l`` quantizes).
    """

    name: str
    params: int
    macs: int
    act_numel: int


def _layer_macs(module: nn.Module, out: Tensor) -> int:
    """MACs for one sample: conv ``H_out·W_out·C_out · (C_in/groups)·k_h·k_w``; linear ``in·out``."""
    per_output = module.weight[0].numel()  # (C_in/groups)·k_h·k_w for a conv, in_features for linear
    return int(out[0].numel() * per_output)


@dataclass(frozen=True)
class CostModel:
    """The measured sizes of a model's conv/linear layers, in forward order.

    ``layers[0]`` and ``layers[-1]`` are the fixed 8-bit first and last layers; ``elastic`` are the
    ``L = len(layers) − 2`` layers a configuration's bits refer to.
    """

    layers: tuple[LayerCost, ...]

    def __post_init__(self) -> None:
        if len(self.layers) < 3:
            raise ValueError(
                f"a cost model needs a first, a last and at least one elastic layer, got {len(self.layers)} layers"
            )

    @property
    def elastic(self) -> tuple[LayerCost, ...]:
        return self.layers[1:-1]

    @property
    def num_elastic(self) -> int:
        return len(self.layers) - 2

    def _vector(self, field: str, elastic: bool = True) -> np.ndarray:
        layers = self.elastic if elastic else self.layers
        return np.array([getattr(c, field) for c in layers], dtype=np.float64)

    def _bits(self, bits: Any, name: str) -> np.ndarray:
        """``bits`` as a float array ``[..., L]``, with a clear error for a wrong layer count."""
        arr = np.asarray(bits, dtype=np.float64)
        if arr.ndim == 0 or arr.shape[-1] != self.num_elastic:
            raise ValueError(
                f"{name} must have one entry per elastic layer ({self.num_elastic}), got shape {arr.shape}"
            )
        return arr

    def average_weight_bits(self, w_bits: Any) -> np.ndarray | float:
        """Parameter-weighted average weight bits ``Σ P_l w_l / Σ P_l`` over the elastic layers.

        Args:
            w_bits: ``[L]`` or a population ``[P, L]`` of per-layer weight bits.
        Returns:
            a float, or ``[P]``.
        """
        p = self._vector("params")
        return self._bits(w_bits, "w_bits") @ p / p.sum()

    def average_act_bits(self, a_bits: Any) -> np.ndarray | float:
        """Feature-map-weighted average activation bits ``Σ F_l a_l / Σ F_l`` (elastic layers)."""
        f = self._vector("act_numel")
        return self._bits(a_bits, "a_bits") @ f / f.sum()

    def bitops(self, w_bits: Any, a_bits: Any) -> np.ndarray | float:
        """``Σ_l MAC_l · w_l · a_l`` for one sample, the first and last layer at 8 × 8 bits.

        Args:
            w_bits, a_bits: ``[L]`` or ``[P, L]`` per-layer bits of the elastic layers.
        Returns:
            BitOPs as a float, or ``[P]``.
        """
        macs = self._vector("macs")
        fixed = (self.layers[0].macs + self.layers[-1].macs) * FIXED_BITS * FIXED_BITS
        return (self._bits(w_bits, "w_bits") * self._bits(a_bits, "a_bits")) @ macs + fixed

    def of(self, config: Any) -> dict[str, float]:
        """Average weight bits, average activation bits and BitOPs of one ``SubnetConfig``."""
        return {
            "avg_w_bits": float(self.average_weight_bits(config.w_bits)),
            "avg_a_bits": float(self.average_act_bits(config.a_bits)),
            "bitops": float(self.bitops(config.w_bits, config.a_bits)),
        }

    def frame(self):
        """The per-layer sizes as a pandas ``DataFrame`` (a ``role`` column marks first/last)."""
        import pandas as pd

        rows = [dict(vars(c), role="elastic") for c in self.layers]
        rows[0]["role"], rows[-1]["role"] = "first (8-bit)", "last (8-bit)"
        return pd.DataFrame(rows).set_index("name")


@torch.no_grad()
def measure_costs(model: nn.Module, sample: Tensor) -> CostModel:
    """Measure every ``Conv2d``/``Linear`` layer of ``model`` on one forward pass of ``sample``.

    Layers are listed in registration order, the order of a ``SubnetConfig``'s bits
    (:func:`.apply_config`); a layer that runs twice, or never, is an error (its cost would be
    ambiguous). Measure the float model, or a supernet whose quantizers are initialised
    (``build_supernet(model, calib_batch=...)``): the forward pass must not initialise anything.

    Args:
        model: a float model or a supernet (quantized layers subclass ``Conv2d``/``Linear``).
        sample: an input batch ``[N, C, H, W]``; only its first sample's sizes are recorded.
    Returns:
        the :class:`CostModel`; its first and last entries are the fixed 8-bit layers.
    """
    if sample.dim() < 2 or sample.shape[0] < 1:
        raise ValueError(f"sample must be a batch [N, ...] with N >= 1, got shape {tuple(sample.shape)}")
    found: dict[str, LayerCost] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
            if name in found:
                raise ValueError(f"layer {name!r} runs more than once per forward pass; costs are ambiguous")
            found[name] = LayerCost(name, int(module.weight.numel()), _layer_macs(module, out),
                                    int(inputs[0][0].numel()))
        return record

    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(sample[:1].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"layers {missing} did not run in the forward pass; their costs are unknown")
    return CostModel(tuple(found[n] for n in names))
