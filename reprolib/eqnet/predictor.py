"""EQ-Net: predictor (placeholder until written)."""

__all__: list[str] = []
