"""The one training and evaluation loop.

Every paper trains through :func:`fit`; what differs is the *step function*, which maps one
batch to a loss (cross-entropy for float and LSQ training, three subnets with GPG for EQ-Net,
recursive distillation over bit-widths for Any-Precision, ...):

    history = fit(model, train_loader, config=TrainConfig(epochs=30, lr=1e-3),
                  step=ce_step, val_loader=val_loader)

``fit`` owns everything else: device placement, seeding, the optimizer and learning-rate
schedule, gradient clipping, a tqdm progress bar, per-epoch evaluation, an atomic checkpoint per
epoch, resuming, and stopping with a clear message when the loss stops being finite.
"""
from __future__ import annotations

import math
import os
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
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (CPU and CUDA)."""
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
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {self.epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'step' or 'constant', got {self.schedule!r}")
        if self.clip_grad_value is not None and not self.clip_grad_value > 0:
            raise ValueError(f"clip_grad_value must be positive or None, got {self.clip_grad_value!r}")
        self.milestones = tuple(self.milestones)


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
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if getattr(loader, "generator", None) is not None:
        state["loader"] = loader.generator.get_state()
    return state


def _set_rng_state(state: dict[str, Any], loader: DataLoader) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "loader" in state and getattr(loader, "generator", None) is not None:
        loader.generator.set_state(state["loader"])


CHECKPOINT_KIND = "reprolib.fit/1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically: to a temporary file, then rename.

    An interrupted save leaves the previous checkpoint at ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit`, with a clear error for anything else."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt?): {err}") from err
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not a reprolib training checkpoint (expected kind {CHECKPOINT_KIND!r})")
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
            give summed gradients (EQ-Net's three subnets, Any-Precision's bit-widths).
        val_loader: evaluated after every epoch with ``evaluate_fn(model, loader, device)``,
            whose metrics are logged with a ``val_`` prefix.
        on_epoch_start, on_epoch_end: ``hook(model, epoch)`` callables, e.g. a temperature
            schedule or BN re-calibration.
        resume: continue from ``config.checkpoint_dir/last.pt`` if it exists.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite; the message names the epoch, the
            step and the last good checkpoint.
    """
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    device = resolve_device(cfg.device)
    model.to(device)
    seed_everything(cfg.seed)
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
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            history = History(state["history"])
            start_epoch = state["epoch"] + 1
            _set_rng_state(state["rng"], train_loader)

    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
               desc=cfg.desc, disable=not cfg.progress, leave=True)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            for hook in on_epoch_start:
                hook(model, epoch)
            model.train()
            t0 = time.perf_counter()
            logs: list[dict[str, float]] = []
            for i, (x, y) in enumerate(train_loader):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                out = step(model, x, y)
                out = out if isinstance(out, dict) else {"loss": out}
                loss = out["loss"]
                if not torch.isfinite(loss):
                    last = str(ckpt_path) if ckpt_path is not None and ckpt_path.exists() else "none"
                    raise NonFiniteLossError(
                        f"the loss became {loss.item()} at epoch {epoch}, step {i}; last good checkpoint: "
                        f"{last}. Lower the learning rate or clip gradients (clip_grad_value)."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad_value is not None:
                    torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip_grad_value)
                opt.step()
                sched.step()
                logs.append({k: float(v.detach()) for k, v in out.items()})
                bar.update(1)
            record = {"epoch": epoch, **_mean_logs(logs), "lr": opt.param_groups[0]["lr"]}
            if val_loader is not None:
                record.update({f"val_{k}": v for k, v in evaluate_fn(model, val_loader, device).items()})
            record["seconds"] = time.perf_counter() - t0
            history.records.append(record)
            bar.set_postfix({k: round(v, 3) for k, v in record.items() if k in ("loss", "val_acc")})
            for hook in on_epoch_end:
                hook(model, epoch)
            if ckpt_path is not None:
                save_checkpoint(ckpt_path, {
                    "kind": CHECKPOINT_KIND, "epoch": epoch, "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "history": history.records, "rng": _rng_state(train_loader), "config": asdict(cfg),
                })
    finally:
        bar.close()
    return history
