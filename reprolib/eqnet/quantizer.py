"""EQ-Net's elastic quantizer and the supernet builder (Xu et al., ICCV 2023, Sec. 3.2).

One shared float weight; one *set of quantization parameters per form*. EQ-Net Eq. 1 with the
LSQ+ form of the offset used by the authors' code:

    x̂ = s_b · clamp(round((x − β_b) / s_b), q_min, q_max) + β_b                  (Eq. 1)

* **Elastic bit-width** (Sec. 3.2.1): a separate step ``s_b`` (and offset ``β_b``) for every
  ``b`` in :data:`BIT_CHOICES`; weights are shared.
* **Elastic symmetry** (Sec. 3.2.2): *symmetric* is ``β = 0``; *asymmetric* uses the learned,
  real-valued offset ``β_b`` (LSQ+, Bhalgat et al. 2020). For **weights** (signed codes
  ``[−2^(b−1), 2^(b−1)−1]``) symmetric means a grid centred on 0. For **activations** after a
  ReLU (unsigned codes ``[0, 2^b−1]``) *symmetric* means the grid ``{0, s, …, (2^b−1)s}``: real
  zero is exactly the lowest level (zero offset, the unsigned analogue of ``z = 0``);
  *asymmetric* shifts the grid to ``{β + k·s}`` with ``β`` learned, so it may also cover
  negative inputs.
* **Elastic granularity** (Sec. 3.2.3, weights only): per-channel steps ``[C_out, 1, 1, 1]`` or
  one per-tensor step. The per-tensor step is learned on its own, or (Table 4 ablation) derived
  from the per-channel steps by their min / mean / max (``tensor_step``).

Gradients: STE for ``x``; LSQ for ``s`` (Eq. 2 of LSQ) and LSQ+ for ``β``, both scaled by
``g = 1/sqrt(N · q_max)``, ``N`` the number of elements one step covers.

Initialisation (PAPERS.md §1): for every bit-width and form, search the clipping ratio
``r ∈ {1 − 0.01·i, i = 0..79}`` minimising the ``L_2.4`` error ``mean |x − Q(x)|^2.4`` on a
calibration batch (per channel for per-channel steps).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ..nn import (
    Precision,
    QuantConv2d,
    Quantizer,
    QuantLayer,
    QuantLinear,
    _check_layout,
    quantize_model,
    quantized_layers,
)
from ..quant import fake_quantize, lsq_grad_scale, qrange, scale_grad
from ..validate import check_floating, check_int, check_ints

__all__ = [
    "BIT_CHOICES",
    "TENSOR_STEP_MODES",
    "ElasticQuantizer",
    "clipping_search",
    "build_supernet",
    "calibrate_supernet",
    "num_elastic_layers",
    "elastic_quantizers",
    "set_tensor_step",
]

BIT_CHOICES: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
TENSOR_STEP_MODES = ("learned", "min", "mean", "max")
CLIP_RATIOS = tuple(1 - 0.01 * i for i in range(80))
LP_NORM = 2.4


def _grid(lo: Tensor, hi: Tensor, bits: int, signed: bool, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Step and offset of the grid covering ``[lo, hi]`` (shapes as ``lo``).

    Symmetric signed: ``s = max(|lo|, |hi|) / 2^(b−1)``, ``β = 0``. Symmetric unsigned:
    ``s = hi / q_max``, ``β = 0``. Asymmetric: ``s = (hi − lo)/(q_max − q_min)``,
    ``β = lo − q_min·s`` (the lowest level sits at ``lo``).
    """
    qmin, qmax = qrange(bits, signed)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / -qmin if signed else hi.clamp_min(0) / qmax
        return scale.clamp_min(1e-8), torch.zeros_like(lo)
    step = ((hi - lo) / (qmax - qmin)).clamp_min(1e-8)
    return step, lo - qmin * step


def _quantize(x: Tensor, step: Tensor, offset: Tensor | None, bits: int, signed: bool) -> Tensor:
    """Eq. 1: ``fake_quantize(x − β, s) + β`` (``β = 0`` when ``offset`` is ``None``)."""
    if offset is None:
        return fake_quantize(x, step, 0.0, bits, signed)
    return fake_quantize(x - offset, step, 0.0, bits, signed) + offset


