"""reprolib: a notebook-first reproduction of three neural-network quantization papers.

EQ-Net (elastic quantization), Any-Precision DNNs (truncated 8-bit codes) and Quantization
Through Search (finite weight spaces), on one small library: :mod:`reprolib.quant` (fake
quantization), :mod:`reprolib.nn` (quantized layers, ``set_precision``), :mod:`reprolib.models`,
:mod:`reprolib.data`, :mod:`reprolib.train` (the one training loop) and :mod:`reprolib.claims`.
"""

__version__ = "0.1.0"
