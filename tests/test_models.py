import pytest
import torch
from torch import nn

from reprolib.models import MODELS, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(1, 8), (3, 32)])
def test_output_shape(name, shape):
    c, size = shape
    m = build_model(name, in_channels=c, num_classes=7, image_size=size, width=0.25)
    assert m(torch.randn(2, c, size, size)).shape == (2, 7)


def test_resnet20_has_20_weight_layers():
    m = build_model("resnet20", in_channels=3, num_classes=10, image_size=32)
    convs = [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d) and "shortcut" not in n]
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert len(convs) + len(linears) == 20
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(0.27e6, rel=0.05)


def test_unknown_model_and_bad_width():
    with pytest.raises(ValueError, match="resnet20"):
        build_model("resnet18", in_channels=3, num_classes=10, image_size=32)
    with pytest.raises(ValueError, match="width"):
        build_model("resnet20", in_channels=3, num_classes=10, image_size=32, width=0)
