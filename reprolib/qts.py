"""Quantization Through Search (Lu, Jiang, Xu, Hu & Shi, ASP-DAC 2023): weights from a finite set.

Instead of rounding a latent float weight, every weight *chooses* one of ``m`` values
``q_1 < … < q_m`` shared by all layers, as a differentiable architecture search chooses an
operation. A layer holds no float weight and no scale (the BatchNorm after each conv absorbs the
scale), only ``m`` logits per weight, ``α`` of shape ``[*weight.shape, m]``, initialised to
``log(1/m)`` plus noise of 1e-5. The value sets are powers of two, so the network needs no
multiplication (:data:`VALUE_SETS`).

Two ways to get a gradient through the discrete choice:

* **RDHS**, reparameterisation with deterministic hard sampling (paper Sec. 3.2)::

      π_k = softmax_k((α + μ·g) / τ)               g ~ Gumbel(0, 1), μ the noise scale
      w   = q_{argmax π}                            forward: the hard sample
      ∂L/∂α_k = ∂L/∂w · (1/τ) · π_k · (q_k − Σ_j π_j q_j)      backward: through the soft sample

  The paper's Table 3 finds the best accuracy at μ = 0 (deterministic hard sampling).
  τ starts at 1 and decays ×0.97 per epoch (:class:`SearchSchedule`).
* **SGT**, stochastic gradient transfer (paper Sec. 3.3)::

      w = q_{k*},  k* = argmax_k α_k                forward: no noise, no softmax
      ∂L/∂α_k = ∂L/∂w · sign(q_k − q_{k*})          backward (0 for the chosen value)

  If the loss wants ``w`` smaller, every smaller value gains logit and every larger one loses.
  Only the chosen value lives in the graph, so SGT is cheaper (paper Table 4); the authors'
  runnable training script has RDHS only, here both train through :func:`reprolib.train.fit`.

Use::

    model = quantize_model(build_model("small_cnn", ...), SearchFactory(values=1, method="sgt"))
    fit(model, train, on_epoch_start=[SearchSchedule(mu=0.0)], ...)
    value_fractions(model)        # which values each layer ended up using
"""
from __future__ import annotations

import math
import numbers
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cost import interleaved_times, measure_training_cost, paired_ratio
from .nn import Precision, PrecisionAware, QuantLayer, quantized_layers
from .validate import check_floating, check_real, got

__all__ = [
    "VALUE_SETS",
    "Method",
    "resolve_values",
    "rdhs_select",
    "sgt_select",
    "SearchConv2d",
    "SearchLinear",
    "SearchFactory",
    "search_layers",
    "set_search_options",
    "SearchSchedule",
    "value_fractions",
    "ChoiceTracker",
    "measure_training_cost",
    "measure_selection_cost",
]

VALUE_SETS: dict[int, tuple[float, ...]] = {
    1: (-1.0, 1.0),
    2: (-1.0, -0.5, 0.5, 1.0),
    3: (-1.0, -0.5, -0.25, -0.125, 0.125, 0.25, 0.5, 1.0),
}
"""The paper's multiplication-free value sets by bit-width: ``{±1}``, ``{±1, ±½}``, ``{±1, ±½, ±¼, ±⅛}``."""

Method = Literal["rdhs", "sgt"]
METHODS: tuple[str, ...] = ("rdhs", "sgt")


def resolve_values(values: int | Sequence[float] | Tensor) -> tuple[float, ...]:
    """A value set as a sorted tuple: a bit-width (a key of :data:`VALUE_SETS`) or the values.

    Raises:
        ValueError: unknown bit-width, fewer than 2 values, non-finite, or not strictly increasing.
    """
    if isinstance(values, (bool, str)) or not (isinstance(values, (int, Sequence)) or hasattr(values, "tolist")):
        raise TypeError(f"values must be a bit-width (one of {sorted(VALUE_SETS)}) or a sequence of numbers, "
                        f"{got(values)}")
    if getattr(values, "ndim", 1) != 1:
        raise ValueError(f"values must be one-dimensional, got shape {tuple(values.shape)}")
    if isinstance(values, int):
        if values not in VALUE_SETS:
            raise ValueError(f"values={values} is not a known bit-width; use one of {sorted(VALUE_SETS)} "
                             "or give the values themselves")
        return VALUE_SETS[values]
    items = values.tolist() if hasattr(values, "tolist") else list(values)   # tensors, numpy arrays
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items):
        raise TypeError(f"values must be numbers, got {items!r}")
    vals = tuple(float(v) for v in items)
    if len(vals) < 2:
        raise ValueError(f"a value set needs at least 2 values, got {vals}")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"values must be finite, got {vals}")
    if any(a >= b for a, b in pairwise(vals)):
        raise ValueError(f"values must be strictly increasing (sorted, no repeats), got {vals}")
    return vals


