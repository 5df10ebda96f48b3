"""Widgets of the EQ-Net search notebook (04)."""
