"""The glue every notebook shares: parameter checks, plotting style, claims, quick mode.

The first code cell of a notebook is its papermill ``parameters`` cell; the next one calls
:func:`setup`::

    nb = setup("01_eqnet_elastic_space", dataset=dataset, quick=quick, seed=seed,
               device=device, results_dir=results_dir)
    epochs = nb.pick(full=epochs, quick=2)

:func:`setup` validates the parameters (a clear ``ValueError`` for a typo), filters warnings, sets
the figure style, seeds everything and returns a :class:`Notebook` with the resolved device and a
:class:`reprolib.claims.ClaimLog` that records the notebook's claims.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from .claims import ClaimLog
from .data import DATASETS
from .train import resolve_device, seed_everything

__all__ = ["Notebook", "setup", "quick_from_env"]

T = TypeVar("T")


def quick_from_env() -> bool:
    """``True`` when the environment variable ``REPROLIB_QUICK`` is set to 1/true/yes.

    The parameters cell uses it as the default of ``quick`` so that nbval, which cannot inject
    papermill parameters, runs notebooks in quick mode too.
    """
    return os.environ.get("REPROLIB_QUICK", "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Notebook:
    """What :func:`setup` resolved: the notebook's name, mode, device and claim log."""

    name: str
    dataset: str
    quick: bool
    seed: int
    device: torch.device
    results_dir: Path
    claims: ClaimLog

    def pick(self, *, full: T, quick: T) -> T:
        """``quick`` in quick mode, ``full`` otherwise (epochs, seeds, sample counts...)."""
        return quick if self.quick else full


def setup(
    name: str,
    *,
    dataset: str = "digits",
    quick: bool = False,
    seed: int = 0,
    device: str = "auto",
    results_dir: str | Path = "../results",
    **positive_ints: int,
) -> Notebook:
    """Validate a notebook's parameters and prepare the session.

    Args:
        name: the notebook's file name without ``.ipynb`` (the claims' ``source``).
        positive_ints: further parameters that must be positive integers (``epochs=30``...),
            checked so that a typo in papermill's ``-p`` fails here, with the parameter's name.
    """
    if dataset not in DATASETS:
        raise ValueError(f"parameter dataset={dataset!r} is unknown; choose one of {sorted(DATASETS)}")
    if not isinstance(quick, bool):
        raise TypeError(f"parameter quick must be True or False, got {quick!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"parameter seed must be a non-negative int, got {seed!r}")
    for key, value in positive_ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"parameter {key} must be a positive int, got {value!r}")
    dev = resolve_device(device)

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid")
    mpl.rcParams.update({"figure.dpi": 90, "savefig.bbox": "tight", "axes.titleweight": "bold"})
    seed_everything(seed)
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    return Notebook(name, dataset, quick, seed, dev, results, ClaimLog(results, source=name, quick=quick))
