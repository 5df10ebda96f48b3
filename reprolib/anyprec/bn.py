"""Switchable BatchNorm (Any-Precision Sec. 3.3.4) and BN calibration for unseen bit-widths (Sec. 4.3).

The distribution of a quantized conv's output changes with the bit-width (most at 1–2 bits), so
one set of BN statistics cannot serve every precision. :class:`SwitchableBatchNorm2d` keeps one
``BatchNorm2d`` per bit-width and uses the one of the model's current precision; the copies cost
``4·C`` numbers per layer and bit-width, negligible next to the weights.

For a bit-width never trained (3, 5, 6, 7 when training on {1, 2, 4, 8, 32}) the paper makes new
copies and re-estimates their statistics from training batches (:func:`calibrate_bn`; the authors'
code has no such step). The same two functions give the post-training baselines on a dedicated
8-bit model: copies of its 8-bit BN used as they are (plain truncation, :func:`add_bn_copies`) or
re-estimated (truncation + calibration, :func:`calibrate_bn`).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..nn import Precision, PrecisionAware, set_precision, using_precision
from ..train import recalibrate_bn
from ..validate import check_int, got
from .codes import FLOAT_BITS

__all__ = ["SwitchableBatchNorm2d", "switchable_bn", "add_bn_copies", "calibrate_bn", "bn_inputs"]


def _bn_key(bits: int | None) -> str:
    """The copy a bit-width uses: ``"32"`` for float (``None`` or 32), else ``str(bits)``."""
    if bits is None or bits >= FLOAT_BITS:
        return str(FLOAT_BITS)
    return str(bits)


def _check_bit_widths(bit_widths: Iterable[int | None]) -> tuple[int, ...]:
    out = []
    for b in bit_widths:
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= FLOAT_BITS):
            raise ValueError(f"bit-widths must be ints in 1..{FLOAT_BITS} or None (float), {got(b)}")
        out.append(FLOAT_BITS if b is None else b)
    if not out:
        raise ValueError("bit_widths must name at least one bit-width")
    return tuple(sorted(set(out)))


class SwitchableBatchNorm2d(PrecisionAware):
    """One ``BatchNorm2d`` per bit-width; the model's precision (``w_bits``) selects it.

    Args:
        num_features: channels ``C`` of the input ``[N, C, H, W]``.
        bit_widths: the bit-widths with a copy; 32 (or ``None``) is the float model's copy.
        eps, momentum: as ``nn.BatchNorm2d``.

    ``.bits`` is the selected bit-width (32 for float); only :func:`reprolib.nn.set_precision`
    changes it. Selecting a bit-width without a copy is a ``ValueError`` that says how to add one.
    """

    precision_leaf = True   # the copies are plain BatchNorm2d: set_precision need not visit them

    def __init__(self, num_features: int, bit_widths: Sequence[int | None], *, eps: float = 1e-5,
                 momentum: float | None = 0.1) -> None:
        super().__init__()
        widths = _check_bit_widths(bit_widths)
        self.num_features = check_int("num_features", num_features, low=1)
        self.bn = nn.ModuleDict(
            {str(b): nn.BatchNorm2d(num_features, eps=eps, momentum=momentum) for b in widths}
        )
        self.trained_bits = widths   # the copies made at construction; later ones are added
        self.bits = max(widths)
        self.precision = Precision.uniform(self.bits)

    @property
    def bit_widths(self) -> tuple[int, ...]:
        return tuple(sorted(int(k) for k in self.bn))

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d, bit_widths: Sequence[int | None]) -> SwitchableBatchNorm2d:
        """Copies of ``bn`` (parameters and statistics) for each bit-width."""
        sbn = cls(bn.num_features, bit_widths, eps=bn.eps, momentum=bn.momentum)
        for copy_ in sbn.bn.values():
            copy_.load_state_dict(bn.state_dict())
        return sbn.to(bn.weight.device)

    def add_copy(self, bits: int, *, copy_from: int | None = None) -> nn.BatchNorm2d:
        """Add (or replace) the copy of ``bits``, cloned from the copy of ``copy_from``.

        ``copy_from`` defaults to the nearest trained bit-width (one given at construction) above
        ``bits``, else the highest trained one. Returns the new ``BatchNorm2d``.
        """
        (bits,) = _check_bit_widths([bits])
        if copy_from is None:
            above = [b for b in self.trained_bits if b > bits]
            copy_from = min(above) if above else max(self.trained_bits)
        source = _bn_key(copy_from)
        if source not in self.bn:
            raise ValueError(f"copy_from={copy_from} has no BN copy; this layer has {self.bit_widths}")
        self.bn[_bn_key(bits)] = copy.deepcopy(self.bn[source])
        return self.bn[_bn_key(bits)]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Loading a state dict first adds the copies it holds that this layer lacks (those that
        :meth:`add_copy` made after construction, e.g. by BN calibration), so a freshly built
        model loads a checkpoint of a calibrated one; copies it lacks remain missing keys."""
        template = next(iter(self.bn.values()))
        for key in state_dict:
            if key.startswith(prefix + "bn."):
                bits = key[len(prefix) + 3:].split(".", 1)[0]
                if bits.isdigit() and bits not in self.bn and 1 <= int(bits) <= FLOAT_BITS:
                    self.bn[bits] = copy.deepcopy(template)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def apply_precision(self, precision: Precision) -> None:
        key = _bn_key(precision.w_bits)
        if key not in self.bn:
            raise ValueError(
                f"no BatchNorm copy for {key} bits (this layer has {self.bit_widths}); add one with "
                "reprolib.anyprec.calibrate_bn (re-estimated) or add_bn_copies (copied)"
            )
        self.bits = int(key)
        self.precision = precision

    def current(self) -> nn.BatchNorm2d:
        """The ``BatchNorm2d`` of the selected bit-width."""
        return self.bn[_bn_key(self.bits)]

    def forward(self, x: Tensor) -> Tensor:
        return self.current()(x)   # [N, C, H, W] -> [N, C, H, W]

    def extra_repr(self) -> str:
        return f"{self.num_features}, bit_widths={self.bit_widths}, bits={self.bits}"


