"""Figures of the qts notebooks."""

__all__: list[str] = []
