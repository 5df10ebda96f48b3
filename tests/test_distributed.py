"""Multi-process training: two CPU processes under torchrun against one process, same global batch.

One ``torchrun --standalone --nproc_per_node=2`` launch (gloo, CPU) trains every case of the
worker script below for two epochs of four steps; the test process trains the same cases in one
process on the same global batches (``shard_loader(..., num_replicas=1)``: the permutation the two
processes split) and compares the final parameters, the last step's gradients and the logged
losses.

* ``eqnet``, ``anyprec``, ``qts``: each method's own model, step, optimizer and schedule, with
  BatchNorm frozen (eval mode inside the step: a fixed affine map, so an example's output does not
  depend on which examples share its batch). Two processes must compute what one computes: the
  gradient of the mean loss over the global batch. This exercises DDP around a step with several
  forward passes, EQ-Net's random subnet drawn alike in both processes, Any-Precision's BN copies
  that get no gradient, QTS's Gumbel noise (μ > 0) drawn alike.
* ``anyprec_bn``: BatchNorm in training mode. PyTorch's SyncBatchNorm works on GPUs only, so on
  the CPU each process normalises with its own half of the batch. The reference is one process
  whose model normalises each half separately: the positions ``0, 2, 4, …`` and ``1, 3, 5, …`` of
  the global batch, which are the two processes' shares.
* ``qts_resume``: the ``qts`` run interrupted after epoch 0's checkpoint and resumed with
  ``resume=True`` in both processes; it must end where the uninterrupted run ends.

Not bit for bit: two processes sum each gradient in another order (per half, then across the
processes) than one process, so results agree to float32 rounding, amplified a little by Adam.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reprolib import distributed, models
from reprolib.anyprec import any_precision_model

WORKER = '''
"""Train the cases of tests/test_distributed.py; every process saves its results."""
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reprolib import distributed
from reprolib.anyprec import AnyPrecisionStep, any_precision_model
from reprolib.eqnet import fresh_supernet, make_supernet_step, supernet_config
from reprolib.models import build_model
from reprolib.nn import quantize_model
from reprolib.qts import SearchFactory, SearchSchedule
from reprolib.train import TrainConfig, ce_step, fit

KWARGS = {"in_channels": 1, "num_classes": 10, "image_size": 8}
CASES = ("eqnet", "anyprec", "qts", "anyprec_bn", "qts_resume")
EPOCHS = 2


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (128,), generator=g)
    # The global batch is 32: four steps per epoch, each process 16 examples per step.
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))


def frozen_bn(step):
    """``step`` with every BatchNorm in eval mode: a fixed affine map, independent of the batch."""
    def wrapped(model, x, y):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return step(model, x, y)
    return wrapped


def build(case, checkpoint_dir=None):
    """``(model, fit keyword arguments)`` of a case; the model's initial weights are seeded."""
    if case == "eqnet":
        x = next(iter(data()))[0]
        model = fresh_supernet("small_cnn", model_kwargs=KWARGS, calib_batch=x, width=0.25, seed=0)
        config = supernet_config(epochs=EPOCHS, device="cpu", progress=False, seed=0)
        return model, {"config": config, "step": frozen_bn(make_supernet_step(seed=0))}
    if case in ("anyprec", "anyprec_bn"):
        torch.manual_seed(0)
        model = any_precision_model(build_model("small_cnn", **KWARGS, width=0.25))  # BN copies 1, 2, 4, 8, 32
        # The copies of 2 and 8 bits get no gradient. With BN in training mode, 1-bit activations
        # would amplify float rounding (an activation at a rounding threshold flips by a whole step).
        step = AnyPrecisionStep((1, 4, 32) if case == "anyprec" else (8, 32))
        config = TrainConfig(epochs=EPOCHS, lr=1e-3, schedule="step", milestones=(1,), device="cpu",
                             progress=False, seed=0)
        return model, {"config": config, "step": frozen_bn(step) if case == "anyprec" else step}
    if case in ("qts", "qts_resume"):
        torch.manual_seed(0)
        model = quantize_model(build_model("small_cnn", **KWARGS, width=0.25), SearchFactory(values=1))
        config = TrainConfig(epochs=EPOCHS, lr=3e-3, device="cpu", progress=False, seed=0,
                             checkpoint_dir=checkpoint_dir)
        return model, {"config": config, "step": frozen_bn(ce_step), "on_epoch_start": [SearchSchedule(mu=0.01)]}
    raise ValueError(case)


