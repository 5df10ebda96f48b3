"""Multi-process training: :func:`reprolib.train.fit` under ``torchrun``, one process per GPU.

The same training script runs in one process (``python train.py``) or in ``N``
(``torchrun --nproc_per_node=N train.py``); nothing in it changes. ``torchrun`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in every process it starts; :func:`fit` sees them through
:func:`setup` and then differs from a one-process run in these ways (with ``N`` processes):

* **Process group and device.** CUDA (``device="auto"`` or ``"cuda"`` on a GPU machine): backend
  NCCL, process ``r`` on ``cuda:LOCAL_RANK``. CPU: backend gloo.
* **The batch size is the global batch.** The loader you give ``fit`` is the one of a
  one-process run; its batch size ``B`` is the *global* batch, and ``fit`` re-shards it
  (:func:`shard_loader`): a ``DistributedSampler`` seeded with ``config.seed`` and told the epoch
  (``set_epoch``) every epoch, ``B / N`` examples per process and step. Step ``k`` of epoch ``e``
  trains on the examples ``perm_e[k·B : (k+1)·B]`` of one permutation of the data set, *whatever*
  ``N`` is; so the papers' learning rates (given for their batch size) carry over unchanged, and
  a run may resume with another number of processes. ``B`` must be divisible by ``N``.
* **Gradients: DistributedDataParallel around the whole step.** A step function forwards the
  model several times before its one backward pass (EQ-Net: subnets H, R and L; Any-Precision: one
  pass per bit-width). DDP is therefore wrapped around the *step* (:func:`distribute_step`): one
  DDP forward runs the step's forward passes, and DDP's reducer all-reduces the summed gradient
  once, during the one backward. Each process's loss is the mean over its ``B / N`` examples, and
  DDP averages the gradients over the processes: the gradient of the mean loss over the global
  batch, as one process would compute it. ``find_unused_parameters=True``, because the parameters
  that get a gradient change from step to step: EQ-Net's random subnet uses the steps and offsets
  of only the bit-widths and forms it drew, an Any-Precision model has BatchNorm copies of
  bit-widths it does not train. Neither the default reducer (every parameter must get a
  gradient) nor ``static_graph=True`` (the same ones every step) allows that. Parameters unused
  by every process keep ``grad = None`` and the optimizer skips them, as in one process.
* **BatchNorm.** On CUDA every ``BatchNorm1d/2d/3d`` becomes a ``SyncBatchNorm`` for the run
  (:func:`sync_batchnorm`; restored when ``fit`` returns): batch statistics over the global
  batch, as in one process. That includes the copies inside Any-Precision's
  ``SwitchableBatchNorm2d``. PyTorch's ``SyncBatchNorm`` accepts only GPU tensors (on a CPU tensor
  it raises "SyncBatchNorm expected input tensor to be on GPU"), so on the CPU each process
  normalises with the statistics of its own ``B / N`` examples, as plain DDP does; results then
  differ slightly from one process with batch ``B``. Running statistics follow DDP's
  ``broadcast_buffers``: rank 0's are copied to every process before each step.
* **Randomness.** Every process seeds with ``config.seed``, so the random draws that are not
  about data are the same in every process: EQ-Net's random subnet (its sampler is a
  ``random.Random(seed)`` drawn once per step), QTS's Gumbel noise (drawn from torch's generator
  once per forward). All processes train the same subnet with the same noise in a step. Data
  augmentation draws the same random numbers in every process too, for different images; it
  draws as many in each, which keeps the processes' generators in step.
* **Agreement.** The step's logs are averaged over the processes every step (all of them then
  stop together on a non-finite loss); after each epoch every process copies rank 0's parameters
  and buffers (:func:`broadcast_state`) and the validation metrics are averaged, so every process
  holds the same model and the same :class:`~reprolib.train.History`. Rank 0 alone writes
  checkpoints and shows the progress bar; ``resume=True`` loads the checkpoint in every process.
  Quantizers that initialise themselves on their first batch (``LSQQuantizer``, EQ-Net without a
  calibration batch) see only their process's share of it; rank 0's initialisation is copied to
  the others after the first step.

Exactness: with BatchNorm synchronised (GPU) or frozen, ``N`` processes compute what one
process computes on the same global batches (:func:`shard_loader` with ``num_replicas=1``), up
to floating-point rounding: the gradient is summed in another order (per process, then across
processes), not bit for bit. ``tests/test_distributed.py`` measures the gap after 8 Adam steps of
each method with 2 CPU processes: at most 4e-6 in any parameter, 4e-7 in the last gradients.
Quantized networks can amplify it: an activation within rounding error of a quantization
threshold rounds the other way, a jump of a whole step (large at 1 bit). The examples of the
last, short batch are the same only when ``N`` divides the size of the data set
(``DistributedSampler`` pads with repeated examples).

Use in a script of your own::

    from reprolib import distributed
    ctx = distributed.setup()              # optional: fit calls it; gives rank, world size, device
    history = fit(model, train_loader, config=config, step=step)
    if ctx.is_main:
        torch.save(model.state_dict(), "model.pt")
    distributed.teardown()
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

__all__ = [
    "Context",
    "setup",
    "teardown",
    "is_main_process",
    "shard_loader",
    "set_epoch",
    "mean_over_processes",
    "broadcast_state",
    "sync_batchnorm",
    "distribute_step",
]

_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device``.

    ``world_size == 1`` outside ``torchrun`` (then ``rank == local_rank == 0``, ``backend`` None).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """More than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints and shows progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name} must be an integer, got {value!r}") from None


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device: str | torch.device = "auto") -> Context:
    """Join the process group when started by ``torchrun``; otherwise describe the one process.

    Idempotent: the first call in a process initialises ``torch.distributed`` (``env://``: the
    variables ``torchrun`` sets), later calls, and a process group initialised by the caller, are
    used as they are.

    Args:
        device: ``"auto"`` (CUDA when available, else the CPU), ``"cuda"``, ``"cpu"`` or a
            ``torch.device``. With several processes, CUDA means ``cuda:LOCAL_RANK`` (backend
            NCCL); the CPU means backend gloo. A CUDA device with an index is refused there, since
            every process would pick the same GPU.

    Returns:
        the :class:`Context` (rank, world size, local rank, device, backend).
    """
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Context(0, 1, 0, device)
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this PyTorch build has no torch.distributed")
    local_rank = _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"device={str(device)!r} with {world} processes: every process would use that GPU; "
                             "give device='auto' or 'cuda', and each process uses cuda:LOCAL_RANK")
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but CUDA is not available here; use 'auto' or 'cpu'")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend())


