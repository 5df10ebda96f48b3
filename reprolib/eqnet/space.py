"""EQ-Net: space (placeholder until written)."""

__all__: list[str] = []
