"""EQ-Net: training (placeholder until written)."""

__all__: list[str] = []
