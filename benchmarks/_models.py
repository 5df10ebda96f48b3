"""The model and batch the training benchmarks share: ResNet-20 on 3×32×32 inputs, 10 classes."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from reprolib.models import build_model


def resnet20(tiny: bool) -> nn.Module:
    """ResNet-20 (a quarter-width one for the smoke test), seeded so every copy is alike."""
    torch.manual_seed(0)
    size = 8 if tiny else 32
    return build_model("resnet20", in_channels=3, num_classes=10, image_size=size, width=0.25 if tiny else 1.0)


def batch(tiny: bool, size: int = 128) -> tuple[Tensor, Tensor]:
    """A random batch ``[N, 3, 32, 32]`` with labels (the timing does not depend on the values)."""
    gen = torch.Generator().manual_seed(1)
    n, side = (4, 8) if tiny else (size, 32)
    return torch.randn(n, 3, side, side, generator=gen), torch.randint(0, 10, (n,), generator=gen)
