"""The figures the notebooks show: one function each, returning the matplotlib ``Figure``.

One submodule per topic (``basics``, ``eqnet``, ``anyprec``, ``qts``); everything is re-exported
here, so notebooks write ``from reprolib import plots; plots.staircase(...)``.
"""
from .basics import *  # noqa: F401,F403
from .eqnet import *  # noqa: F401,F403
from .eqnet_search import *  # noqa: F401,F403
from .anyprec import *  # noqa: F401,F403
from .qts import *  # noqa: F401,F403