def _values_for(alpha: Tensor, values: Sequence[float] | Tensor) -> Tensor:
    """``values`` as a tensor ``[m]`` on ``alpha``'s device and dtype, checked against ``α.shape[-1]``.

    A tensor is checked like :func:`resolve_values` checks a sequence (finite, strictly
    increasing), with one reduction instead of a copy to Python; ``alpha`` must be floating.
    """
    check_floating("alpha", alpha)
    if isinstance(values, Tensor):
        if values.dim() != 1 or values.numel() < 2 or values.is_complex():
            raise ValueError(f"values must be a 1-D tensor of at least 2 numbers, got shape {tuple(values.shape)}")
        if not bool(torch.isfinite(values).all() & (values[1:] > values[:-1]).all()):
            raise ValueError(f"values must be finite and strictly increasing (sorted, no repeats), got {values}")
        q = values
    else:
        q = torch.tensor(resolve_values(values))
    q = q.to(device=alpha.device, dtype=alpha.dtype)
    if alpha.dim() == 0 or alpha.shape[-1] != q.numel():
        raise ValueError(f"alpha's last dimension must hold one logit per value: alpha {tuple(alpha.shape)}, "
                         f"{q.numel()} values")
    return q


def rdhs_select(
    alpha: Tensor,
    values: Sequence[float] | Tensor,
    tau: float = 1.0,
    mu: float = 0.0,
    hard: bool = True,
) -> Tensor:
    """Reparameterisation with (deterministic, when ``mu=0``) hard sampling; QTS Sec. 3.2.

    ``π = softmax((α + μ·g)/τ)`` with ``g`` standard Gumbel noise. Forward: the hard sample
    ``q_{argmax π}`` (or the soft ``Σ_k π_k q_k`` when ``hard=False``). Backward, in both cases,
    through the soft sample: ``∂L/∂α_k = ∂L/∂w · (1/τ) · π_k · (q_k − Σ_j π_j q_j)``.

    Args:
        alpha: logits ``[*, m]``, e.g. ``[C_out, C_in, k, k, m]`` for a conv.
        values: the ``m`` sorted values ``q`` (a tuple, or a tensor ``[m]``).
        tau: temperature ``τ > 0``; it scales only the gradient when ``hard`` (argmax ignores it).
        mu: noise scale ``μ ≥ 0``; 0 makes the forward pass deterministic.
        hard: forward the hard sample (RDHS) or the soft one.

    Returns:
        weights ``[*]`` = ``alpha.shape[:-1]``, ``alpha``'s dtype (float16/bfloat16 logits are
        softmaxed in float32). A row of logits holding NaN gives a NaN weight, as does one whose
        largest ``α/τ`` overflows (beyond ~3e38 in float32): never a silently finite weight.
    """
    q = _values_for(alpha, values)                                  # [m]
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau!r}")
    if not mu >= 0:
        raise ValueError(f"mu must be non-negative, got {mu!r}")
    return _rdhs(alpha, q, tau, mu, hard)


def _rdhs(alpha: Tensor, q: Tensor, tau: float, mu: float, hard: bool = True) -> Tensor:
    """:func:`rdhs_select` on values ``q [m]`` already checked (a searchable layer's own)."""
    logits = alpha
    if mu > 0:
        gumbel = -torch.empty_like(alpha).exponential_().log()      # −log Exp(1) ~ Gumbel(0, 1)
        logits = alpha + mu * gumbel
    if logits.dtype in (torch.float16, torch.bfloat16):
        # In 16 bits α/τ overflows for large logits (65504 is float16's largest), and softmax(inf) is NaN.
        pi = torch.softmax(logits.float() / tau, dim=-1)           # [*, m], float32
        soft = (pi @ q.float()).to(alpha.dtype)
    else:
        pi = torch.softmax(logits / tau, dim=-1)                    # [*, m]
        soft = pi @ q                                               # [*]  Σ_k π_k q_k
    if not hard:
        return soft
    # Straight through: the value of the hard sample, the gradient of the soft one.
    return q[logits.argmax(-1)] + (soft - soft.detach())