def teardown() -> None:
    """Leave the process group (end of a ``torchrun`` script); nothing in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True in rank 0 of a process group, and in a single process: the one that should print."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def shard_loader(
    loader: DataLoader, *, seed: int = 0, num_replicas: int | None = None, rank: int | None = None
) -> DataLoader:
    """This process's share of ``loader``, whose batch size is the global batch.

    The share is a ``DataLoader`` over the same data set with a ``DistributedSampler`` (shuffled
    when ``loader`` shuffles, with ``seed``; ``drop_last`` as ``loader``'s) and batch size
    ``B / num_replicas``. Process ``r`` gets positions ``r, r + N, r + 2N, …`` of the epoch's
    permutation, so the union of the ``N`` processes' ``k``-th batches is positions
    ``k·B … (k+1)·B − 1``: the same global batches for every ``N``, ``N = 1`` included.
    Workers, collate function, pinning and the loader's generator are kept. A loader that
    already has a ``DistributedSampler`` is returned as it is (its batch size is per process).

    Args:
        num_replicas, rank: default: the process group's (1 and 0 without one).

    Raises:
        ValueError: ``B`` not divisible by ``num_replicas``, or a loader that cannot be re-sharded
            (an iterable data set, a custom sampler or batch sampler, sampling with replacement).
    """
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if num_replicas is None:
        num_replicas = dist.get_world_size() if _active() else 1
    if rank is None:
        rank = dist.get_rank() if _active() else 0
    if isinstance(loader.dataset, IterableDataset):
        raise ValueError("shard_loader needs a map-style data set; shard an IterableDataset yourself")
    if loader.batch_size is None:
        raise ValueError("shard_loader needs a loader built with batch_size=..., not a batch_sampler")
    sampler = loader.sampler
    if not isinstance(sampler, (RandomSampler, SequentialSampler)) or (
        isinstance(sampler, RandomSampler) and (sampler.replacement or sampler._num_samples is not None)
    ):
        raise ValueError(f"shard_loader re-shards loaders built with shuffle=True or False, not a "
                         f"{type(sampler).__name__} of its own; give fit a loader with a DistributedSampler instead")
    if loader.batch_size % num_replicas:
        raise ValueError(f"the global batch size {loader.batch_size} is not divisible by the {num_replicas} processes; "
                         f"choose a multiple of {num_replicas}")
    shuffle = isinstance(sampler, RandomSampler)
    kwargs: dict[str, Any] = {}
    if loader.num_workers > 0:
        kwargs = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers,
                  "multiprocessing_context": loader.multiprocessing_context}
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size // num_replicas,
        sampler=DistributedSampler(loader.dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                                   drop_last=loader.drop_last),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        pin_memory_device=loader.pin_memory_device,
        **kwargs,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell ``loader``'s sampler the epoch when it wants to know (``DistributedSampler``: the
    permutation of epoch ``e`` is drawn with seed ``seed + e``); other samplers are left alone."""
    sampler = getattr(loader, "sampler", None)
    if callable(getattr(sampler, "set_epoch", None)):
        sampler.set_epoch(epoch)


def mean_over_processes(values: Mapping[str, float | Tensor], device: torch.device | str = "cpu") -> dict[str, float]:
    """Each scalar of ``values`` averaged over the processes (one all-reduce), as Python floats.

    In a single process: ``{k: float(v)}``. Every process must pass the same keys. The sum runs in
    float64 on ``device`` (NCCL needs it on the process's GPU).
    """
    if not _active():
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    scalars = [values[k].detach() if isinstance(values[k], Tensor) else values[k] for k in keys]
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in scalars])
    dist.all_reduce(stacked)
    means = dict(zip(keys, (stacked / dist.get_world_size()).tolist(), strict=True))
    return {k: means[k] for k in values}


