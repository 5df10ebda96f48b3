"""EQ-Net: Elastic Quantization Neural Networks (Xu et al., ICCV 2023).

One weight-shared supernet whose bit-width, granularity and symmetry switch at runtime.

* :mod:`.quantizer` — the elastic quantizer (a step, and an offset, per bit-width and form).
* :mod:`.space` — subnet configurations and their samplers (highest, lowest, random).
* :mod:`.losses` — Weight Distribution Regularization and Group Progressive Guidance.
* :mod:`.training` — the supernet's training step.
* :mod:`.accounting` — average bits and BitOPs of a configuration.
* :mod:`.predictor` — the Conditional QAP accuracy predictor.
* :mod:`.search` — the genetic mixed-precision search.

Everything is re-exported here: ``from reprolib import eqnet; eqnet.wdr_loss(...)``.
"""
from .accounting import *
from .losses import *
from .predictor import *
from .quantizer import *
from .search import *
from .space import *
from .training import *