@torch.no_grad()
def clipping_search(
    x: Tensor, bits: int, *, signed: bool, symmetric: bool, per_channel: bool,
    max_samples: int = 2**12, chunk_elems: int = 2**21,
) -> tuple[Tensor, Tensor]:
    """The ``L_2.4`` clipping search (PAPERS.md §1, "Initialisation").

    For each ratio ``r = 1 − 0.01·i`` (``i = 0..79``) the range ``[r·min x, r·max x]`` gives a
    grid (:func:`_grid`); the ratio with the smallest ``mean |x − Q(x)|^2.4`` wins.

    Args:
        x: the tensor to quantize, e.g. a weight ``[C_out, C_in, k, k]`` or activations
            ``[N, C, H, W]``.
        per_channel: one search per slice along dimension 0 (weights ``[C_out, 1, 1, 1]``).
        max_samples: speed bound: the error is measured on about this many evenly strided
            elements (the same stride in every channel); the range uses all of ``x``.
        chunk_elems: memory bound: ratios are tried in chunks of about this many elements.

    Returns:
        ``(step, offset)``: scalars, or shaped ``[C, 1, …, 1]`` when ``per_channel``.
    """
    check_floating("x", x)
    if x.numel() == 0 or (per_channel and x.dim() < 2):
        raise ValueError(f"x must be non-empty (and at least 2-D when per_channel), got shape {tuple(x.shape)}")
    check_int("max_samples", max_samples, low=1)
    check_int("chunk_elems", chunk_elems, low=1)
    out_shape = (x.shape[0],) + (1,) * (x.dim() - 1) if per_channel else ()
    flat = x.detach().flatten(1) if per_channel else x.detach().reshape(1, -1)  # [C, K] or [1, numel]
    lo = flat.amin(dim=1, keepdim=True)  # [C, 1]: the range uses every element
    hi = flat.amax(dim=1, keepdim=True)
    sample = flat[:, :: -(-flat.numel() // max_samples)]  # [C, K'], C·K' ≈ max_samples: the error on a subset
    ratios = torch.tensor(CLIP_RATIOS, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)  # [R, 1, 1]
    errs, steps, offsets = [], [], []
    for r in ratios.split(max(1, chunk_elems // sample.numel())):
        step, offset = _grid(r * lo, r * hi, bits, signed, symmetric)  # [r, C, 1]
        err = (sample - _quantize(sample, step, offset, bits, signed)).abs().pow(LP_NORM)  # [r, C, K]
        errs.append(err.mean(dim=2))  # [r, C]
        steps.append(step[..., 0])
        offsets.append(offset[..., 0])
    best = torch.cat(errs).argmin(dim=0, keepdim=True)  # [1, C]
    step, offset = (torch.cat(t).gather(0, best).reshape(out_shape) for t in (steps, offsets))
    return step, offset


class ElasticQuantizer(Quantizer):
    """The EQ-Net quantizer: learned steps and offsets for every bit-width and form.

    Args:
        role: ``"weight"`` (reads ``w_bits``, ``granularity``, ``w_symmetric``) or ``"act"``
            (reads ``a_bits``, ``a_symmetric``; always per tensor).
        bit_widths: the bit-widths this quantizer can switch to (one parameter set each).
        signed: integer range; default signed for weights, unsigned for activations (the input
            of every elastic layer follows a ReLU). The first layer's input is a signed image.
        channels: output channels of the weight (needed for per-channel steps); weights only.
        weight_dim: dimensions of the weight (4 for conv, 2 for linear).

    Attributes:
        tensor_step: how a weight's per-tensor step is obtained: ``"learned"`` (its own
            parameter, the default) or derived from the per-channel steps by ``"min"``,
            ``"mean"`` or ``"max"`` (EQ-Net Table 4). A derived per-tensor *offset* is the mean
            of the per-channel offsets.

    Parameters (``b`` a bit-width as a string key), per granularity (``_channel``:
    ``[C, 1, 1, 1]``, weights only; ``_tensor``: scalars): ``log_step_*[b]``, the step as
    ``s = exp(log_step)``, and ``zero_*[b]``, the offset in units of the step, ``β = s·z``. Adam's
    update is about ``lr`` whatever the gradient's scale, so a step stored as is (≈0.005 at 8 bits)
    would move by a fifth of itself per update at lr 1e-3 and can turn negative; in log space and
    in step units every update is a relative one. The gradient reaching ``s`` is LSQ's (and
    LSQ+'s for ``β``), scaled by ``g``. All are initialised by :func:`clipping_search` the first
    time the quantizer sees data (or by :meth:`calibrate`). NaN inputs give NaN outputs where they
    are, as :func:`reprolib.quant.fake_quantize` does.
    """

    def __init__(
        self,
        role: Literal["weight", "act"],
        bit_widths: Sequence[int] = BIT_CHOICES,
        *,
        signed: bool | None = None,
        channels: int | None = None,
        weight_dim: int = 4,
    ) -> None:
        super().__init__(role)
        bit_widths = tuple(sorted(set(check_ints("bit_widths", bit_widths, low=2, high=16))))
        if role == "weight" and channels is None:
            raise ValueError("a weight ElasticQuantizer needs channels (its number of output channels)")
        if role == "act" and channels is not None:
            raise ValueError("activations are quantized per tensor; do not pass channels for role='act'")
        _check_layout(channels, weight_dim, signed)
        self.bit_widths = bit_widths
        self.signed = (role == "weight") if signed is None else signed
        self.tensor_step: str = "learned"
        keys = [str(b) for b in bit_widths]
        self.log_step_tensor = nn.ParameterDict({k: nn.Parameter(torch.zeros(())) for k in keys})
        self.zero_tensor = nn.ParameterDict({k: nn.Parameter(torch.zeros(())) for k in keys})
        if role == "weight":
            shape = (channels,) + (1,) * (weight_dim - 1)
            self.log_step_channel = nn.ParameterDict({k: nn.Parameter(torch.zeros(shape)) for k in keys})
            self.zero_channel = nn.ParameterDict({k: nn.Parameter(torch.zeros(shape)) for k in keys})
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.precision = Precision.uniform(max(bit_widths))
        self.calibrating = False

    # -- state ---------------------------------------------------------------------------------
    def apply_precision(self, precision: Precision) -> None:
        bits = self.bits_of(precision)
        if bits is not None and bits not in self.bit_widths:
            raise ValueError(f"this elastic {self.role} quantizer supports bits {self.bit_widths}, got {bits}")
        self.precision = precision

    @property
    def bits(self) -> int | None:
        return self.bits_of(self.precision)

    @property
    def granularity(self) -> str:
        return self.precision.granularity if self.role == "weight" else "tensor"

    @property
    def symmetric(self) -> bool:
        return self.precision.w_symmetric if self.role == "weight" else self.precision.a_symmetric

    def _step_and_zero(self, bits: int, granularity: str) -> tuple[Tensor, Tensor]:
        """``(s, z)`` of one form: the step and the offset in step units (``β = s·z``)."""
        key = str(bits)
        if granularity == "channel":
            if self.role != "weight":
                raise ValueError("activations have per-tensor steps only")
            return self.log_step_channel[key].exp(), self.zero_channel[key]
        if granularity != "tensor":
            raise ValueError(f"granularity must be 'channel' or 'tensor', got {granularity!r}")
        if self.role == "weight" and self.tensor_step != "learned":
            steps = self.log_step_channel[key].exp()  # [C, 1, 1, 1]
            step = {"min": steps.min(), "mean": steps.mean(), "max": steps.max()}[self.tensor_step]
            return step, (steps * self.zero_channel[key]).mean() / step  # β = mean of the channels' β
        return self.log_step_tensor[key].exp(), self.zero_tensor[key]

    def step_and_offset(self, bits: int, granularity: str) -> tuple[Tensor, Tensor]:
        """The step ``s`` and offset ``β`` of one form (per-channel ``[C,1,1,1]``, per-tensor scalars)."""
        step, zero = self._step_and_zero(bits, granularity)
        return step, step * zero

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> None:
        """Initialise every bit-width's and granularity's step and offset on ``x``.

        One step per bit-width and granularity serves both symmetries (Sec. 3.2.2 switches
        symmetry by the offset alone): the step comes from the symmetric :func:`clipping_search`;
        the offset centres that grid on the range the asymmetric search chose,
        ``β = (lo + hi)/2 − s·(q_min + q_max)/2``.
        """
        grans = ("channel", "tensor") if self.role == "weight" else ("tensor",)
        for b in self.bit_widths:
            qmin, qmax = qrange(b, self.signed)
            for gran in grans:
                per_channel = gran == "channel"
                log_step = (self.log_step_channel if per_channel else self.log_step_tensor)[str(b)]
                zero = (self.zero_channel if per_channel else self.zero_tensor)[str(b)]
                s, _ = clipping_search(x, b, signed=self.signed, symmetric=True, per_channel=per_channel)
                s_a, o_a = clipping_search(x, b, signed=self.signed, symmetric=False, per_channel=per_channel)
                centre = o_a + s_a * (qmin + qmax) / 2  # mid-point of the asymmetric range
                log_step.copy_(s.log().reshape(log_step.shape))
                zero.copy_((centre / s - (qmin + qmax) / 2).reshape(zero.shape))
        self.initialized.fill_(True)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            self.calibrate(x)
            return x
        bits = self.bits
        if bits is None:
            return x
        if not self.initialized:
            self.calibrate(x)
        step, zero = self._step_and_zero(bits, self.granularity)
        # N of LSQ's g: one channel's kernel, the whole weight, or one sample's activations.
        numel = x[0].numel() if (self.granularity == "channel" or self.role == "act") else x.numel()
        g = lsq_grad_scale(numel, bits, self.signed)
        step = scale_grad(step, g)
        offset = None if self.symmetric else step * scale_grad(zero, g)  # β = s·z
        return _quantize(x, step, offset, bits, self.signed)

    def extra_repr(self) -> str:
        return f"{self.role}, bits={self.bit_widths}, signed={self.signed}, tensor_step={self.tensor_step}"


def _elastic_layer(module: nn.Module, bit_widths: Sequence[int], act_signed: bool) -> nn.Module:
    """Wrap a float ``Conv2d``/``Linear`` (weights shared) with elastic weight and input quantizers."""
    w = module.weight  # [C_out, C_in, k, k] or [C_out, C_in]
    wq = ElasticQuantizer("weight", bit_widths, channels=w.shape[0], weight_dim=w.dim())
    aq = ElasticQuantizer("act", bit_widths, signed=act_signed)
    cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
    return cls.from_float(module, wq, aq)


def build_supernet(
    model: nn.Module,
    *,
    calib_batch: Tensor | None = None,
    bit_widths: Sequence[int] = BIT_CHOICES,
    fixed_bits: int = 8,
) -> nn.Module:
    """Turn a float model of :mod:`reprolib.models` into an EQ-Net supernet, in place.

    Every ``Conv2d``/``Linear`` becomes a quantized layer with :class:`ElasticQuantizer` s. The
    first and the last layer are fixed at ``fixed_bits`` (8, as in the paper) but follow the
    configuration's granularity and symmetry; the first layer's input (the image) is quantized
    with the signed range, every other input follows a ReLU and uses the unsigned range.

    Args:
        calib_batch: inputs ``[N, C, H, W]``; when given, the model is run on it once in float
            and every quantizer is initialised by the ``L_2.4`` clipping search on the tensor it
            sees (BatchNorm statistics are left untouched). Without it, each quantizer
            initialises itself on the first batch it quantizes.
        bit_widths: the elastic bit-widths of the other layers.

    Returns:
        ``model`` itself.
    """
    check_int("fixed_bits", fixed_bits, low=2, high=16)
    check_ints("bit_widths", bit_widths, low=2, high=16)
    if calib_batch is not None:
        check_floating("calib_batch", calib_batch)
    layers = [n for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, QuantLayer)]
    if len(layers) < 3:
        raise ValueError(f"a supernet needs at least 3 conv/linear layers (first, elastic, last), got {layers}")
    fixed = {layers[0], layers[-1]}

    def factory(name: str, module: nn.Module) -> nn.Module:
        bits = (fixed_bits,) if name in fixed else bit_widths
        return _elastic_layer(module, bits, act_signed=name == layers[0])

    quantize_model(model, factory, keep_first=False, keep_last=False)
    if calib_batch is not None:
        calibrate_supernet(model, calib_batch)
    return model


@torch.no_grad()
def calibrate_supernet(model: nn.Module, calib_batch: Tensor) -> None:
    """Initialise every elastic quantizer of ``model`` on one float forward pass of ``calib_batch``.

    Runs in train mode (activations normalised by the batch's own statistics, as in training);
    BatchNorm running statistics and the train/eval mode are restored afterwards.
    """
    check_floating("calib_batch", calib_batch)
    quantizers = elastic_quantizers(model)
    bn_state = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    was_training = model.training
    device = next(model.parameters()).device
    for q in quantizers:
        q.calibrating = True
    try:
        model.train()
        model(calib_batch.to(device))
    finally:
        for q in quantizers:
            q.calibrating = False
        model.load_state_dict(bn_state, strict=False)
        model.train(was_training)


def elastic_quantizers(model: nn.Module) -> list[ElasticQuantizer]:
    """All :class:`ElasticQuantizer` modules of ``model``, in registration order."""
    return [m for m in model.modules() if isinstance(m, ElasticQuantizer)]


def num_elastic_layers(model: nn.Module) -> int:
    """Number of quantized layers whose bit-width is elastic (all but the fixed first and last).

    Raises:
        ValueError: ``model`` is not a supernet built by :func:`build_supernet`.
    """
    layers = quantized_layers(model)
    if len(layers) < 3 or not all(isinstance(m.weight_quantizer, ElasticQuantizer) for _, m in layers):
        raise ValueError("the model is not an EQ-Net supernet; convert it with build_supernet(model) first")
    return len(layers) - 2


def set_tensor_step(model: nn.Module, mode: str) -> None:
    """How every weight quantizer gets its per-tensor step: ``"learned"``, or derived from the
    per-channel steps by ``"min"``, ``"mean"`` or ``"max"`` (EQ-Net Table 4)."""
    if mode not in TENSOR_STEP_MODES:
        raise ValueError(f"mode must be one of {TENSOR_STEP_MODES}, got {mode!r}")
    for q in elastic_quantizers(model):
        if q.role == "weight":
            q.tensor_step = mode
