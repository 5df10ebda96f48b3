"""Figures of the EQ-Net search notebook (04)."""

__all__: list[str] = []
