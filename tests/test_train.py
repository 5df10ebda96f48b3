"""The training loop: learning, checkpoints, resume, non-finite losses, BN re-calibration."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reprolib import models
from reprolib.train import (
    NonFiniteLossError,
    TrainConfig,
    evaluate,
    fit,
    load_checkpoint,
    recalibrate_bn,
    resolve_device,
    save_checkpoint,
)


def toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))


def net():
    torch.manual_seed(0)
    return models.build_model("small_cnn", in_channels=1, num_classes=2, image_size=8, width=0.125)


def test_fit_learns_and_logs():
    loader = toy_data()
    model = net()
    before = evaluate(model, loader, "cpu")["loss"]
    hist = fit(model, loader, config=TrainConfig(epochs=5, lr=1e-2, progress=False, device="cpu"), val_loader=loader)
    assert len(hist.records) == 5 and {"loss", "val_acc", "val_loss", "lr", "seconds"} <= set(hist.last)
    assert hist.last["val_loss"] < before
    assert hist.frame().index.tolist() == [0, 1, 2, 3, 4]


def test_step_dict_and_clipping():
    seen = {}

    def step(model, x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        return {"loss": loss * 1e6, "raw": loss}

    def check(model, epoch):
        seen["max_grad"] = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)

    hist = fit(net(), toy_data(), config=TrainConfig(epochs=1, clip_grad_value=0.5, progress=False, device="cpu"),
               step=step, on_epoch_end=[check])
    assert seen["max_grad"] <= 0.5 and "raw" in hist.last


def test_nonfinite_loss_stops_with_message(tmp_path):
    def step(model, x, y):
        return model(x).sum() * float("nan")

    cfg = TrainConfig(epochs=2, progress=False, device="cpu", checkpoint_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, step 0; last good checkpoint: none"):
        fit(net(), toy_data(), config=cfg, step=step)


def test_resume_is_bit_identical(tmp_path):
    full = net()
    fit(full, toy_data(), config=TrainConfig(epochs=3, progress=False, device="cpu", checkpoint_dir=tmp_path / "a"))

    def crash(model, epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    cfg = TrainConfig(epochs=3, progress=False, device="cpu", checkpoint_dir=tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        fit(net(), toy_data(), config=cfg, on_epoch_end=[crash])
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 0
    resumed = net()
    hist = fit(resumed, toy_data(), config=cfg, resume=True)
    assert [r["epoch"] for r in hist.records] == [0, 1, 2]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_checkpoint_errors(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    save_checkpoint(tmp_path / "y.pt", {"kind": "something else"})
    with pytest.raises(ValueError, match="not a reprolib training checkpoint"):
        load_checkpoint(tmp_path / "y.pt")
    assert [p.name for p in tmp_path.iterdir()] != []  # no temporary files left
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_recalibrate_bn_gives_exact_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    x = torch.randn(64, 1, 8, 8) * 2 + 1
    loader = DataLoader(TensorDataset(x, torch.zeros(64)), batch_size=16)
    model.eval()
    recalibrate_bn(model, loader, num_batches=4, device="cpu")
    assert not model.training and model[1].momentum == 0.1
    feats = model[0](x).detach()
    per_batch_means = torch.stack([feats[i:i + 16].mean(dim=(0, 2, 3)) for i in range(0, 64, 16)])
    torch.testing.assert_close(model[1].running_mean, per_batch_means.mean(0))


def test_config_validation_and_device():
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lamb")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
