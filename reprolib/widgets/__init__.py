"""ipywidgets controls for the notebooks (runtime bit-width slider, elastic-space pickers).

One submodule per paper; widgets need a live kernel, so notebooks mark their cells for nbval to
skip and show the same result in a deterministic cell beside them.
"""
