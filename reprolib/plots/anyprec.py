"""Figures of the anyprec notebooks."""

__all__: list[str] = []
