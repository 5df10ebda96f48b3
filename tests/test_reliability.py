"""Nothing is lost, nothing is garbage, the same seed gives the same numbers.

* Checkpoints hold everything a run needs (per-bit steps and offsets, every BN copy, search
  logits, optimizer, schedule, random generators, the step's own sampler), for every method:
  a run interrupted after an epoch and resumed in a fresh model ends bit for bit where the
  uninterrupted run does, and the checkpoint loads strictly into a freshly built model.
* A process killed with SIGKILL resumes in a new process, bit for bit.
* A save that fails midway leaves the previous checkpoint; unreadable, truncated, foreign or
  mismatched checkpoints are ``ValueError`` s that say what to do.
* A non-finite loss names the epoch, the step and the last good checkpoint; quantizers turn NaN
  inputs into NaN outputs, never into finite values.
* A notebook's quick mode records the same claims twice.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from reprolib import eqnet, models
from reprolib.anyprec import (
    AnyPrecisionStep,
    ClampActQuantizer,
    DoReFaWeightQuantizer,
    any_precision_model,
    calibrate_bn,
)
from reprolib.nn import (
    LSQFactory,
    LSQQuantizer,
    Precision,
    quantize_model,
    quantized_layers,
    set_precision,
    using_precision,
)
from reprolib.qts import SearchFactory, SearchSchedule, rdhs_select, search_layers, sgt_select
from reprolib.quant import fake_quantize
from reprolib.train import CHECKPOINT_KIND, NonFiniteLossError, TrainConfig, fit, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def toy_loader(n=64, seed=0, shuffle=True):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)


def small_cnn():
    torch.manual_seed(0)
    return models.build_model("small_cnn", in_channels=1, num_classes=10, image_size=8, width=0.25)


def config(ckpt_dir, epochs=3):
    return TrainConfig(epochs=epochs, lr=5e-3, progress=False, device="cpu", checkpoint_dir=ckpt_dir)


# -- one setup per method: model, step, hooks, and the state its checkpoint must hold ---------------
def lsq_run():
    model = quantize_model(small_cnn(), LSQFactory(bits=(2, 4, 8)))

    def step(model, x, y):  # Python's and NumPy's generators must be restored too
        set_precision(model, random.choice((2, 4, 8)))
        return F.cross_entropy(model(x + float(np.random.normal(0, 0.1))), y)

    return model, step, [], []


def eqnet_run():
    calib = next(iter(toy_loader(shuffle=False)))[0]
    return eqnet.build_supernet(small_cnn(), calib_batch=calib), eqnet.make_supernet_step(seed=0), [], []


def anyprec_run():
    calib = toy_loader(seed=1, shuffle=False)

    def calibrate(model, epoch):  # BN copies for 3 bits, added after construction
        calibrate_bn(model, [3], calib, num_batches=1, device="cpu")

    return any_precision_model(small_cnn(), (2, 4, 8, 32)), AnyPrecisionStep((32, 8, 4, 2)), [], [calibrate]


def qts_run():
    model = quantize_model(small_cnn(), SearchFactory(values=2, method="rdhs"))
    return model, lambda m, x, y: F.cross_entropy(m(x), y), [SearchSchedule(mu=0.01)], []  # Gumbel noise: torch's RNG


def expected_keys(method):
    """State each method's checkpoint must hold, per quantizer or layer (an independent list)."""
    if method == "lsq":
        return [f"log_step.{b}" for b in (2, 4, 8)] + ["initialized"]
    if method == "eqnet":
        return [f"{p}.{b}" for p in ("log_step_channel", "zero_channel", "log_step_tensor", "zero_tensor")
                for b in eqnet.BIT_CHOICES] + ["initialized"]
    if method == "anyprec":
        return [f"bn.{b}.{p}" for b in (2, 3, 4, 8, 32) for p in ("weight", "bias", "running_mean", "running_var")]
    return ["alpha", "values"]


def holders(model, method):
    """The modules whose state :func:`expected_keys` lists."""
    if method == "lsq":
        return [n for n, m in model.named_modules() if isinstance(m, LSQQuantizer)]
    if method == "eqnet":  # the elastic layers' weight quantizers (first and last: 8 bits only)
        return [f"{n}.weight_quantizer" for n, _ in quantized_layers(model)[1:-1]]
    if method == "anyprec":
        return [n for n, m in model.named_modules() if type(m).__name__ == "SwitchableBatchNorm2d"]
    return [n for n, _ in search_layers(model)]


