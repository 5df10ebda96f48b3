"""Widgets of the Any-Precision notebook (05)."""
