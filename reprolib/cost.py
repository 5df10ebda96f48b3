"""Measuring cost side by side: interleaved timings, paired ratios, training-step time and memory.

Every comparison in this project (the QTS cost table, ``benchmarks/``) follows one protocol, so
that a ratio survives a busy machine:

* **interleaved**: every repetition runs every candidate once, in an order rotated from one
  repetition to the next, so a change in load hits all candidates alike;
* **paired**: a ratio is the median over repetitions of ``t_candidate / t_baseline`` *within* a
  repetition, not a ratio of two medians;
* **counted memory**: the bytes of the distinct tensors autograd saves for the backward pass plus
  parameters, gradients and optimizer state, which is deterministic, unlike sampling a process's
  peak resident size.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["now", "interleaved_times", "paired_ratio", "measure_training_cost"]


def now(device: torch.device | str | Tensor = "cpu") -> float:
    """``time.perf_counter()`` after the work queued on ``device`` (or a tensor's) has finished."""
    dev = device.device if isinstance(device, Tensor) else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


def _check_counts(repeats: int, warmup: int) -> None:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")


def interleaved_times(
    fns: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 20,
    warmup: int = 2,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Seconds of each call of each ``fns[name]()``, interleaved (rotated order per repetition).

    ``warmup`` untimed repetitions come first. Returns ``name → [seconds per repetition]``.
    """
    _check_counts(repeats, warmup)
    if not fns:
        raise ValueError("fns is empty: give at least one callable to time")
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = now(device)
            fns[n]()
            seconds = now(device) - t0
            if r >= warmup:
                times[n].append(seconds)
    return times


def paired_ratio(times: Mapping[str, list[float]], name: str, baseline: str) -> float:
    """Median over repetitions of ``times[name][r] / times[baseline][r]`` (paired within each)."""
    for key in (name, baseline):
        if key not in times:
            raise ValueError(f"{key!r} is not one of the timed names {list(times)}")
    return statistics.median(t / t0 for t, t0 in zip(times[name], times[baseline], strict=True))


def _storage_key(t: Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def _state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Bytes of the parameters, their gradients and the optimizer's state tensors."""
    tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for st in opt.state.values() for v in st.values() if isinstance(v, Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


StepLoss = Callable[[nn.Module, Tensor, Tensor], Tensor]


def measure_training_cost(
    models: Mapping[str, nn.Module],
    x: Tensor,
    y: Tensor,
    *,
    baseline: str = "float",
    repeats: int = 20,
    warmup: int = 2,
    lr: float = 1e-3,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    steps: Mapping[str, StepLoss] | None = None,
):
    """Time and memory of one training step of each model, relative to ``models[baseline]``.

    A step is ``zero_grad``, the loss, ``backward`` and one Adam step. The loss is
    ``loss_fn(model(x), y)``, or ``steps[name](model, x, y)`` for the names ``steps`` gives (a
    step function of :func:`reprolib.train.fit`, e.g. EQ-Net's three-subnet step). Steps are
    interleaved and their ratios paired (see the module docstring); the time is the median over
    ``repeats`` after ``warmup`` untimed rounds. Memory is counted: the distinct tensors saved
    for backward (parameters excluded), plus parameters, gradients and Adam's two moments: the
    memory alive at the start of the backward pass, the training peak up to allocator overhead
    and transient buffers. The models are trained in place: pass throw-away copies.

    Args:
        models: name → model (on ``x``'s device); must contain ``baseline``.
        x, y: one training batch ``[N, ...]`` and its labels ``[N]``.

    Returns:
        a pandas ``DataFrame`` indexed by name: ``ms_per_step`` (median), ``saved_mb``,
        ``state_mb``, ``memory_mb`` (their sum), ``time_rel`` (paired median ratio to the
        baseline) and ``memory_rel``.
    """
    import pandas as pd

    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not one of the models {list(models)}")
    steps = dict(steps or {})
    unknown = set(steps) - set(models)
    if unknown:
        raise ValueError(f"steps names {sorted(unknown)} are not models {list(models)}")
    opts = {n: torch.optim.Adam(m.parameters(), lr=lr) for n, m in models.items()}
    saved: dict[str, int] = {}

    def one_step(name: str) -> None:
        model, opt = models[name], opts[name]
        params = {_storage_key(p) for p in model.parameters()}
        keys: set[tuple[int, int]] = set()

        def pack(t: Tensor) -> Tensor:
            key = _storage_key(t)
            if key not in params:
                keys.add(key)
            return t

        model.train()
        opt.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = steps[name](model, x, y) if name in steps else loss_fn(model(x), y)
        if isinstance(loss, dict):
            loss = loss["loss"]
        loss.backward()
        opt.step()
        saved[name] = sum(nbytes for _, nbytes in keys)

    times = interleaved_times({n: (lambda n=n: one_step(n)) for n in models}, repeats=repeats,
                              warmup=warmup, device=x.device)
    rows = {}
    for n in models:
        state = _state_bytes(models[n], opts[n])
        rows[n] = {"ms_per_step": 1e3 * statistics.median(times[n]), "saved_mb": saved[n] / 2**20,
                   "state_mb": state / 2**20, "memory_mb": (saved[n] + state) / 2**20,
                   "time_rel": paired_ratio(times, n, baseline)}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame["memory_rel"] = frame["memory_mb"] / frame.loc[baseline, "memory_mb"]
    return frame