def precisions(method):
    return {"lsq": [2, 8], "eqnet": [eqnet.SubnetConfig.uniform(3, 3).precisions()], "anyprec": [3, 8],
            "qts": [Precision(w_bits=2, a_bits=None)]}[method]


RUNS = {"lsq": lsq_run, "eqnet": eqnet_run, "anyprec": anyprec_run, "qts": qts_run}


@pytest.mark.parametrize("method", list(RUNS))
def test_interrupted_run_resumes_bit_identical_and_checkpoint_holds_all_state(method, tmp_path):
    model, step, start, end = RUNS[method]()
    full = fit(model, toy_loader(), config=config(tmp_path / "a"), step=step, on_epoch_start=start, on_epoch_end=end)

    def crash(model, epoch):
        if epoch == 1:
            raise KeyboardInterrupt  # after epoch 1's training, before its checkpoint

    crashed, step, start, end = RUNS[method]()
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, toy_loader(), config=config(tmp_path / "b"), step=step, on_epoch_start=start,
            on_epoch_end=[*end, crash])
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 0
    resumed, step, start, end = RUNS[method]()  # a fresh model, built as the first one was
    hist = fit(resumed, toy_loader(), config=config(tmp_path / "b"), step=step, on_epoch_start=start,
               on_epoch_end=end, resume=True)
    assert [r["epoch"] for r in hist.records] == [0, 1, 2]
    assert [r["loss"] for r in hist.records] == [r["loss"] for r in full.records]
    final, again = model.state_dict(), resumed.state_dict()
    assert final.keys() == again.keys()
    for k in final:
        assert torch.equal(final[k], again[k]), k

    # The checkpoint itself: every per-bit / per-copy entry, loaded strictly into a fresh model.
    state = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    names = holders(model, method)
    assert names
    for name in names:
        for key in expected_keys(method):
            assert f"{name}.{key}" in state, f"{name}.{key}"
            assert torch.equal(state[f"{name}.{key}"], final[f"{name}.{key}"])
    fresh, *_ = RUNS[method]()
    fresh.load_state_dict(state)  # strict: the fresh model gets the BN copies added by calibration
    x = next(iter(toy_loader(seed=2)))[0]
    model.eval()
    fresh.eval()
    for p in precisions(method):
        with using_precision(model, p), using_precision(fresh, p):
            assert torch.equal(model(x), fresh(x))


