"""What every benchmark shares: the result row, the machine description and the timing protocol.

Timings are interleaved and ratios paired within a repetition (:mod:`reprolib.cost`), so a
ratio stays meaningful on a shared machine where absolute times drift.
"""
from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from reprolib.cost import interleaved_times, paired_ratio

__all__ = ["Result", "machine", "compare", "ms"]


@dataclass(frozen=True)
class Result:
    """One row of the benchmark table.

    ``value`` is the measured figure in ``unit`` (a ratio ``×``, ``ms`` or ``s``); ``target`` the
    issue's bound as text; ``met`` whether ``value`` is within it (``None``: no target).
    """

    benchmark: str
    case: str
    value: float
    unit: str
    target: str
    met: bool | None
    detail: str = ""

    def row(self) -> dict[str, Any]:
        """The row as plain JSON types (pandas hands out numpy floats and booleans)."""
        return {**asdict(self), "value": float(self.value), "met": None if self.met is None else bool(self.met)}


def machine() -> dict[str, Any]:
    """The machine a table was measured on: CPU, cores, threads, torch, device."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def compare(fns: Mapping[str, Callable[[], Any]], baseline: str, *, repeats: int, warmup: int = 2,
            device: torch.device | str = "cpu") -> dict[str, tuple[float, float]]:
    """Interleaved timings of ``fns``: ``name → (median seconds, paired ratio to baseline)``."""
    times = interleaved_times(fns, repeats=repeats, warmup=warmup, device=device)
    return {n: (statistics.median(t), paired_ratio(times, n, baseline)) for n, t in times.items()}


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"
