"""Quantized layers, the model converter and the one owner of a model's current precision.

A *quantized layer* (:class:`QuantLayer`) is a conv or linear layer whose weight and input
activation pass through quantizer modules before the float op. Each paper brings its own
quantizers (LSQ here; EQ-Net's elastic quantizer, DoReFa codes, searched value sets in their
modules), but they all plug into the same layers and obey the same switch:

    set_precision(model, 4)                         # every quantized module to 4 bits
    set_precision(model, Precision(w_bits=2, a_bits=4, granularity="tensor"))
    set_precision(model, [p_layer0, p_layer1, ...]) # one Precision per quantized layer
    with using_precision(model, 2): ...             # temporarily, restored afterwards

``set_precision`` walks the registered :class:`PrecisionAware` modules, so no module can be
missed (the papers' code flips attributes with ``model.apply(lambda m: setattr(...))``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quant import fake_quantize, lsq_grad_scale, lsq_init_step, scale_grad
from .validate import check_bool, check_int, got

__all__ = [
    "Precision",
    "PrecisionAware",
    "Quantizer",
    "LSQQuantizer",
    "QuantLayer",
    "QuantConv2d",
    "QuantLinear",
    "LSQFactory",
    "quantize_model",
    "quantized_layers",
    "set_precision",
    "using_precision",
]

Granularity = Literal["channel", "tensor"]


def _check_bits(name: str, bits: object) -> None:
    if bits is None:
        return
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"{name} must be an int between 1 and 32 or None (float), {got(bits)}")
    if not 1 <= bits <= 32:
        raise ValueError(f"{name} must be between 1 and 32 or None (float), {got(bits)}")


@dataclass(frozen=True)
class Precision:
    """The quantization form of one layer (or of every layer, when applied uniformly).

    Attributes:
        w_bits: weight bit-width, ``None`` for float.
        a_bits: input-activation bit-width, ``None`` for float.
        granularity: ``"channel"`` (one weight step per output channel) or ``"tensor"``
            (one per layer). Weights only; activations are always per tensor (EQ-Net Sec. 3.2).
        w_symmetric, a_symmetric: zero point fixed at 0 (symmetric) or learned (asymmetric).

    Quantizers read the fields they understand and ignore the rest (LSQ reads the bits only).
    """

    w_bits: int | None = 8
    a_bits: int | None = 8
    granularity: Granularity = "channel"
    w_symmetric: bool = True
    a_symmetric: bool = True

    def __post_init__(self) -> None:
        _check_bits("w_bits", self.w_bits)
        _check_bits("a_bits", self.a_bits)
        if self.granularity not in ("channel", "tensor"):
            raise ValueError(
                f"granularity must be 'channel' or 'tensor', got {self.granularity!r}"
            )
        check_bool("w_symmetric", self.w_symmetric)
        check_bool("a_symmetric", self.a_symmetric)

    @classmethod
    def uniform(cls, bits: int | None, **kwargs) -> Precision:
        """Weights and activations at the same bit-width."""
        return cls(w_bits=bits, a_bits=bits, **kwargs)

    @classmethod
    def coerce(cls, p: int | Precision | None) -> Precision:
        """Accept an int bit-width, ``None`` (float) or a :class:`Precision`."""
        if isinstance(p, Precision):
            return p
        if p is None or (isinstance(p, int) and not isinstance(p, bool)):
            return cls.uniform(p)
        raise TypeError(f"a precision must be an int bit-width, None or a Precision, {got(p)}")


class PrecisionAware(nn.Module):
    """A module whose behaviour depends on the model's current :class:`Precision`.

    Subclasses implement :meth:`apply_precision`; :func:`set_precision` is the only caller.

    Switching precision is meant to be instant (Any-Precision's runtime switch), so the plain
    attributes it sets, ``bits`` and ``precision``, skip ``nn.Module.__setattr__``'s search for
    parameters, buffers and submodules of that name (whose ``isinstance(value, Parameter)``
    check alone costs more than the switch); they can never be tensors or modules.
    """

    precision: Precision
    _PLAIN = frozenset({"bits", "precision"})
    #: True for a module none of whose submodules is precision-aware (a switchable BN's copies):
    #: :func:`set_precision` then does not walk into it.
    precision_leaf: bool = False

    def __setattr__(self, name: str, value) -> None:
        if name in PrecisionAware._PLAIN and not isinstance(value, (Tensor, nn.Module)):
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)

    def apply_precision(self, precision: Precision) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Quantizer(PrecisionAware):
    """Base class of weight and activation quantizers.

    Args:
        role: ``"weight"`` (reads ``w_bits``) or ``"act"`` (reads ``a_bits``).
    """

    def __init__(self, role: Literal["weight", "act"]) -> None:
        super().__init__()
        if role not in ("weight", "act"):
            raise ValueError(f"role must be 'weight' or 'act', got {role!r}")
        self.role = role

    def bits_of(self, precision: Precision) -> int | None:
        return precision.w_bits if self.role == "weight" else precision.a_bits


def _check_layout(channels: object, weight_dim: object, signed: object) -> None:
    """The shape arguments every learned-step quantizer takes: ``channels`` (per-channel steps, or
    ``None``), the weight's ``weight_dim`` and ``signed`` (``None``: signed for weights)."""
    if channels is not None:
        check_int("channels", channels, low=1)
    check_int("weight_dim", weight_dim, low=1)
    if signed is not None:
        check_bool("signed", signed)


def _lsq_bit_widths(bits: object) -> tuple[int, ...]:
    """``bits`` (an int or a non-empty sequence of ints in 1..32) as a tuple."""
    bit_widths = tuple(bits) if isinstance(bits, Sequence) and not isinstance(bits, str) else (bits,)
    if not bit_widths:
        raise ValueError("bits must name at least one bit-width, got an empty sequence")
    for b in bit_widths:
        if b is None:
            raise ValueError("LSQ bit-widths must be ints; use Precision(None) for float")
        _check_bits("bits", b)
    return bit_widths


class LSQQuantizer(Quantizer):
    """Learned Step Size Quantization (Esser et al., ICLR 2020).

    ``x̂ = fake_quantize(x, s_b, 0, b)`` with a learned step ``s_b`` for each supported
    bit-width ``b``; the step's gradient is scaled by ``g = 1/sqrt(N · q_max)`` (LSQ Eq. 4),
    ``N`` being the number of elements one step covers (the weight tensor, one output channel's
    kernel, or one sample's activations). Each step is initialised on its first batch to
    ``2·mean|x| / sqrt(q_max)``.

    The step is stored as ``log s`` (``log_step``), so that no optimizer can make it zero or
    negative: Adam moves a parameter by about the learning rate whatever its gradient, which turns
    an 8-bit step of ~0.01 negative within a few steps. The gradient reaching ``log s`` is LSQ's,
    ``∂L/∂log s = s · g · ∂L/∂s``.

    NaN inputs give NaN outputs where they are (:func:`reprolib.quant.fake_quantize`); a NaN in
    the first batch a bit-width sees makes its initial step NaN, and every later output NaN.

    Args:
        role: ``"weight"`` or ``"act"``.
        bits: the bit-width, or several (one step each; :func:`set_precision` picks).
        signed: integer range; defaults to signed for weights, unsigned for activations (the
            input of every quantized layer in our models follows a ReLU).
        channels: per-output-channel steps for a weight of this many channels; ``None`` for one
            step per tensor.
        weight_dim: number of dimensions of the weight (4 for conv, 2 for linear).
    """

    def __init__(
        self,
        role: Literal["weight", "act"],
        bits: int | Sequence[int] = 8,
        *,
        signed: bool | None = None,
        channels: int | None = None,
        weight_dim: int = 4,
    ) -> None:
        super().__init__(role)
        bit_widths = _lsq_bit_widths(bits)
        if channels is not None and role != "weight":
            raise ValueError("per-channel steps are for weights only (activations are per tensor)")
        _check_layout(channels, weight_dim, signed)
        self.bit_widths = tuple(sorted(set(bit_widths)))
        self.signed = (role == "weight") if signed is None else signed
        shape = (channels,) + (1,) * (weight_dim - 1) if channels is not None else ()
        self.per_channel = channels is not None
        self.log_step = nn.ParameterDict({str(b): nn.Parameter(torch.zeros(shape)) for b in self.bit_widths})
        self.register_buffer("initialized", torch.zeros(len(self.bit_widths), dtype=torch.bool))
        self.bits: int | None = max(self.bit_widths)
        self.precision = Precision.uniform(self.bits)

    def apply_precision(self, precision: Precision) -> None:
        bits = self.bits_of(precision)
        if bits is not None and bits not in self.bit_widths:
            raise ValueError(
                f"this LSQ {self.role} quantizer was built for bits {self.bit_widths}, got {bits}"
            )
        self.bits = bits
        self.precision = precision

    def forward(self, x: Tensor) -> Tensor:
        if self.bits is None:
            return x
        bits = self.bits
        idx = self.bit_widths.index(bits)
        log_step = self.log_step[str(bits)]
        if not self.initialized[idx]:
            with torch.no_grad():
                dim = 0 if self.per_channel else None
                log_step.copy_(lsq_init_step(x, bits, self.signed, dim=dim).log().reshape(log_step.shape))
                self.initialized[idx] = True
        numel = x[0].numel() if (self.per_channel or self.role == "act") else x.numel()
        s = scale_grad(log_step, lsq_grad_scale(numel, bits, self.signed)).exp()
        return fake_quantize(x, s, 0.0, bits, self.signed)

    def step(self, bits: int | None = None) -> Tensor:
        """The current step size ``s`` of ``bits`` (default: the active bit-width), detached."""
        bits = self.bits if bits is None else bits
        if bits not in self.bit_widths:
            raise ValueError(f"this LSQ quantizer has steps for bits {self.bit_widths}, got {bits}")
        return self.log_step[str(bits)].detach().exp()

    def extra_repr(self) -> str:
        gran = "per-channel" if self.per_channel else "per-tensor"
        return f"{self.role}, bits={self.bit_widths}, {gran}, signed={self.signed}"


class QuantLayer:
    """Marker mixin of quantized layers; :func:`quantized_layers` finds them in forward order."""

    def quantized_weight(self) -> Tensor:  # pragma: no cover - interface
        """The weight the layer computes with at its current precision."""
        raise NotImplementedError


class _QuantizedWeightLayer(QuantLayer):
    weight_quantizer: nn.Module
    act_quantizer: nn.Module

    def _init_quantizers(self, weight_quantizer: nn.Module | None, act_quantizer: nn.Module | None):
        self.weight_quantizer = weight_quantizer if weight_quantizer is not None else nn.Identity()
        self.act_quantizer = act_quantizer if act_quantizer is not None else nn.Identity()

    def quantized_weight(self) -> Tensor:
        return self.weight_quantizer(self.weight)


class QuantConv2d(_QuantizedWeightLayer, nn.Conv2d):
    """``Conv2d`` computing ``conv(Q_a(x), Q_w(W))``; shapes as ``nn.Conv2d``."""

    def __init__(self, *args, weight_quantizer=None, act_quantizer=None, **kwargs) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_quantizers(weight_quantizer, act_quantizer)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantizer=None, act_quantizer=None) -> QuantConv2d:
        """Wrap ``conv``'s parameters (shared, not copied) with the given quantizers."""
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
            weight_quantizer=weight_quantizer, act_quantizer=act_quantizer,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        layer.weight = conv.weight
        layer.bias = conv.bias
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.act_quantizer(x), self.quantized_weight(), self.bias)