KILL_SCRIPT = r"""
import os, random, signal, sys
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from reprolib import models
from reprolib.nn import LSQFactory, quantize_model, set_precision
from reprolib.train import TrainConfig, fit

mode, tmp = sys.argv[1], sys.argv[2]


def run(ckpt_dir, resume=False, hooks=()):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 8, 8, generator=g), torch.randint(0, 10, (96,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = quantize_model(models.build_model("small_cnn", in_channels=1, num_classes=10, image_size=8, width=0.25),
                           LSQFactory(bits=(2, 4)))

    def step(model, x, y):
        set_precision(model, random.choice((2, 4)))                  # Python's generator
        return F.cross_entropy(F.dropout(model(x), 0.2), y)          # torch's generator

    cfg = TrainConfig(epochs=4, lr=1e-2, progress=False, device="cpu", checkpoint_dir=ckpt_dir)
    fit(model, loader, config=cfg, step=step, on_epoch_start=list(hooks), resume=resume)
    return model.state_dict()


def kill(model, epoch):
    if epoch == 2:                                                   # epochs 0 and 1 are checkpointed
        os.kill(os.getpid(), signal.SIGKILL)


if mode == "kill":
    run(f"{tmp}/killed", hooks=[kill])
else:   # a new process: resume the killed run, and run the same training uninterrupted
    torch.save({"resumed": run(f"{tmp}/killed", resume=True), "full": run(f"{tmp}/full")}, f"{tmp}/states.pt")
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_killed_process_resumes_bit_identical_in_a_new_process(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REPROLIB_PROGRESS": "0"}

    def run(mode):
        return subprocess.run([sys.executable, str(script), mode, str(tmp_path)], env=env, capture_output=True,
                              text=True, timeout=300)

    killed = run("kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1
    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stderr
    states = torch.load(tmp_path / "states.pt")
    a, b = states["full"], states["resumed"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha, hb = (load_checkpoint(tmp_path / d / "last.pt")["history"] for d in ("full", "killed"))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in ha] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in hb]


def test_save_that_dies_midway_keeps_the_previous_checkpoint_and_the_run_resumes(tmp_path, monkeypatch):
    full = small_cnn()
    fit(full, toy_loader(), config=config(tmp_path / "a"))
    real_save, calls = torch.save, []

    def out_of_memory_on_second_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:          # epoch 1's checkpoint: some bytes reach the disk, then the end
            f.write(b"PK\x03\x04" + b"\0" * 100)
            raise MemoryError("out of memory while saving")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", out_of_memory_on_second_save)
    with pytest.raises(MemoryError):
        fit(small_cnn(), toy_loader(), config=config(tmp_path / "b"))
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["last.pt"]  # no temporary file left
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 0
    resumed = small_cnn()
    fit(resumed, toy_loader(), config=config(tmp_path / "b"), resume=True)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


@pytest.fixture
def checkpoint(tmp_path):
    fit(small_cnn(), toy_loader(n=16), config=config(tmp_path / "run", epochs=1))
    return tmp_path / "run" / "last.pt"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the plain pickle below
def test_unusable_checkpoints_are_value_errors_that_say_what_to_do(checkpoint, tmp_path):
    raw = checkpoint.read_bytes()
    cases = {
        "truncated.pt": (raw[: len(raw) // 2], r"not a readable checkpoint \(truncated or corrupt\?\)"),
        "empty.pt": (b"", r"not a readable checkpoint"),
        "text.pt": (b"epoch 3, loss 0.2\n", r"not a readable checkpoint"),
        "list.pkl": (pickle.dumps([1, 2, 3]), r"not a readable checkpoint"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message) as info:
            load_checkpoint(tmp_path / name)
        assert f"Delete {tmp_path / name}" in str(info.value), name
    written = {
        "other_kind.pt": ({"kind": "someone.else/1", "epoch": 0},
                          r"expected kind 'reprolib\.fit/2', found kind 'someone\.else/1'"),
        "tensor.pt": (torch.zeros(3), r"found a Tensor"),
        "state_dict.pt": (small_cnn().state_dict(), r"found kind None"),
        "partial.pt": ({"kind": CHECKPOINT_KIND, "epoch": 0, "model": {}},
                       r"checkpoint without \['optimizer', 'scheduler', 'history', 'rng'\]"),
        # A pickled NumPy object (what the previous checkpoint format held): not unpickled, since
        # unpickling arbitrary objects can run code.
        "numpy.pt": ({"kind": CHECKPOINT_KIND, "rng": np.random.get_state()}, r"objects other than tensors"),
    }
    for name, (payload, message) in written.items():
        torch.save(payload, tmp_path / name)
        with pytest.raises(ValueError, match=message):
            load_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    # fit(resume=True) reports the same errors, before training anything.
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "last.pt").write_bytes(raw[:100])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        fit(small_cnn(), toy_loader(n=16), config=config(tmp_path / "bad"), resume=True)


def test_resuming_into_a_different_model_says_how_to_fix_it(checkpoint):
    other = quantize_model(small_cnn(), LSQFactory(bits=4))
    with pytest.raises(ValueError, match=r"(?s)does not fit this model.*Missing key.*log_step.*"
                                         r"Build the model exactly as in the interrupted run"):
        fit(other, toy_loader(n=16), config=config(checkpoint.parent, epochs=2), resume=True)


def test_checkpoint_of_numpy_metrics_loads_weights_only(tmp_path):
    """Metrics as NumPy scalars (scipy's, sklearn's) are stored as Python floats, so the
    weights-only load accepts the checkpoint and the history resumes unchanged."""
    def numpy_metrics(model, loader, device):
        return {"acc": np.float64(12.5), "n": np.int64(3)}

    hist = fit(small_cnn(), toy_loader(n=16), config=config(tmp_path, epochs=1), val_loader=toy_loader(n=16),
               evaluate_fn=numpy_metrics)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["history"][0]["val_acc"] == 12.5 and type(saved["history"][0]["val_n"]) is int
    assert saved["history"] == hist.records
    assert saved["config"]["checkpoint_dir"] == str(tmp_path)


def test_save_checkpoint_replaces_atomically(tmp_path):
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(path, {"kind": "x", "n": 1})
    save_checkpoint(path, {"kind": "x", "n": 2})
    assert torch.load(path)["n"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_non_finite_loss_names_epoch_step_and_last_checkpoint(tmp_path):
    calls = []

    def step(model, x, y):
        calls.append(1)
        loss = F.cross_entropy(model(x), y)
        return loss * float("inf") if len(calls) == 7 else loss  # epoch 1 (4 steps per epoch), step 2

    with pytest.raises(NonFiniteLossError) as info:
        fit(small_cnn(), toy_loader(), config=config(tmp_path), step=step)
    message = str(info.value)
    assert "the loss became inf at epoch 1, step 2" in message
    assert f"last good checkpoint: {tmp_path / 'last.pt'}" in message
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0


# -- NaN in, NaN out -------------------------------------------------------------------------------
def _with_nan(shape=(4, 3, 3, 3), where=(1, 0, 2, 2)):
    torch.manual_seed(0)
    x = torch.randn(shape)
    x[where] = float("nan")
    return x, where


def _lsq(x):
    q = LSQQuantizer("weight", 4, channels=x.shape[0])
    q(torch.randn_like(x))  # steps initialised on clean data
    return q(x)


def _elastic(x):
    q = eqnet.ElasticQuantizer("weight", (2, 4), channels=x.shape[0])
    q.calibrate(torch.randn_like(x))
    q.apply_precision(Precision(4, 4, w_symmetric=False))
    return q(x)


def _dorefa(x):
    q = DoReFaWeightQuantizer()
    q.apply_precision(Precision.uniform(2))
    return q(x)


def _clamp_act(x):
    q = ClampActQuantizer()
    q.apply_precision(Precision.uniform(2))
    return q(x)


# Elementwise quantizers: NaN exactly where the input was NaN. DoReFa normalises by max|tanh W|,
# so one NaN weight makes the whole quantized weight NaN (documented behaviour, also not garbage).
@pytest.mark.parametrize("quantize,elementwise", [
    (lambda x: fake_quantize(x, 0.1, 0.0, 4), True), (lambda x: fake_quantize(x, 0.1, 0.3, 4, signed=False), True),
    (_lsq, True), (_elastic, True), (_clamp_act, True), (_dorefa, False),
], ids=["fake_quantize", "fake_quantize_zero_point", "LSQQuantizer", "ElasticQuantizer", "ClampActQuantizer",
        "DoReFaWeightQuantizer"])
def test_quantizers_turn_nan_into_nan(quantize, elementwise):
    x, where = _with_nan()
    out = quantize(x)
    assert out.shape == x.shape and torch.isnan(out[where])
    expected = torch.isnan(x) if elementwise else torch.ones_like(x, dtype=torch.bool)
    assert torch.equal(torch.isnan(out), expected)


@pytest.mark.parametrize("select", [lambda a, q: sgt_select(a, q), lambda a, q: rdhs_select(a, q),
                                    lambda a, q: rdhs_select(a, q, mu=0.1)], ids=["sgt", "rdhs", "rdhs_noisy"])
def test_value_selection_turns_nan_logits_into_nan_weights(select):
    alpha = torch.randn(5, 4)
    alpha[2, 1] = float("nan")
    w = select(alpha, (-1.0, -0.5, 0.5, 1.0))
    assert torch.equal(torch.isnan(w), torch.tensor([False, False, True, False, False]))


def test_wdr_of_nan_or_constant_weights_is_nan():
    assert torch.isnan(eqnet.wdr_loss([torch.tensor([1.0, float("nan"), 2.0])]))
    assert torch.isnan(eqnet.wdr_loss([torch.full((5,), 0.3)]))  # no spread: no standardised moments


# -- the same seed, the same claims -----------------------------------------------------------------
@pytest.mark.notebooks
def test_quick_mode_records_the_same_claims_twice(tmp_path):
    """Notebook 02 (WDR) twice in quick mode: every recorded claim identical.

    02 has one of the two fastest quick runs (≈ 20 s on two cores; 01 is as fast, the others take
    25-80 s) and exercises seeding, the data loader's shuffling, the supernet's subnet sampler and
    WDR. Its claims hold accuracies, moments and verdicts, no measured times; only the field
    ``recorded`` (a timestamp) is left out of the comparison. A notebook whose claims hold timings
    (06's training cost) could not be compared this way: those values differ from run to run.
    """
    import papermill as pm

    path = ROOT / "notebooks" / "02_eqnet_wdr.ipynb"
    recorded = []
    for run in ("first", "second"):
        results = tmp_path / run
        pm.execute_notebook(str(path), str(tmp_path / f"{run}.ipynb"), cwd=str(path.parent), progress_bar=False,
                            parameters={"quick": True, "results_dir": str(results)})
        claims = json.loads((results / "claims.json").read_text())
        recorded.append({cid: {k: v for k, v in c.items() if k != "recorded"} for cid, c in claims.items()})
    assert recorded[0], "the notebook recorded no claims"
    assert recorded[0] == recorded[1]