def crash_after(epoch):
    def hook(model, e):
        if e == epoch:
            raise KeyboardInterrupt
    return hook


def train(case, loader, wrap=None, checkpoint_dir=None):
    model, kwargs = build(case, checkpoint_dir)
    trained = wrap(model) if wrap else model
    if case == "qts_resume":
        try:
            fit(trained, loader, on_epoch_end=[crash_after(1)], **kwargs)
        except KeyboardInterrupt:
            pass
        model, kwargs = build(case, checkpoint_dir)   # a new process would start from scratch too
        trained = model
        history = fit(trained, loader, resume=True, **kwargs)
    else:
        history = fit(trained, loader, **kwargs)
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        "history": history.records,
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    ctx = distributed.setup("cpu")
    assert ctx.world_size == 2, ctx
    for case in CASES:
        result = train(case, data(), checkpoint_dir=out / f"ckpt-{case}")
        torch.save(result, out / f"{case}-rank{ctx.rank}.pt")
    distributed.teardown()
'''

WORLD = 2
CASES = ("eqnet", "anyprec", "qts", "anyprec_bn")   # compared with one process (qts_resume: with qts)


def load_worker(path: Path):
    spec = importlib.util.spec_from_file_location("ddp_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PerProcessBN(nn.Module):
    """One process computing what ``WORLD`` processes compute with per-process BN statistics:
    the model runs on each process's share of the batch, positions ``r, r + WORLD, …``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        parts = [self.model(x[r::WORLD]) for r in range(WORLD)]
        out = parts[0].new_empty((x.shape[0], *parts[0].shape[1:]))
        for r, part in enumerate(parts):
            out[r::WORLD] = part
        return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The worker's results per case: ``{case: [rank 0's, rank 1's, one process's]}``."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REPROLIB_PROGRESS": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
         str(script), str(tmp)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    print(f"torchrun: {time.perf_counter() - t0:.1f} s")
    worker = load_worker(script)
    results = {}
    for case in CASES:
        shared = distributed.shard_loader(worker.data(), num_replicas=1, rank=0, seed=0)  # the same global batches
        wrap = PerProcessBN if case == "anyprec_bn" else None
        one = worker.train(case, shared, wrap=wrap, checkpoint_dir=tmp / f"one-{case}")
        one["params"] = {n.removeprefix("model."): p for n, p in one["params"].items()}
        one["grads"] = {n.removeprefix("model."): g for n, g in one["grads"].items()}
        results[case] = [torch.load(tmp / f"{case}-rank{r}.pt") for r in range(WORLD)] + [one]
    results["qts_resume"] = [torch.load(tmp / f"qts_resume-rank{r}.pt") for r in range(WORLD)]
    return results


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.distributed
@pytest.mark.parametrize("case", CASES)
def test_two_processes_match_one_process(runs, case):
    rank0, rank1, one = runs[case]
    # The same parameters get a gradient, and the gradient is the one-process gradient of the mean
    # loss over the global batch (a sum over the processes instead of the mean would be 2x).
    assert rank0["grads"].keys() == rank1["grads"].keys() == one["grads"].keys()
    for name, g in one["grads"].items():
        assert torch.equal(rank0["grads"][name], rank1["grads"][name]), name   # one all-reduce
        torch.testing.assert_close(rank0["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
    # Adam moves every parameter by about lr = 1e-3 per step: 2e-5 is 2 % of one step. (Adam
    # divides by the gradient's scale, so the parameters alone could not tell a mean from a sum.)
    for name, p in one["params"].items():
        assert torch.equal(rank0["params"][name], rank1["params"][name]), name
        torch.testing.assert_close(rank0["params"][name], p, rtol=1e-5, atol=2e-5, msg=name)
    print(f"{case}: max |2 processes - 1 process|: parameters {max_abs_diff(rank0['params'], one['params']):.1e}, "
          f"last gradients {max_abs_diff(rank0['grads'], one['grads']):.1e}")
    # The logged losses are the means over the global batch, the same in both processes.
    assert rank0["history"][-1]["loss"] == rank1["history"][-1]["loss"]
    for r0, r1 in zip(rank0["history"], one["history"], strict=True):
        assert r0.keys() == r1.keys()
        for k in r0:
            if k != "seconds":
                assert r0[k] == pytest.approx(r1[k], rel=1e-5), k


@pytest.mark.distributed
def test_unused_parameters_keep_no_gradient(runs):
    # AnyPrecisionStep((1, 4, 32)) on a model with BN copies for 1, 2, 4, 8, 32 bits.
    rank0, _, _ = runs["anyprec"]
    assert not any(".bn.2." in n or ".bn.8." in n for n in rank0["grads"])
    assert any(".bn.4." in n for n in rank0["grads"])


@pytest.mark.distributed
def test_resume_under_torchrun_ends_where_the_uninterrupted_run_ends(runs):
    resumed, uninterrupted = runs["qts_resume"][0], runs["qts"][0]
    assert [r["epoch"] for r in resumed["history"]] == [0, 1]
    for name, p in uninterrupted["params"].items():
        assert torch.equal(resumed["params"][name], p), name


# --- single-process pieces ---------------------------------------------------------------------

def test_shard_loader_splits_each_global_batch():
    data = TensorDataset(torch.arange(96))
    loader = DataLoader(data, batch_size=24, shuffle=True, generator=torch.Generator().manual_seed(0))
    one = distributed.shard_loader(loader, num_replicas=1, rank=0, seed=3)
    for world in (2, 4):
        shards = [distributed.shard_loader(loader, num_replicas=world, rank=r, seed=3) for r in range(world)]
        for epoch in (0, 1):
            for s in [one, *shards]:
                distributed.set_epoch(s, epoch)
            for k, (batch,) in enumerate(one):
                parts = [list(s)[k][0] for s in shards]
                assert all(len(p) == 24 // world for p in parts)
                assert sorted(torch.cat(parts).tolist()) == sorted(batch.tolist())
        assert len(shards[0]) == len(one) == 4
    distributed.set_epoch(one, 0)
    first = next(iter(one))[0]
    distributed.set_epoch(one, 1)
    assert not torch.equal(first, next(iter(one))[0])   # a new permutation every epoch


def test_shard_loader_rejects_what_it_cannot_split():
    data = TensorDataset(torch.arange(10))
    with pytest.raises(ValueError, match="not divisible by the 4 processes"):
        distributed.shard_loader(DataLoader(data, batch_size=6), num_replicas=4, rank=0)
    weighted = DataLoader(data, batch_size=2, sampler=torch.utils.data.WeightedRandomSampler([1.0] * 10, 10))
    with pytest.raises(ValueError, match="WeightedRandomSampler"):
        distributed.shard_loader(weighted, num_replicas=2, rank=0)
    sharded = distributed.shard_loader(DataLoader(data, batch_size=4), num_replicas=2, rank=1)
    assert distributed.shard_loader(sharded) is sharded and sharded.batch_size == 2


def test_single_process_context():
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)
    assert ctx.device == torch.device("cpu") and distributed.is_main_process()
    assert distributed.mean_over_processes({"loss": torch.tensor(2.5), "acc": 90.0}) == {"loss": 2.5, "acc": 90.0}
    run, restore = distributed.distribute_step(nn.Linear(2, 2), lambda m, x, y: m(x).sum(), ctx)
    assert run(torch.ones(1, 2), None).shape == ()
    restore()


def test_sync_batchnorm_swaps_and_restores_switchable_bn():
    # The GPU path of fit: every BatchNorm, the copies of a switchable BN included, becomes a
    # SyncBatchNorm sharing its tensors; without a process group it computes as a BatchNorm.
    torch.manual_seed(0)
    model = any_precision_model(models.build_model("small_cnn", in_channels=1, num_classes=10, image_size=8,
                                                   width=0.25), (2, 32))
    reference = copy.deepcopy(model)
    keys, params = list(model.state_dict()), list(model.parameters())
    x = torch.randn(8, 1, 8, 8)

    def bn_types(m):
        return {type(b) for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)}

    with distributed.sync_batchnorm(model):
        assert bn_types(model) == {nn.SyncBatchNorm}
        assert list(model.state_dict()) == keys and list(model.parameters()) == params
        torch.testing.assert_close(model(x), reference(x))   # training mode: updates the statistics
    assert bn_types(model) == {nn.BatchNorm2d} and list(model.parameters()) == params
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)   # the statistics updated inside the block stayed