class _SGTSelect(torch.autograd.Function):
    """``w = q[argmax α]``; ``∂L/∂α_k = ∂L/∂w · sign(q_k − q_{k*})``. Saves only the chosen index."""

    @staticmethod
    def forward(ctx, alpha: Tensor, q: Tensor) -> Tensor:
        top, index = alpha.max(-1)                                  # [*]; NaN wins, as in argmax
        # One byte per weight is enough for m <= 256 (a quarter of the float weight).
        ctx.save_for_backward(index.to(torch.uint8) if q.numel() <= 256 else index, q)
        # A NaN logit gives a NaN weight, not the value it happens to index.
        return torch.where(torch.isnan(top), top, q[index])         # [*]

    @staticmethod
    def backward(ctx, grad_w: Tensor):
        index, q = ctx.saved_tensors
        chosen = q[index.long()]                                    # [*]
        mask = torch.sign(q - chosen.unsqueeze(-1))                 # [*, m], the sign mask
        return grad_w.unsqueeze(-1) * mask, None


def sgt_select(alpha: Tensor, values: Sequence[float] | Tensor) -> Tensor:
    """Stochastic gradient transfer; QTS Sec. 3.3.

    Forward ``q_{k*}`` with ``k* = argmax_k α_k``, without a softmax or an ``m``-fold copy of the
    weights; backward ``∂L/∂α_k = ∂L/∂w · sign(q_k − q_{k*})`` (zero for the chosen value).
    Logits holding NaN give NaN weights, so a diverged search shows as a NaN loss.

    Args:
        alpha: logits ``[*, m]``.
        values: the ``m`` sorted values.

    Returns:
        weights ``[*]`` = ``alpha.shape[:-1]``.
    """
    return _SGTSelect.apply(alpha, _values_for(alpha, values))


class _SearchLayer(QuantLayer, PrecisionAware):
    """Logits ``α [*weight_shape, m]`` over a value set, and the selection that makes the weight.

    The value set fixes the precision at construction: ``⌈log2 m⌉``-bit weights, float
    activations. :func:`reprolib.nn.set_precision` accepts exactly that and raises otherwise,
    rather than silently leaving the layer as it is.
    """

    alpha: nn.Parameter
    values: Tensor

    def _init_search(self, weight_shape: Sequence[int], values, method: str, init_noise: float,
                     device=None, dtype=None) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not init_noise >= 0:
            raise ValueError(f"init_noise must be non-negative, got {init_noise!r}")
        vals = resolve_values(values)
        m = len(vals)
        self.register_buffer("values", torch.tensor(vals, device=device, dtype=dtype))
        alpha = torch.full((*weight_shape, m), math.log(1.0 / m), device=device, dtype=dtype)
        self.alpha = nn.Parameter(alpha + init_noise * torch.randn_like(alpha))
        self.precision = Precision(w_bits=math.ceil(math.log2(m)), a_bits=None)
        self.method = method
        self.tau = 1.0
        self.mu = 0.0

    def apply_precision(self, precision: Precision) -> None:
        if (precision.w_bits, precision.a_bits) != (self.precision.w_bits, None):
            raise ValueError(
                f"a searchable layer's precision is fixed by its {self.values.numel()} values: "
                f"{self.precision.w_bits}-bit weights, float activations (Precision(w_bits="
                f"{self.precision.w_bits}, a_bits=None)); got {precision}. Build a new model with "
                "SearchFactory(values=...) for another value set."
            )

    def quantized_weight(self) -> Tensor:
        """The weight ``[*weight_shape]`` chosen by the logits; noise (RDHS, μ > 0) only in training."""
        # The values were checked at construction: the unchecked selections (no device sync).
        if self.method == "sgt":
            return _SGTSelect.apply(self.alpha, self.values)
        return _rdhs(self.alpha, self.values, self.tau, self.mu if self.training else 0.0)

    def choices(self) -> Tensor:
        """The index of the chosen value of every weight, ``[*weight_shape]`` (argmax of ``α``)."""
        return self.alpha.detach().argmax(-1)

    def _search_repr(self) -> str:
        return f"values={tuple(self.values.tolist())}, method={self.method}, tau={self.tau:.3g}, mu={self.mu:g}"


