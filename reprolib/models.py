"""The float networks the papers quantize, sized for 8×8 digits or 32×32 CIFAR images.

* :class:`ResNet20` — He et al. 2016, CIFAR variant: a 3×3 stem, three stages of three basic
  blocks with 16/32/64 channels (× ``width``), strides 1/2/2, a 1×1 conv + BN shortcut where
  the shape changes, global average pooling and a linear classifier. Used by all three papers.
* :class:`VGGSmall` — the VGG-small of LQ-Net / QTS: 2×128, pool, 2×256, pool, 2×512, pool, linear
  (channels × ``width``).
* :class:`SmallCNN` — four convs and a linear layer, for fast experiments on ``digits``.

Every model takes ``in_channels``, ``num_classes`` and ``image_size`` so the same code serves
1×8×8 digits and 3×32×32 CIFAR; convs are bias-free and followed by ``BatchNorm2d``, so the
quantized layers' scale is absorbed by BN (and QTS's value sets need no scale at all).
"""
from __future__ import annotations

from torch import Tensor, nn

from .validate import check_int, check_real

__all__ = ["SmallCNN", "ResNet20", "VGGSmall", "MODELS", "build_model"]


def _check_shape(in_channels: int, num_classes: int, image_size: int, width: float, min_size: int = 1) -> None:
    """The arguments every model takes: positive ints (``image_size >= min_size``), a positive width."""
    check_int("in_channels", in_channels, low=1)
    check_int("num_classes", num_classes, low=1)
    check_int("image_size", image_size, low=min_size)
    check_real("width", width, low=0, low_open=True)


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """conv(w) → conv(2w) → pool → conv(2w) → conv(4w) → global pool → linear. Input ``[N, C, H, W]``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8, width: float = 1.0):
        super().__init__()
        _check_shape(in_channels, num_classes, image_size, width, min_size=2)  # one 2×2 max-pool
        w = max(1, round(32 * width))
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w),
            *_conv_bn(w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn(2 * w, 2 * w),
            *_conv_bn(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; the shortcut is 1×1 conv + BN when needed."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for CIFAR (He et al. 2016, Sec. 4.2): 19 convs + 1 linear (plus 2 shortcut convs)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: float = 1.0):
        super().__init__()
        _check_shape(in_channels, num_classes, image_size, width)
        c = [max(1, round(16 * width * m)) for m in (1, 2, 4)]
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c[0])
        self.relu = nn.ReLU(inplace=True)
        blocks: list[nn.Module] = []
        c_in = c[0]
        for stage, c_out in enumerate(c):
            for i in range(3):
                blocks.append(BasicBlock(c_in, c_out, 2 if (stage > 0 and i == 0) else 1))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(self.relu(self.bn1(self.conv1(x))))))


class VGGSmall(nn.Module):
    """VGG-small (Zhang et al. 2018, LQ-Net): [2×128, M, 2×256, M, 2×512, M] convs, then a linear layer."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: float = 1.0):
        super().__init__()
        _check_shape(in_channels, num_classes, image_size, width, min_size=8)
        if image_size % 8:
            raise ValueError(f"VGGSmall pools three times; image_size must be a multiple of 8, got {image_size}")
        c = [max(1, round(m * width)) for m in (128, 256, 512)]
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in c:
            layers += _conv_bn(c_in, c_out) + _conv_bn(c_out, c_out) + [nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Linear(c_in * (image_size // 8) ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


MODELS: dict[str, type[nn.Module]] = {"small_cnn": SmallCNN, "resnet20": ResNet20, "vgg_small": VGGSmall}


def build_model(
    name: str, *, in_channels: int, num_classes: int, image_size: int, width: float = 1.0
) -> nn.Module:
    """Build a float model by name (one of :data:`MODELS`) for the given input shape.

    Pair it with a dataset's :class:`reprolib.data.DatasetInfo`:
    ``build_model("resnet20", **info.model_kwargs())``.

    Raises:
        ValueError: an unknown ``name`` (the message lists :data:`MODELS`), or a size out of range.
        TypeError: a size that is not an int, or a ``width`` that is not a number.
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, image_size=image_size, width=width)
