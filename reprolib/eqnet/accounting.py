"""EQ-Net: accounting (placeholder until written)."""

__all__: list[str] = []