class SearchConv2d(_SearchLayer):
    """A conv whose weight ``[C_out, C_in/groups, k, k]`` is searched: logits ``α [..., m]``.

    Computes ``conv(x, select(α, values))``; input ``[N, C_in, H, W]``, output ``[N, C_out, H', W']``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], *,
                 stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = False,
                 values: int | Sequence[float] = 1, method: Method = "rdhs", init_noise: float = 1e-5,
                 device=None, dtype=None) -> None:
        super().__init__()
        k = nn.modules.utils._pair(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.stride, self.padding = nn.modules.utils._pair(stride), padding
        self.dilation, self.groups = nn.modules.utils._pair(dilation), groups
        self._init_search((out_channels, in_channels // groups, *k), values, method, init_noise, device, dtype)
        self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype)) if bias else None

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **search_kwargs) -> SearchConv2d:
        """A searchable layer with ``conv``'s geometry. The float weight is dropped: the search starts
        from uniform logits, as in the paper. A bias (our models have none) is kept in float."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"only zero padding is supported, got padding_mode={conv.padding_mode!r}")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype,
                    **search_kwargs)
        if conv.bias is not None:
            layer.bias.data.copy_(conv.bias.data)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.quantized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"{self._search_repr()}")


class SearchLinear(_SearchLayer):
    """A linear layer whose weight ``[out, in]`` is searched; input ``[N, in]``, output ``[N, out]``."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 values: int | Sequence[float] = 1, method: Method = "rdhs", init_noise: float = 1e-5,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_search((out_features, in_features), values, method, init_noise, device, dtype)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear, **search_kwargs) -> SearchLinear:
        """A searchable layer of ``linear``'s shape; the float weight is dropped, a bias kept."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype, **search_kwargs)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.data)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self._search_repr()}"


@dataclass(frozen=True)
class SearchFactory:
    """Builds searchable layers for :func:`reprolib.nn.quantize_model` (first/last stay float).

    Args:
        values: a bit-width of :data:`VALUE_SETS` or a sorted sequence of values.
        method: ``"rdhs"`` or ``"sgt"``.
        init_noise: standard deviation of the noise added to the initial logits ``log(1/m)``
            (paper: 1e-5; it decides the initial choices, which are uniformly random).
    """

    values: int | tuple[float, ...] = 1
    method: Method = "rdhs"
    init_noise: float = 1e-5

    def __post_init__(self) -> None:
        resolve_values(self.values)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        check_real("init_noise", self.init_noise, low=0)

    def __call__(self, name: str, module: nn.Module) -> nn.Module:
        kwargs = {"values": self.values, "method": self.method, "init_noise": self.init_noise}
        if isinstance(module, nn.Conv2d):
            return SearchConv2d.from_float(module, **kwargs)
        if isinstance(module, nn.Linear):
            return SearchLinear.from_float(module, **kwargs)
        raise TypeError(f"SearchFactory converts Conv2d and Linear layers, got {name}: {type(module).__name__}")


def search_layers(model: nn.Module) -> list[tuple[str, _SearchLayer]]:
    """The searchable layers of ``model`` as ``(name, layer)``, in forward order."""
    return [(n, m) for n, m in quantized_layers(model) if isinstance(m, _SearchLayer)]


def set_search_options(model: nn.Module, *, tau: float | None = None, mu: float | None = None) -> None:
    """Set the temperature ``τ`` and/or the noise scale ``μ`` of every searchable layer.

    Raises:
        ValueError: ``τ ≤ 0``, ``μ < 0``, or ``μ > 0`` on a model with SGT layers (SGT has no noise).
    """
    if tau is not None and not tau > 0:
        raise ValueError(f"tau must be positive, got {tau!r}")
    if mu is not None and not mu >= 0:
        raise ValueError(f"mu must be non-negative, got {mu!r}")
    layers = search_layers(model)
    if mu and any(layer.method == "sgt" for _, layer in layers):
        raise ValueError(f"mu={mu} but SGT has no sampling noise; use mu=0 with method='sgt'")
    for _, layer in layers:
        if tau is not None:
            layer.tau = float(tau)
        if mu is not None:
            layer.mu = float(mu)


