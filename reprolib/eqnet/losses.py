"""EQ-Net: losses (placeholder until written)."""

__all__: list[str] = []