def switchable_bn(model: nn.Module, bit_widths: Sequence[int | None]) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``model`` by a :class:`SwitchableBatchNorm2d`, in place.

    Each copy starts from the replaced BN's parameters and statistics. Returns ``model``.
    """
    widths = _check_bit_widths(bit_widths)
    targets = [(n, m) for n, m in model.named_modules() if type(m) is nn.BatchNorm2d]
    if not targets:
        raise ValueError("the model has no BatchNorm2d to make switchable")
    for name, bn in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SwitchableBatchNorm2d.from_bn(bn, widths))
    return model


def _switchable(model: nn.Module) -> list[SwitchableBatchNorm2d]:
    found = [m for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)]
    if not found:
        raise ValueError("the model has no SwitchableBatchNorm2d; convert it with switchable_bn first")
    return found


def add_bn_copies(model: nn.Module, bits: Iterable[int], *, copy_from: int | None = None) -> list[nn.BatchNorm2d]:
    """Give every switchable BN of ``model`` a copy for each of ``bits``, cloned from ``copy_from``.

    With ``copy_from=8`` on a dedicated 8-bit model this is plain truncation's BN: the 8-bit
    statistics reused at every lower bit-width. Returns the new ``BatchNorm2d`` modules.
    """
    return [sbn.add_copy(b, copy_from=copy_from) for b in bits for sbn in _switchable(model)]


def calibrate_bn(
    model: nn.Module,
    bits: Iterable[int],
    loader: DataLoader,
    *,
    num_batches: int = 10,
    copy_from: int | None = None,
    device: str = "auto",
) -> None:
    """BN calibration for bit-widths (Sec. 4.3): new BN copies with re-estimated statistics.

    For each ``b`` in ``bits``: add (or replace) a copy in every switchable BN, cloned from
    ``copy_from`` (by default the nearest trained bit-width above: its affine parameters),
    switch the model to ``b`` bits and re-estimate
    those copies' running mean and variance from ``num_batches`` batches of ``loader`` with
    :func:`reprolib.train.recalibrate_bn`. Other copies and every weight stay untouched; the
    model's precision is restored afterwards.
    """
    bits = list(bits)
    _check_bit_widths(bits)  # all of them, before the first copy is made
    check_int("num_batches", num_batches, low=1)
    saved = [(m, m.precision) for m in model.modules() if isinstance(m, PrecisionAware)]
    try:
        for b in bits:
            new = add_bn_copies(model, [b], copy_from=copy_from)
            set_precision(model, b)
            recalibrate_bn(model, loader, num_batches, device, modules=new)
    finally:
        for m, p in saved:
            m.apply_precision(p)


@torch.no_grad()
def bn_inputs(model: nn.Module, x: Tensor, layer: str, bits: Iterable[int]) -> dict[int, Tensor]:
    """The input of the switchable BN named ``layer`` (the pre-BN activations) at each bit-width.

    Forwards the batch ``x`` ``[N, C, H, W]`` in eval mode once per bit-width; returns
    ``{bits: tensor [N, C, H', W']}`` on the CPU. The model's precision and mode are restored.
    """
    target = model.get_submodule(layer)
    if not isinstance(target, SwitchableBatchNorm2d):
        raise ValueError(f"{layer!r} is a {type(target).__name__}, not a SwitchableBatchNorm2d")
    seen: list[Tensor] = []
    handle = target.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach().cpu()))
    was_training = model.training
    model.eval()
    out = {}
    try:
        for b in bits:
            with using_precision(model, b):
                model(x)
            out[b] = seen.pop()
    finally:
        handle.remove()
        model.train(was_training)
    return out