@dataclass(frozen=True)
class SearchSchedule:
    """The training options of the search, applied by :func:`reprolib.train.fit` at each epoch start.

    ``τ_e = tau0 · decay^e`` (paper: τ from 1, ×0.97 per epoch) and the noise scale ``μ``
    (paper Table 3: 0, 0.001, 0.01, 0.1). Use ``fit(..., on_epoch_start=[SearchSchedule(mu=0.01)])``.
    """

    tau0: float = 1.0
    decay: float = 0.97
    mu: float = 0.0

    def __post_init__(self) -> None:
        if not self.tau0 > 0:
            raise ValueError(f"tau0 must be positive, got {self.tau0!r}")
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {self.decay!r}")
        if not self.mu >= 0:
            raise ValueError(f"mu must be non-negative, got {self.mu!r}")

    def tau(self, epoch: int) -> float:
        """The temperature of epoch ``epoch`` (counted from 0)."""
        return self.tau0 * self.decay**epoch

    def __call__(self, model: nn.Module, epoch: int) -> None:
        set_search_options(model, tau=self.tau(epoch), mu=self.mu)


def value_fractions(model: nn.Module):
    """The fraction of the weights of each searchable layer that chose each value.

    Returns:
        a pandas ``DataFrame``, one row per layer (forward order), one column per value.
    """
    import pandas as pd

    rows = {}
    for name, layer in search_layers(model):
        m = layer.values.numel()
        counts = torch.bincount(layer.choices().flatten(), minlength=m).double()
        rows[name] = dict(zip(layer.values.tolist(), (counts / counts.sum()).tolist(), strict=True))
    return pd.DataFrame.from_dict(rows, orient="index")


class ChoiceTracker:
    """Epoch hooks that count the weights whose chosen value changed during each epoch.

    ``fit(..., on_epoch_start=[schedule, tracker.on_epoch_start], on_epoch_end=[tracker.on_epoch_end])``;
    then :meth:`frame` has one row per (epoch, layer): ``changed`` (count), ``changed_frac``,
    ``numel``, the layer's ``method`` and its ``tau`` during the epoch (used by RDHS only).
    """

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []
        self._before: dict[str, Tensor] = {}

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        self._before = {name: layer.choices().clone() for name, layer in search_layers(model)}

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        for name, layer in search_layers(model):
            if name not in self._before:
                raise RuntimeError("ChoiceTracker.on_epoch_end ran without on_epoch_start; register both hooks")
            changed = int((layer.choices() != self._before[name]).sum())
            numel = layer.choices().numel()
            self.records.append({"epoch": epoch, "layer": name, "changed": changed,
                                 "changed_frac": changed / numel, "numel": numel, "method": layer.method,
                                 "tau": layer.tau})

    def frame(self):
        """The records as a pandas ``DataFrame``."""
        import pandas as pd

        columns = ["epoch", "layer", "changed", "changed_frac", "numel", "method", "tau"]
        return pd.DataFrame(self.records, columns=columns)


def measure_selection_cost(weight_shape: Sequence[int], *, bits: Sequence[int] = (1, 2, 3),
                           repeats: int = 50, warmup: int = 3, device: str | torch.device = "cpu"):
    """Time of the weight selection alone, forward and backward, RDHS vs. SGT, per bit-width.

    The part of a training step in which the two methods differ: ``rdhs_select`` / ``sgt_select``
    on logits ``[*weight_shape, m]``, then the backward of a random upstream gradient. The calls
    are interleaved as in :func:`measure_training_cost`; medians over ``repeats``.

    Returns:
        a pandas ``DataFrame`` indexed by bit-width: ``rdhs_us``, ``sgt_us`` (microseconds) and
        ``sgt_over_rdhs`` (their ratio, paired within each repetition).
    """
    import pandas as pd

    rows = {}
    for b in bits:
        q = torch.tensor(resolve_values(b), device=device)
        alpha = torch.randn(*weight_shape, q.numel(), device=device, requires_grad=True)
        upstream = torch.randn(*weight_shape, device=device)
        select = {"rdhs": lambda a, q=q: rdhs_select(a, q), "sgt": lambda a, q=q: sgt_select(a, q)}

        def run(name: str, alpha=alpha, upstream=upstream, select=select) -> None:
            select[name](alpha).backward(upstream)
            alpha.grad = None

        times = interleaved_times({n: (lambda n=n: run(n)) for n in select}, repeats=repeats, warmup=warmup,
                                  device=alpha.device)
        rows[b] = {"rdhs_us": 1e6 * statistics.median(times["rdhs"]), "sgt_us": 1e6 * statistics.median(times["sgt"]),
                   "sgt_over_rdhs": paired_ratio(times, "sgt", "rdhs")}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("bits")
