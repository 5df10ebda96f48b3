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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from .claims import ClaimLog
from .data import DATASETS
from .train import resolve_device, seed_everything
from .validate import check_int, check_real, got

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
    bounds: Mapping[str, tuple[float, float]] | None = None,
    **params: int | float,
) -> Notebook:
    """Validate a notebook's parameters and prepare the session.

    Args:
        name: the notebook's file name without ``.ipynb`` (the claims' ``source``).
        bounds: optional inclusive limits ``{parameter: (low, high)}`` for ``seed`` or any of
            ``params``. Int limits ask for an int in ``low..high`` (``{"epochs": (1, 500)}``),
            float limits for a number in ``[low, high]`` (``{"width": (0.05, 4.0)}``, which lets
            that parameter be a float).
        params: further parameters (``epochs=30``...): positive ints unless ``bounds`` says
            otherwise, checked so that a typo in papermill's ``-p`` fails here, with the
            parameter's name, its value and what is allowed.

    Raises:
        ValueError, TypeError: a parameter out of range or of the wrong type.
    """
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise ValueError(f"parameter dataset={dataset!r} is unknown; choose one of {sorted(DATASETS)}")
    if not isinstance(quick, bool):
        raise TypeError(f"parameter quick must be True or False, {got(quick)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"parameter seed must be a non-negative int, {got(seed)}")
    if not isinstance(results_dir, (str, Path)):
        raise TypeError(f"parameter results_dir must be a folder path (str), {got(results_dir)}")
    limits = dict(bounds or {})
    unknown = sorted(set(limits) - set(params) - {"seed"})
    if unknown:
        raise ValueError(f"bounds name parameters that were not passed to setup: {unknown}")
    for key, value in {"seed": seed, **params}.items():
        if key in limits:
            low, high = limits[key]
            if isinstance(low, int) and isinstance(high, int):
                check_int(f"parameter {key}", value, low=low, high=high)
            else:
                check_real(f"parameter {key}", value, low=low, high=high)
        elif key != "seed" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"parameter {key} must be a positive int, {got(value)}")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"parameter device must be a str such as 'auto', 'cpu' or 'cuda', {got(device)}")
    try:
        dev = resolve_device(device)
    except ValueError as err:  # a typo, or CUDA asked for on a machine without it
        raise ValueError(f"parameter device={device!r} is not a device here ({err}); use 'auto', 'cpu' "
                         "or 'cuda'") from err

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
