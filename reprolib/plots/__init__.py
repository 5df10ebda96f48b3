"""The figures the notebooks show: one function each, returning the matplotlib ``Figure``.

One submodule per topic (``basics``, ``eqnet``, ``anyprec``, ``qts``); everything is re-exported
here, so notebooks write ``from reprolib import plots; plots.staircase(...)``.
"""
from .anyprec import *
from .basics import *
from .eqnet import *
from .eqnet_search import *
from .qts import *
