"""Figures of notebook 00: staircases, quantization error, STE and LSQ gradients."""

__all__: list[str] = []
