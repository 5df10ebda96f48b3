"""EQ-Net: quantizer (placeholder until written)."""

__all__: list[str] = []