@torch.no_grad()
def broadcast_state(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every process's ``module``, in place.

    Nothing in a single process. Boolean buffers travel as ``uint8`` (gloo has no bool).
    """
    if not _active():
        return
    for t in [*module.parameters(), *module.buffers()]:
        if t.dtype == torch.bool:
            carrier = t.to(torch.uint8)
            dist.broadcast(carrier, src)
            t.copy_(carrier.bool())
        else:
            dist.broadcast(t.data, src)


def _swap(new: nn.Module, old: nn.Module) -> nn.Module:
    """``new`` takes ``old``'s parameters and buffers (the same tensors), settings and mode."""
    for name, p in old._parameters.items():
        new._parameters[name] = p
    for name, b in old._buffers.items():
        new._buffers[name] = b
    new.eps, new.momentum = old.eps, old.momentum
    new.train(old.training)
    return new


@contextlib.contextmanager
def sync_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every ``BatchNorm1d/2d/3d`` of ``model`` is a ``torch.nn.SyncBatchNorm``.

    The replacement shares the parameter and buffer tensors of the BatchNorm it replaces (the
    optimizer, the state dict and its keys are unchanged); on leaving, the original modules come
    back with the current tensors. Works inside containers (``nn.ModuleDict`` included, so the
    copies of Any-Precision's ``SwitchableBatchNorm2d`` are synchronised too). ``SyncBatchNorm``
    computes synchronised statistics only for CUDA tensors in a process group of 2 or more; in a
    single process it is an ordinary BatchNorm.
    """
    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
    for name, module in list(model.named_modules()):
        if name and type(module) in _PLAIN_BN:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            sync = _swap(nn.SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                          module.track_running_stats, device="meta"), module)
            setattr(parent, child, sync)
            swaps.append((parent, child, module, sync))
    try:
        yield model
    finally:
        for parent, child, original, sync in reversed(swaps):
            setattr(parent, child, _swap(original, sync))


class _StepModule(nn.Module):
    """``forward(x, y) = step(model, x, y)``: all of a step's forward passes as one module call."""

    def __init__(self, model: nn.Module, step: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        out = self.step(self.model, x, y)
        return out if isinstance(out, dict) else {"loss": out}


def distribute_step(
    model: nn.Module, step: Callable[[nn.Module, Tensor, Tensor], Any], ctx: Context
) -> tuple[Callable[[Tensor, Tensor], Any], Callable[[], None]]:
    """``step`` made distributed for :func:`reprolib.train.fit`: ``(run, restore)``.

    In a single process ``run(x, y) = step(model, x, y)`` and ``restore`` does nothing. With
    several processes: on CUDA the BatchNorms become ``SyncBatchNorm`` (:func:`sync_batchnorm`),
    then ``run`` is a ``DistributedDataParallel`` around the step (a module whose forward is the
    step), so the step's forward passes form one DDP forward and the backward of its summed loss
    all-reduces the gradient once; ``find_unused_parameters=True`` because the set of parameters
    with a gradient changes from step to step (module docstring). ``run`` returns the step's
    dict (a bare loss becomes ``{"loss": loss}``). ``restore()`` puts the plain BatchNorms back.
    DDP copies rank 0's parameters and buffers to every process when it is built.
    """
    if not ctx.distributed:
        return (lambda x, y: step(model, x, y)), (lambda: None)
    stack = contextlib.ExitStack()
    if ctx.device.type == "cuda":
        stack.enter_context(sync_batchnorm(model))
    try:
        ddp = nn.parallel.DistributedDataParallel(
            _StepModule(model, step), device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    except BaseException:
        stack.close()
        raise
    return ddp, stack.close
