"""Tests for ClassifierModule (CPU, tiny random-init timm model)."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from ecos_lightning.modules import ClassifierModule, Preprocess
from ecos_lightning.modules.classifier import _warmup_cosine

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:.*LeafSpec.*")  # Lightning hints

SMALL = dict(model_name="resnet10t", weights="none", num_classes=4, input_size=32)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def separable(n: int = 64, classes: int = 4, size: int = 16, seed: int = 0):
    """Images [n,3,size,size] in [0,1]: class c brightens quadrant c; labels [n] int64."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, 3, size, size, generator=g) * 0.3
    h = size // 2
    for c in range(classes):
        r, col = divmod(c, 2)
        x[y == c, :, r * h:(r + 1) * h, col * h:(col + 1) * h] += 0.7
    return x.clamp(0, 1), y


def loader(x, y, batch_size=16, shuffle=False):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def trainer(tmp_path, **kw):
    opts = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    opts.update(kw)
    return pl.Trainer(**opts)


def test_preprocess_resizes_and_normalises():
    pre = Preprocess(8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), interpolation="bilinear")
    out = pre(torch.full((2, 3, 20, 12), 0.75))
    assert out.shape == (2, 3, 8, 8)
    assert torch.allclose(out[:, 0], torch.full((2, 8, 8), 1.0))
    assert torch.allclose(out[:, 2], torch.full((2, 8, 8), 0.25))
    assert set(pre.state_dict()) == {"mean", "std"}


def test_forward_accepts_any_image_size():
    m = ClassifierModule(**SMALL)
    for hw in [(16, 16), (32, 32), (40, 24)]:
        assert m(torch.rand(2, 3, *hw)).shape == (2, 4)


def test_training_reduces_loss(tmp_path):
    torch.manual_seed(0)
    x, y = separable()
    m = ClassifierModule(**SMALL, lr=3e-3)
    before = trainer(tmp_path).validate(m, loader(x, y), verbose=False)[0]["val_loss"]
    trainer(tmp_path, max_epochs=8).fit(m, loader(x, y, shuffle=True))
    after = trainer(tmp_path).validate(m, loader(x, y), verbose=False)[0]
    assert after["val_loss"] < 0.5 * before
    assert after["val_acc"] >= 0.9


def test_unlabelled_batch_gives_finite_zero_loss_with_grad(tmp_path):
    m = ClassifierModule(**SMALL)
    x, _ = separable(8)
    y = torch.full((8,), -1)
    loss = m.training_step((x, y), 0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    grads = [p.grad for p in m.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and not g.any() for g in grads)
    # Through a Trainer, too.
    t = trainer(tmp_path, max_steps=2)
    t.fit(m, loader(x, y, batch_size=4))
    assert t.callback_metrics["train_loss"].item() == 0.0


def test_partially_labelled_batch_uses_labelled_entries_only():
    m = ClassifierModule(**SMALL).eval()
    x, y = separable(8)
    y_masked = y.clone()
    y_masked[::2] = -1
    with torch.no_grad():
        logits = m(x)
        loss, _ = m.supervised_step(x, y_masked)
    expected = torch.nn.functional.cross_entropy(logits[1::2], y[1::2])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_one_metric_object_per_stage_and_logged_names(tmp_path):
    m = ClassifierModule(**SMALL)
    metrics = [m.train_acc, m.val_acc, m.test_acc]
    assert all(isinstance(a, MulticlassAccuracy) for a in metrics)
    assert len({id(a) for a in metrics}) == 3
    x, y = separable(32)
    t = trainer(tmp_path, max_epochs=1)
    t.fit(m, loader(x, y), loader(x, y))
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(t.callback_metrics)
    res = t.test(m, loader(x, y), verbose=False)[0]
    assert set(res) == {"test_loss", "test_acc"}
    assert 0.0 <= res["test_acc"] <= 1.0


def test_dict_batch_uses_proxy_part():
    m = ClassifierModule(**SMALL).eval()
    x, y = separable(8)
    with torch.no_grad():
        a = m.training_step((x, y), 0)
        b = m.training_step({"proxy": (x, y), "unlabelled": (x, x)}, 0)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def _groups_after_fit(tmp_path, **kw):
    m = ClassifierModule(**SMALL, lr=1e-2, **kw)
    x, y = separable(16)
    t = trainer(tmp_path, max_steps=1)
    t.fit(m, loader(x, y))
    return m, t.optimizers[0].param_groups


def test_param_groups_backbone_lr_scale(tmp_path):
    m, groups = _groups_after_fit(tmp_path, backbone_lr_scale=0.1, warmup_fraction=0.0)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "head"}
    assert by_name["backbone"]["initial_lr"] == pytest.approx(1e-3)
    assert by_name["head"]["initial_lr"] == pytest.approx(1e-2)
    head_ids = {id(p) for p in m.head().parameters()}
    assert {id(p) for p in by_name["head"]["params"]} == head_ids
    n_model = sum(1 for _ in m.model.parameters())
    assert len(by_name["backbone"]["params"]) + len(head_ids) == n_model


