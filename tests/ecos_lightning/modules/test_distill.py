"""Tests for DistillModule: frozen teacher, teacher checkpoints, loss wiring (CPU)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ecos_lightning.modules import ClassifierModule, DistillModule, FrozenTeacher, distillation_loss

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:.*LeafSpec.*")

STUDENT = dict(model_name="resnet10t", weights="none", num_classes=3, input_size=32)
TEACHER = dict(teacher_name="resnet10t", teacher_weights="none")


def data(n=16, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.arange(n) % 3


def trainer(tmp_path, **kw):
    return pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, **kw,
    )


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A short ClassifierModule fit (resnet10t, input 24) saved as a Lightning checkpoint."""
    tmp = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(1)
    m = ClassifierModule(model_name="resnet10t", weights="none", num_classes=3, input_size=24)
    x, y = data()
    t = trainer(tmp, max_steps=2)
    t.fit(m, DataLoader(TensorDataset(x, y), batch_size=8))
    path = tmp / "teacher.ckpt"
    t.save_checkpoint(path)
    return path, m.eval()


def test_teacher_frozen_eval_and_unchanged_after_fit(tmp_path):
    m = DistillModule(**STUDENT, **TEACHER)
    teacher0 = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    student0 = {k: v.clone() for k, v in m.model.state_dict().items()}
    x, y = data()
    t = trainer(tmp_path, max_epochs=1)
    t.fit(m, DataLoader(TensorDataset(x, y), batch_size=4), DataLoader(TensorDataset(x, y), batch_size=8))
    assert isinstance(m.teacher, FrozenTeacher)
    assert all(not p.requires_grad for p in m.teacher.parameters())
    assert all(not mod.training for mod in m.teacher.modules())
    m.train()
    assert all(not mod.training for mod in m.teacher.modules()) and m.model.training
    for k, v in m.teacher.state_dict().items():
        assert torch.equal(v, teacher0[k]), k  # BN statistics included
    assert any(not torch.equal(v, student0[k]) for k, v in m.model.state_dict().items())
    opt_ids = {id(p) for g in t.optimizers[0].param_groups for p in g["params"]}
    assert opt_ids == {id(p) for p in m.model.parameters()}
    assert not opt_ids & {id(p) for p in m.teacher.parameters()}
    assert {"train_ce_loss", "train_kd_loss", "train_loss", "val_acc"} <= set(t.callback_metrics)


def test_training_step_loss_matches_distillation_loss(monkeypatch):
    m = DistillModule(**STUDENT, **TEACHER, alpha=0.3, temperature=2.0)
    logged: dict = {}
    monkeypatch.setattr(m, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    x, y = data(8)
    y[::2] = -1
    loss = m.training_step((x, y), 0)
    with torch.no_grad():
        expected = distillation_loss(m(x), m.teacher(x), y, alpha=0.3, temperature=2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert (0.3 * logged["train_ce_loss"] + 0.7 * logged["train_kd_loss"]).item() == pytest.approx(loss.item(), rel=1e-5)
    # No labels at all: CE term is 0, loss = (1 - alpha) * KD, finite and differentiable.
    loss_u = m.training_step((x, torch.full((8,), -1)), 0)
    assert logged["train_ce_loss"].item() == 0.0 and torch.isfinite(loss_u)
    loss_u.backward()


def test_teacher_loaded_from_classifier_checkpoint(teacher_ckpt):
    path, original = teacher_ckpt
    m = DistillModule(**STUDENT, teacher_name="efficientnet_lite0", teacher_checkpoint=str(path))
    # model name, input size come from the checkpoint's hyperparameters.
    assert m.hparams.teacher_name == "resnet10t" and m.hparams.teacher_input_size == 24
    assert m.teacher.preprocess.input_size == 24
    x, _ = data(6, size=20, seed=3)
    with torch.no_grad():
        assert torch.allclose(m.teacher(x), original(x), atol=1e-5)


def test_missing_teacher_checkpoint(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="teacher_digits.yaml") as err:
        DistillModule(**STUDENT, teacher_checkpoint=str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_teacher_checkpoint_class_mismatch(teacher_ckpt):
    with pytest.raises(ValueError, match="num_classes=3"):
        DistillModule(**{**STUDENT, "num_classes": 5}, teacher_checkpoint=str(teacher_ckpt[0]))


def test_distill_checkpoint_round_trip(tmp_path, teacher_ckpt):
    m = DistillModule(**STUDENT, teacher_checkpoint=str(teacher_ckpt[0]))
    x, y = data()
    t = trainer(tmp_path, max_steps=2)
    t.fit(m, DataLoader(TensorDataset(x, y), batch_size=8))
    path = tmp_path / "student.ckpt"
    t.save_checkpoint(path)
    m.eval()
    loaded = DistillModule.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    # Self-contained: the teacher file is not needed to reload.
    no_file = DistillModule.load_from_checkpoint(
        path, map_location="cpu", weights_only=True, teacher_checkpoint=None, teacher_weights="none"
    ).eval()
    with torch.no_grad():
        for other in (loaded, no_file):
            assert torch.allclose(other(x), m(x), atol=1e-6)
            assert torch.allclose(other.teacher(x), m.teacher(x), atol=1e-6)
    assert all(not p.requires_grad for p in no_file.teacher.parameters())
