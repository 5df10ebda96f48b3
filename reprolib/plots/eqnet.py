"""Figures of the eqnet notebooks."""

__all__: list[str] = []
