"""Widgets of the Any-Precision notebook (05): the runtime bit-width slider."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["bit_width_slider"]


def bit_width_slider(
    frozen: nn.Module, loader: DataLoader, examples: torch.Tensor, labels: Sequence[int], *,
    layer: str, bits: int = 8, device: str | torch.device = "auto",
):
    """An ipywidgets slider (1..8 bits) that switches the frozen model in place and redraws.

    Each move calls :func:`reprolib.anyprec.runtime_view` (``set_precision`` by truncation of the
    stored codes: no float weight, no data beyond the evaluation) and draws
    :func:`reprolib.plots.runtime_panel`: test accuracy, example predictions, the layer's codes.
    A text line under the slider (CSS class ``reprolib-runtime-accuracy``) states the bit-width and
    the test accuracy, so they can be read without the figure. Returns the widget box to display.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    from ..anyprec import runtime_view
    from ..plots import runtime_panel

    slider = widgets.IntSlider(value=bits, min=1, max=8, step=1, description="bits",
                               continuous_update=False)
    label = widgets.HTML()
    label.add_class("reprolib-runtime-accuracy")
    out = widgets.Output()
    images = np.asarray(examples[:, 0].cpu())

    def redraw(change=None) -> None:
        view = runtime_view(frozen, slider.value, loader, examples, layer, device)
        label.value = f"<b>{view.bits}-bit</b> runtime: test accuracy <b>{view.accuracy:.1f} %</b>"
        with out:
            out.clear_output(wait=True)
            fig = runtime_panel(view, images, labels, layer=layer)
            display(fig)
            plt.close(fig)

    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([slider, label, out])
