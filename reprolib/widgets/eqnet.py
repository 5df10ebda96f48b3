"""Widgets of the EQ-Net search notebook (04): pick a subnet, see its measured accuracy and cost.

:func:`subnet_summary` is the deterministic core (one configuration → accuracy, average bits,
BitOPs); :func:`subnet_picker` wraps it in sliders and drop-downs for a live kernel.
"""
from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from ..eqnet.accounting import CostModel
from ..eqnet.quantizer import BIT_CHOICES
from ..eqnet.space import SubnetConfig, evaluate_config

__all__ = ["subnet_summary", "subnet_picker"]


def subnet_summary(model: nn.Module, costs: CostModel, cfg: SubnetConfig, *, calib_loader: DataLoader,
                   eval_loader: DataLoader, calib_batches: int = 10, device: str = "auto") -> dict[str, Any]:
    """Measured accuracy (%, after BN re-calibration) and the cost of subnet ``cfg``.

    Returns:
        ``{"accuracy", "avg_w_bits", "avg_a_bits", "bitops", "w_bits", "a_bits", "form"}``.
    """
    acc = evaluate_config(model, cfg, calib_loader, eval_loader, calib_batches=calib_batches, device=device)
    return {"accuracy": acc, **costs.of(cfg), "w_bits": cfg.w_bits, "a_bits": cfg.a_bits,
            "form": f"{cfg.granularity}, w {'sym' if cfg.w_symmetric else 'asym'}, "
                    f"a {'sym' if cfg.a_symmetric else 'asym'}"}


def _format(summary: dict[str, Any]) -> str:
    return (f"<b>accuracy {summary['accuracy']:.1f} %</b> &nbsp; | &nbsp; avg weight bits "
            f"{summary['avg_w_bits']:.2f}, avg activation bits {summary['avg_a_bits']:.2f}, "
            f"BitOPs {summary['bitops']:.3g} &nbsp; ({summary['form']})")


def subnet_picker(model: nn.Module, costs: CostModel, *, calib_loader: DataLoader, eval_loader: DataLoader,
                  calib_batches: int = 10, device: str = "auto"):
    """Sliders for every elastic layer's weight and activation bits (plus two that set all layers at
    once), a granularity drop-down and two symmetry check-boxes; each change re-measures the
    subnet with :func:`subnet_summary` and shows its accuracy, average bits and BitOPs.

    Returns:
        an ``ipywidgets.VBox`` (display it as a cell's last expression).
    """
    import ipywidgets as W

    n = costs.num_elastic
    slider = dict(min=min(BIT_CHOICES), max=max(BIT_CHOICES), continuous_update=False)
    w_all = W.IntSlider(value=4, description="all W bits", **slider)
    a_all = W.IntSlider(value=4, description="all A bits", **slider)
    w_layer = [W.IntSlider(value=4, description=f"W {c.name}", **slider) for c in costs.elastic]
    a_layer = [W.IntSlider(value=4, description=f"A {c.name}", **slider) for c in costs.elastic]
    granularity = W.Dropdown(options=["channel", "tensor"], value="channel", description="granularity")
    w_sym = W.Checkbox(value=True, description="symmetric weights")
    a_sym = W.Checkbox(value=True, description="symmetric activations")
    out = W.HTML()
    busy = {"bulk": False}

    def refresh(_=None) -> None:
        if busy["bulk"]:
            return
        cfg = SubnetConfig(tuple(s.value for s in w_layer), tuple(s.value for s in a_layer),
                           granularity.value, w_sym.value, a_sym.value)
        out.value = "measuring ..."
        out.value = _format(subnet_summary(model, costs, cfg, calib_loader=calib_loader, eval_loader=eval_loader,
                                           calib_batches=calib_batches, device=device))

    def set_all(sliders):
        def handler(change) -> None:
            busy["bulk"] = True
            for s in sliders:
                s.value = change["new"]
            busy["bulk"] = False
            refresh()
        return handler

    w_all.observe(set_all(w_layer), names="value")
    a_all.observe(set_all(a_layer), names="value")
    for widget in (*w_layer, *a_layer, granularity, w_sym, a_sym):
        widget.observe(refresh, names="value")
    layers = W.Accordion(children=[W.GridBox(w_layer + a_layer, layout=W.Layout(
        grid_template_columns="repeat(2, 1fr)", grid_auto_flow="column", grid_template_rows=f"repeat({n}, auto)"))])
    layers.set_title(0, f"per-layer bits ({n} elastic layers)")
    refresh()
    return W.VBox([W.HBox([w_all, a_all]), W.HBox([granularity, w_sym, a_sym]), layers, out])
