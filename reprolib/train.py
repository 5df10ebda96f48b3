"""The one training and evaluation loop.

Every paper trains through :func:`fit`; what differs is the *step function*, which maps one
batch to a loss (cross-entropy for float and LSQ training, three subnets with GPG for EQ-Net,
recursive distillation over bit-widths for Any-Precision, ...):

    history = fit(model, train_loader, config=TrainConfig(epochs=30, lr=1e-3),
                  step=ce_step, val_loader=val_loader)

``fit`` owns everything else: device placement, seeding, the optimizer and learning-rate
schedule, gradient clipping, a tqdm progress bar, per-epoch evaluation, an atomic checkpoint per
epoch, resuming, and stopping with a clear message when the loss stops being finite. The same
call trains with ``DistributedDataParallel`` when the script runs under ``torchrun``
(:mod:`reprolib.distributed`).
"""
from __future__ import annotations

import math
import os
import pickle
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from . import distributed
from .validate import check_bool, check_choice, check_int, check_ints, check_real, got

__all__ = [
    "TrainConfig",
    "History",
    "NonFiniteLossError",
    "fit",
    "ce_step",
    "evaluate",
    "accuracy",
    "recalibrate_bn",
    "resolve_device",
    "seed_everything",
    "progress_enabled",
    "save_checkpoint",
    "load_checkpoint",
]

StepFn = Callable[[nn.Module, Tensor, Tensor], "Tensor | dict[str, Tensor]"]
EvalFn = Callable[[nn.Module, DataLoader, torch.device], dict[str, float]]
EpochHook = Callable[[nn.Module, int], None]


def progress_enabled() -> bool:
    """Whether long work shows tqdm progress bars: yes, unless ``REPROLIB_PROGRESS=0``."""
    return os.environ.get("REPROLIB_PROGRESS", "1").strip() != "0"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, {got(device)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use 'auto' or 'cpu'")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or another torch device name, "
                         f"{got(device)}") from err


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (CPU and CUDA)."""
    seed = check_int("seed", seed, low=0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainConfig:
    """Everything :func:`fit` needs besides the model, the data and the step.

    Attributes:
        epochs: passes over the training set.
        lr: initial learning rate.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``, Nesterov off).
        weight_decay: L2 penalty on weights with 2+ dimensions (not on BN, biases or steps).
        schedule: ``"cosine"`` (to 0 over all steps), ``"step"`` (× ``gamma`` at ``milestones``,
            in epochs) or ``"constant"``.
        clip_grad_value: clip each gradient element to ``[−v, v]`` before the step (EQ-Net: 1.0).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        seed: seeds Python, NumPy and torch at the start of :func:`fit`.
        checkpoint_dir: where ``last.pt`` is written after every epoch (``None``: no checkpoints).
        progress: show a tqdm progress bar (default: on, unless the environment variable
            ``REPROLIB_PROGRESS`` is ``0``, as ``python -m reprolib reproduce`` sets it so that the
            executed notebooks store results rather than frozen progress bars).
        desc: the progress bar's label.
    """

    epochs: int = 10
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    clip_grad_value: float | None = None
    device: str = "auto"
    seed: int = 0
    checkpoint_dir: str | Path | None = None
    progress: bool = field(default_factory=lambda: progress_enabled())
    desc: str = "train"

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, low=0)
        check_real("lr", self.lr, low=0, low_open=True)
        check_choice("optimizer", self.optimizer, ("adam", "sgd"))
        check_real("momentum", self.momentum, low=0, high=1, high_open=True)
        check_real("weight_decay", self.weight_decay, low=0)
        check_choice("schedule", self.schedule, ("cosine", "step", "constant"))
        self.milestones = check_ints("milestones", self.milestones, low=1, increasing=True) if self.milestones else ()
        check_real("gamma", self.gamma, low=0, low_open=True)
        if self.clip_grad_value is not None:
            check_real("clip_grad_value", self.clip_grad_value, low=0, low_open=True)
        resolve_device(self.device)
        check_int("seed", self.seed, low=0)
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, Path)):
            raise TypeError(f"checkpoint_dir must be a path (str or Path) or None, {got(self.checkpoint_dir)}")
        check_bool("progress", self.progress)


@dataclass
class History:
    """Per-epoch records of a :func:`fit` run: ``epoch``, the step's mean logs (``loss``, ...),
    the validation metrics prefixed ``val_``, the learning rate and the epoch's seconds."""

    records: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        return [r[key] for r in self.records if key in r]

    @property
    def last(self) -> dict[str, float]:
        return self.records[-1] if self.records else {}

    def frame(self):
        """The records as a pandas ``DataFrame`` indexed by epoch."""
        import pandas as pd

        return pd.DataFrame(self.records).set_index("epoch")