@pytest.mark.parametrize("kw", [dict(freeze_backbone=True), dict(backbone_lr_scale=0.0)])
def test_frozen_backbone_is_excluded_and_unchanged(tmp_path, kw):
    m = ClassifierModule(**SMALL, lr=1e-2, **kw)
    state0 = {k: v.clone() for k, v in m.model.state_dict().items()}
    x, y = separable(16)
    t = trainer(tmp_path, max_steps=3)
    t.fit(m, loader(x, y, batch_size=8))
    (group,) = t.optimizers[0].param_groups
    assert group["name"] == "head"
    assert {id(p) for p in group["params"]} == {id(p) for p in m.head().parameters()}
    assert all(not p.requires_grad for p in m.backbone_parameters())
    head_ids = {id(p) for p in m.head().parameters()}
    head_keys = {k for k, p in m.model.named_parameters() if id(p) in head_ids}
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, state0[k]) == (k not in head_keys), k  # BN statistics included
    m.train()
    assert not m.model.training and m.head().training


def test_warmup_cosine_schedule():
    f = _warmup_cosine(warmup=10, total=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    assert all(f(i) >= f(i + 1) for i in range(10, 110))


def test_predict_returns_probabilities(tmp_path):
    m = ClassifierModule(**SMALL)
    x, y = separable(10)
    out = torch.cat(trainer(tmp_path).predict(m, loader(x, y, batch_size=4)))
    assert out.shape == (10, 4)
    assert (out >= 0).all() and torch.allclose(out.sum(1), torch.ones(10), atol=1e-5)


def test_checkpoint_round_trip_weights_only(tmp_path):
    m = ClassifierModule(**SMALL, label_smoothing=0.1)
    x, y = separable(16)
    t = trainer(tmp_path, max_steps=2)
    t.fit(m, loader(x, y, batch_size=8))
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["label_smoothing"] == 0.1
    loaded = ClassifierModule.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    m.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), m(x), atol=1e-6)
    # Resuming training from the checkpoint works too.
    trainer(tmp_path, max_steps=3).fit(ClassifierModule(**SMALL, label_smoothing=0.1), loader(x, y, batch_size=8), ckpt_path=path)


def test_datamodule_num_classes_mismatch_is_reported(tmp_path):
    class DM(pl.LightningDataModule):
        num_classes = 7

        def train_dataloader(self):
            return loader(*separable(8))

    with pytest.raises(ValueError, match="num_classes=7"):
        trainer(tmp_path, max_steps=1).fit(ClassifierModule(**SMALL), datamodule=DM())


def test_offline_efficientnet_default_builds():
    m = ClassifierModule(input_size=32).eval()  # efficientnet_lite0 with packaged ImageNet weights
    assert m.hparams.weights == "offline" and m(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    assert not math.isnan(m(torch.rand(2, 3, 16, 16)).sum().item())


def test_invalid_arguments():
    with pytest.raises(ValueError):
        ClassifierModule(**SMALL, lr=0.0)
    with pytest.raises(ValueError):
        ClassifierModule(**SMALL, label_smoothing=1.0)