class QuantLinear(_QuantizedWeightLayer, nn.Linear):
    """``Linear`` computing ``Q_a(x) · Q_w(W)ᵀ + b``; shapes as ``nn.Linear``."""

    def __init__(self, *args, weight_quantizer=None, act_quantizer=None, **kwargs) -> None:
        nn.Linear.__init__(self, *args, **kwargs)
        self._init_quantizers(weight_quantizer, act_quantizer)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantizer=None, act_quantizer=None) -> QuantLinear:
        layer = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            weight_quantizer=weight_quantizer, act_quantizer=act_quantizer,
            device=linear.weight.device, dtype=linear.weight.dtype,
        )
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.act_quantizer(x), self.quantized_weight(), self.bias)


LayerFactory = Callable[[str, nn.Module], nn.Module]


@dataclass(frozen=True)
class LSQFactory:
    """Builds LSQ-quantized layers for :func:`quantize_model`.

    Args:
        bits: weight and activation bit-width(s); several give one learned step each.
        per_channel: per-output-channel weight steps (else one per tensor).
        quantize_acts: also quantize each layer's input activation.
    """

    bits: int | tuple[int, ...] = 8
    per_channel: bool = True
    quantize_acts: bool = True

    def __post_init__(self) -> None:
        _lsq_bit_widths(self.bits)
        check_bool("per_channel", self.per_channel)
        check_bool("quantize_acts", self.quantize_acts)

    def __call__(self, name: str, module: nn.Module) -> nn.Module:
        w = module.weight
        wq = LSQQuantizer("weight", self.bits, channels=w.shape[0] if self.per_channel else None,
                          weight_dim=w.dim())
        aq = LSQQuantizer("act", self.bits) if self.quantize_acts else None
        cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
        return cls.from_float(module, wq, aq)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_model(
    model: nn.Module,
    factory: LayerFactory,
    *,
    keep_first: bool = True,
    keep_last: bool = True,
    skip: Sequence[str] = (),
) -> nn.Module:
    """Swap every ``Conv2d``/``Linear`` of ``model`` for ``factory(name, layer)``, in place.

    Layers are taken in registration order, which is the forward order of every model in
    :mod:`reprolib.models`. As in all three papers, the first and the last layer stay in float
    by default (``keep_first``/``keep_last``); ``skip`` names further layers to keep.

    Returns:
        ``model`` itself, for chaining.
    """
    if isinstance(skip, str):
        raise TypeError(f"skip must be a sequence of layer names, not one string; use skip=[{skip!r}]")
    check_bool("keep_first", keep_first)
    check_bool("keep_last", keep_last)
    candidates = [
        (n, m) for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, QuantLayer)
    ]
    if not candidates:
        raise ValueError("the model has no Conv2d or Linear layer to quantize")
    unknown = set(skip) - {n for n, _ in candidates}
    if unknown:
        raise ValueError(f"skip names layers the model does not have: {sorted(unknown)}")
    keep = set(skip)
    if keep_first:
        keep.add(candidates[0][0])
    if keep_last:
        keep.add(candidates[-1][0])
    for name, module in candidates:
        if name not in keep:
            _set_submodule(model, name, factory(name, module))
    return model


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The quantized layers of ``model`` as ``(name, module)``, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]


