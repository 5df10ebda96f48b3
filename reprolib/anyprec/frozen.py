"""Frozen any-precision models: 8-bit integer codes, truncated at runtime (Sec. 3.2).

:func:`freeze` turns a trained model into what a device would store: each quantized layer keeps
``uint8`` codes ``c_8`` and its scale ``E`` (its float weight is dropped), plus every BN copy and
the float first and last layers. Switching the runtime bit-width is then
:func:`reprolib.nn.set_precision` alone: the layer computes ``W_q = dequantize(c_8 >> (8 − k))``
(or, with the authors' semantics, ``dequantize(round(c_8·(2^k − 1)/255))``) from the stored codes,
with no float weight and no data.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..nn import Precision, Quantizer, quantized_layers, set_precision
from ..train import evaluate, resolve_device
from .codes import (
    DoReFaWeightQuantizer,
    Semantics,
    _check_code_bits,
    _check_codes,
    _check_semantics,
    _convert,
    _dequantize,
    effective_bits,
    weight_codes,
)

__all__ = ["CodeWeightQuantizer", "freeze", "storage_bytes", "RuntimeView", "runtime_view"]


class CodeWeightQuantizer(Quantizer):
    """A weight quantizer that holds stored codes instead of reading a float weight.

    Args:
        codes: ``uint8`` codes of ``stored_bits`` bits, the weight's shape.
        E: the layer's scale ``mean|W|`` (a scalar tensor).
        stored_bits: bits of ``codes`` (8).
        semantics: ``"truncate"`` (drop low bits) or ``"requantize"`` (round the codes' values at
            ``k`` bits), see :func:`convert_codes`.

    Precision: ``w_bits`` 1..``stored_bits``. Float (``None``/32) is an error: its float weight
    is gone. ``forward`` ignores its argument (the layer's weight is ``None``).
    """

    def __init__(self, codes: Tensor, E: Tensor, *, stored_bits: int = 8, semantics: Semantics = "truncate") -> None:
        super().__init__("weight")
        if not isinstance(codes, Tensor) or codes.dtype != torch.uint8:
            raise TypeError(f"codes must be uint8, got {getattr(codes, 'dtype', type(codes).__name__)}")
        self.stored_bits = _check_code_bits("stored_bits", stored_bits)
        _check_codes(codes, stored_bits)  # once here: forward passes use the unchecked conversions
        self.semantics = _check_semantics(semantics)
        self.register_buffer("codes", codes.clone())
        self.register_buffer("E", torch.as_tensor(E, dtype=torch.float32).clone())
        self.bits = stored_bits
        self.precision = Precision.uniform(stored_bits)

    def apply_precision(self, precision: Precision) -> None:
        bits = effective_bits(self.bits_of(precision))
        if bits is None:
            raise ValueError(
                f"a frozen model stores {self.stored_bits}-bit codes and no float weight; "
                f"choose w_bits in 1..{self.stored_bits}, got {self.bits_of(precision)}"
            )
        _check_code_bits("w_bits", bits, self.stored_bits)
        self.bits = bits
        self.precision = precision

    def runtime_codes(self) -> Tensor:
        """The ``bits``-bit codes the layer computes with, from the stored ones."""
        return _convert(self.codes, self.stored_bits, self.bits, self.semantics)

    def forward(self, _weight: Tensor | None = None) -> Tensor:
        return _dequantize(self.runtime_codes(), self.bits, self.E)   # weight's shape

    def extra_repr(self) -> str:
        return f"codes={tuple(self.codes.shape)} uint8, stored_bits={self.stored_bits}, semantics={self.semantics!r}"


def freeze(model: nn.Module, *, stored_bits: int = 8, semantics: Semantics = "truncate") -> nn.Module:
    """A frozen copy of a trained any-precision model (``model`` is not changed).

    Each :class:`DoReFaWeightQuantizer` becomes a :class:`CodeWeightQuantizer` holding the
    ``stored_bits``-bit codes of the layer's weight (:func:`weight_codes`) and ``E``; the layer's
    float weight is removed (``layer.weight is None``). The copy starts at ``stored_bits`` bits.
    """
    frozen = copy.deepcopy(model)
    layers = [(n, m) for n, m in quantized_layers(frozen) if isinstance(m.weight_quantizer, DoReFaWeightQuantizer)]
    if not layers:
        raise ValueError("the model has no DoReFa-quantized layer to freeze")
    for _, layer in layers:
        codes, E = weight_codes(layer.weight.detach(), stored_bits)
        layer.weight_quantizer = CodeWeightQuantizer(codes, E, stored_bits=stored_bits, semantics=semantics)
        layer.weight = None
    set_precision(frozen, stored_bits)
    return frozen


def storage_bytes(model: nn.Module) -> int:
    """Bytes to store ``model``: codes at their stored bits (packed), everything else as it is.

    A :class:`CodeWeightQuantizer`'s codes count ``stored_bits/8`` bytes each (rounded up per
    tensor); other parameters and buffers (float first/last layers, ``E``, every BN copy) their
    element size. BatchNorm's ``num_batches_tracked`` counters are not counted.
    """
    total = 0
    for module in model.modules():
        for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if t is None or name == "num_batches_tracked":
                continue
            if isinstance(module, CodeWeightQuantizer) and name == "codes":
                total += -(-t.numel() * module.stored_bits // 8)
            else:
                total += t.numel() * t.element_size()
    return total


@dataclass(frozen=True)
class RuntimeView:
    """What a frozen model computes at one runtime bit-width (the slider's content).

    ``accuracy`` in % on the loader; ``predictions`` ``[n]`` for the example images; ``codes`` and
    ``weight`` of the shown layer at this bit-width (flattened, CPU).
    """

    bits: int
    accuracy: float
    predictions: Tensor
    codes: Tensor
    weight: Tensor


@torch.no_grad()
def runtime_view(
    model: nn.Module, bits: int, loader: DataLoader, examples: Tensor, layer: str,
    device: torch.device | str = "auto",
) -> RuntimeView:
    """Switch a frozen ``model`` to ``bits`` in place (``set_precision`` only) and measure it.

    ``examples`` ``[n, C, H, W]`` are classified; ``layer`` names the quantized layer whose codes
    and weight are returned. The model stays at ``bits`` afterwards (the slider moves it).
    """
    set_precision(model, bits)
    module = model.get_submodule(layer)
    if not isinstance(getattr(module, "weight_quantizer", None), CodeWeightQuantizer):
        raise ValueError(f"{layer!r} is not a frozen quantized layer")
    acc = evaluate(model, loader, device)["acc"]
    model.eval()
    preds = model(examples.to(resolve_device(device))).argmax(1).cpu()
    codes = module.weight_quantizer.runtime_codes().flatten().cpu()
    return RuntimeView(bits, acc, preds, codes, module.quantized_weight().flatten().cpu())