def ce_step(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Plain cross-entropy: the step of float and single-precision QAT training."""
    return F.cross_entropy(model(x), y)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str = "auto") -> dict[str, float]:
    """Top-1 accuracy (in %) and mean cross-entropy of ``model`` on ``loader``, in eval mode."""
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    correct, total, loss = 0, 0, 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("cannot evaluate on an empty loader")
    return {"acc": 100.0 * correct / total, "loss": loss / total}


def accuracy(model: nn.Module, loader: DataLoader, device: torch.device | str = "auto") -> float:
    """Top-1 accuracy of ``model`` on ``loader`` in percent."""
    return evaluate(model, loader, device)["acc"]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    loader: DataLoader,
    num_batches: int = 10,
    device: torch.device | str = "auto",
    *,
    modules: Sequence[nn.Module] | None = None,
) -> None:
    """Re-estimate every BatchNorm's running mean and variance at the model's current precision.

    "Adaptive BN" (EQ-Net Sec. 4.1; Any-Precision's BN calibration, Sec. 4.3): reset the running
    statistics, then forward ``num_batches`` training batches in train mode with a cumulative
    moving average (``momentum=None``), so the statistics are the exact mean over those batches.
    No parameter changes; the model's train/eval mode is restored. ``modules`` limits the
    re-estimation to those BatchNorms (e.g. the new copies of a switchable BN); the others keep
    their statistics. Default: every BatchNorm of ``model``.
    """
    check_int("num_batches", num_batches, low=1)
    device = resolve_device(device)
    pool = model.modules() if modules is None else modules
    bns = [m for m in pool if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m, m.momentum) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    chosen = {id(m) for m in bns}
    for m in model.modules():   # BatchNorms not chosen keep their statistics: eval mode
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in chosen:
            m.eval()
    try:
        for i, (x, _) in enumerate(loader):
            if i >= num_batches:
                break
            model(x.to(device))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    if cfg.schedule == "step":
        marks = [m * steps_per_epoch for m in cfg.milestones]
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.gamma ** sum(s >= m for m in marks))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _rng_state(loader: DataLoader) -> dict[str, Any]:
    """Every generator a training run draws from, as tensors and plain Python values (so that a
    weights-only load can read it back)."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if getattr(loader, "generator", None) is not None:
        state["loader"] = loader.generator.get_state()
    return state


def _set_rng_state(state: dict[str, Any], loader: DataLoader) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "loader" in state and getattr(loader, "generator", None) is not None:
        loader.generator.set_state(state["loader"])


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars as Python numbers and paths as strings, recursively: the
    non-tensor part of a checkpoint holds only what a weights-only ``torch.load`` accepts."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


CHECKPOINT_KIND = "reprolib.fit/2"
_CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "history", "rng")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically: to a temporary file, then rename.

    The temporary file is flushed to disk (``fsync``) before it replaces ``path``, so an
    interrupted save (an exception, running out of memory or disk, a killed process, a power
    cut) leaves the previous checkpoint at ``path`` intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if os.name == "posix":   # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit`, with a clear error for anything else.

    The file is read with ``torch.load(..., weights_only=True)``: tensors and plain Python values
    only, so a file from elsewhere cannot run code while it is unpickled.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a truncated or corrupt file, a file that is not a :func:`fit` checkpoint (or
            one of an older format), each with what to do about it.
    """
    path = Path(path)
    start_over = (f"Delete {path} to train from the start (fit(..., resume=True) then begins at epoch 0), "
                  "or point checkpoint_dir at the run you meant.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err):
            raise ValueError(
                f"{path} holds Python objects other than tensors and plain values, so it is not a checkpoint of "
                f"this reprolib (an older format, or another program's file), and unpickling it could run "
                f"code. {start_over}"
            ) from err
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if detail.startswith("Weights only load failed"):   # torch's advice to unpickle anything
            detail = "not a file written by torch.save"
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt?): {detail.rstrip('.')}. "
                         f"{start_over}") from err
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        found = f"kind {payload.get('kind')!r}" if isinstance(payload, dict) else f"a {type(payload).__name__}"
        raise ValueError(f"{path} is not a reprolib training checkpoint (expected kind {CHECKPOINT_KIND!r}, "
                         f"found {found}). {start_over}")
    missing = [k for k in _CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise ValueError(f"{path} is a checkpoint without {missing}; it cannot resume a run. {start_over}")
    return payload


def _mean_logs(logs: list[dict[str, float]]) -> dict[str, float]:
    keys = logs[0].keys() if logs else ()
    return {k: float(np.mean([d[k] for d in logs])) for k in keys}


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    config: TrainConfig | None = None,
    step: StepFn = ce_step,
    val_loader: DataLoader | None = None,
    evaluate_fn: EvalFn = evaluate,
    on_epoch_start: Sequence[EpochHook] = (),
    on_epoch_end: Sequence[EpochHook] = (),
    resume: bool = False,
) -> History:
    """Train ``model`` in place with ``step`` and return its :class:`History`.

    Args:
        step: ``step(model, x, y)`` returns the loss to minimise, or a dict with that loss under
            ``"loss"`` and further scalar tensors to log. Several losses summed into ``"loss"``
            give summed gradients (EQ-Net's three subnets, Any-Precision's bit-widths). A step
            with state of its own (EQ-Net's subnet sampler) exposes ``state_dict()`` and
            ``load_state_dict()``, and the checkpoint holds it.
        val_loader: evaluated after every epoch with ``evaluate_fn(model, loader, device)``,
            whose metrics are logged with a ``val_`` prefix.
        on_epoch_start, on_epoch_end: ``hook(model, epoch)`` callables, e.g. a temperature
            schedule or BN re-calibration.
        resume: continue from ``config.checkpoint_dir/last.pt`` if it exists. The checkpoint
            (written after every epoch, after the ``on_epoch_end`` hooks) holds the model's state
            dict (every quantizer's per-bit steps and offsets, every BN copy, search logits), the
            optimizer, the schedule, every random generator, the history and the step's state;
            on the CPU a resumed run ends bit for bit where the uninterrupted run does.

    Started by ``torchrun --nproc_per_node=N``, every process runs ``fit`` with the same arguments
    and the processes train one model with ``DistributedDataParallel``: ``train_loader``'s batch
    size is the global batch (each process takes ``1/N`` of it), logs and validation metrics are
    averaged over the processes, rank 0 alone writes checkpoints. See :mod:`reprolib.distributed`.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite; the message names the epoch, the
            step and the last good checkpoint.
    """
    from tqdm.auto import tqdm

    cfg = TrainConfig() if config is None else config
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (or None for the defaults), {got(cfg)}")
    if not callable(step):
        raise TypeError(f"step must be a callable step(model, x, y) -> loss, {got(step)}")
    ctx = distributed.setup(resolve_device(cfg.device))   # one process, or one of torchrun's
    device = ctx.device
    model.to(device)
    seed_everything(cfg.seed)
    if ctx.distributed:   # the loader's batch size is the global batch; this process takes its share
        train_loader = distributed.shard_loader(train_loader, seed=cfg.seed)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("the training loader is empty")
    opt = _make_optimizer(model, cfg)
    sched = _make_scheduler(opt, cfg, steps_per_epoch)
    history = History()
    start_epoch = 0
    ckpt_path = Path(cfg.checkpoint_dir) / "last.pt" if cfg.checkpoint_dir is not None else None
    if resume:
        if ckpt_path is None:
            raise ValueError("resume=True needs config.checkpoint_dir")
        if ckpt_path.exists():
            state = load_checkpoint(ckpt_path)
            try:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as err:
                raise ValueError(
                    f"{ckpt_path} does not fit this model or its optimizer: {err}\nBuild the model exactly as "
                    "in the interrupted run (architecture, quantizers, bit-widths, BN copies) before "
                    "fit(..., resume=True), or delete the checkpoint to train from the start."
                ) from err
            sched.load_state_dict(state["scheduler"])
            if hasattr(step, "load_state_dict") and "step" in state:
                step.load_state_dict(state["step"])   # e.g. EQ-Net's subnet sampler
            history = History(state["history"])
            start_epoch = state["epoch"] + 1
            _set_rng_state(state["rng"], train_loader)

    run_step, restore = distributed.distribute_step(model, step, ctx)   # DDP around the step, or the step
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
               desc=cfg.desc, disable=not (cfg.progress and ctx.is_main), leave=True)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            distributed.set_epoch(train_loader, epoch)
            for hook in on_epoch_start:
                hook(model, epoch)
            model.train()
            t0 = time.perf_counter()
            logs: list[dict[str, float]] = []
            for i, (x, y) in enumerate(train_loader):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                out = run_step(x, y)
                out = out if isinstance(out, dict) else {"loss": out}
                loss = out["loss"]
                logged = distributed.mean_over_processes({k: v.detach() for k, v in out.items()}, device)
                if not math.isfinite(logged["loss"]):   # every process sees the same mean: all stop
                    last = str(ckpt_path) if ckpt_path is not None and ckpt_path.exists() else "none"
                    raise NonFiniteLossError(
                        f"the loss became {logged['loss']} at epoch {epoch}, step {i}; last good checkpoint: "
                        f"{last}. Lower the learning rate or clip gradients (clip_grad_value)."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad_value is not None:
                    torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip_grad_value)
                opt.step()
                sched.step()
                if ctx.distributed and epoch == start_epoch and i == 0:
                    distributed.broadcast_state(model)   # rank 0's lazily initialised quantizers win
                logs.append(logged)
                bar.update(1)
            if ctx.distributed:   # identical models for evaluation and the checkpoint (BN statistics)
                distributed.broadcast_state(model)
            record = {"epoch": epoch, **_mean_logs(logs), "lr": opt.param_groups[0]["lr"]}
            if val_loader is not None:
                metrics = evaluate_fn(model, val_loader, device)
                if ctx.distributed:   # each process measured its model (its share, if val_loader is sharded)
                    metrics = distributed.mean_over_processes(metrics, device)
                record.update({f"val_{k}": v for k, v in metrics.items()})
            record["seconds"] = time.perf_counter() - t0
            history.records.append(record)
            bar.set_postfix({k: round(v, 3) for k, v in record.items() if k in ("loss", "val_acc")})
            for hook in on_epoch_end:
                hook(model, epoch)
            if ckpt_path is not None and ctx.is_main:
                payload = {
                    "kind": CHECKPOINT_KIND, "epoch": epoch, "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "history": _plain(history.records), "rng": _rng_state(train_loader), "config": _plain(asdict(cfg)),
                }
                if hasattr(step, "state_dict"):
                    payload["step"] = step.state_dict()
                save_checkpoint(ckpt_path, payload)
    finally:
        bar.close()
        restore()
    return history
