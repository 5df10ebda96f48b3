"""EQ-Net: search (placeholder until written)."""

__all__: list[str] = []