def _aware(module: nn.Module) -> list[PrecisionAware]:
    """The precision-aware modules in ``module`` (itself included), in registration order.

    A direct walk over ``_modules``: ``Module.modules()`` builds every module's dotted name on
    the way, which is most of a runtime precision switch's cost.
    """
    found: list[PrecisionAware] = []
    stack = [module]
    while stack:
        m = stack.pop()
        if m is None:   # a submodule slot registered as None
            continue
        if isinstance(m, PrecisionAware):
            found.append(m)
            if m.precision_leaf:
                continue
        if m._modules:
            stack.extend(reversed(m._modules.values()))
    return list(dict.fromkeys(found))  # a module shared between parents is switched once


def set_precision(
    model: nn.Module, precision: int | Precision | Sequence[int | Precision | None] | None
) -> None:
    """Set the precision of every :class:`PrecisionAware` module of ``model``.

    Args:
        precision: one precision for the whole model (an int bit-width, ``None`` for float, or a
            :class:`Precision`), or a sequence with one entry per quantized layer in forward
            order (mixed precision). A sequence needs every precision-aware module to sit inside
            a quantized layer (a switchable BatchNorm, for instance, needs one global precision).
    """
    if isinstance(precision, Sequence) and not isinstance(precision, str):
        layers = quantized_layers(model)
        if len(precision) != len(layers):
            raise ValueError(
                f"got {len(precision)} per-layer precisions but the model has {len(layers)} "
                f"quantized layers: {[n for n, _ in layers]}"
            )
        inside = {id(m) for _, layer in layers for m in _aware(layer)}
        outside = [type(m).__name__ for m in _aware(model) if id(m) not in inside]
        if outside:
            raise ValueError(
                f"per-layer precisions cannot be applied: {sorted(set(outside))} modules outside "
                "the quantized layers need one precision for the whole model"
            )
        for (_, layer), p in zip(layers, precision, strict=True):
            p = Precision.coerce(p)
            for m in _aware(layer):
                m.apply_precision(p)
        return
    p = Precision.coerce(precision)
    for m in _aware(model):
        m.apply_precision(p)


@contextlib.contextmanager
def using_precision(model: nn.Module, precision) -> Iterator[nn.Module]:
    """Context manager: :func:`set_precision`, then restore every module's previous precision."""
    saved = [(m, m.precision) for m in _aware(model)]
    set_precision(model, precision)
    try:
        yield model
    finally:
        for m, p in saved:
            m.apply_precision(p)
