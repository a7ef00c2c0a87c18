"""Tests for AutoLabelModule (CPU)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ecos_lightning.modules import AutoLabelModule, ClassifierModule

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:.*LeafSpec.*")

SMALL = dict(model_name="resnet10t", weights="none", num_classes=3, input_size=32)


class AutoLabelled(pl.LightningDataModule):
    """Proxy images with (simulated) client auto-labels."""

    num_classes = 3

    def __init__(self, accuracy=None):
        super().__init__()
        if accuracy is not None:
            self.proxy_label_accuracy = accuracy

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.rand(8, 3, 16, 16), torch.arange(8) % 3), batch_size=4)


def fit(tmp_path, module, dm):
    t = pl.Trainer(
        accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    t.fit(module, datamodule=dm)
    return t


def test_logs_label_accuracy_from_datamodule(tmp_path):
    m = AutoLabelModule(**SMALL)
    assert isinstance(m, ClassifierModule) and m.label_accuracy is None
    t = fit(tmp_path, m, AutoLabelled(0.8125))
    assert m.label_accuracy == pytest.approx(0.8125)
    assert t.callback_metrics["autolabel_label_acc"].item() == pytest.approx(0.8125)
    assert "train_loss" in t.callback_metrics


def test_without_label_accuracy_attribute(tmp_path):
    m = AutoLabelModule(**SMALL)
    t = fit(tmp_path, m, AutoLabelled())
    assert m.label_accuracy is None and "autolabel_label_acc" not in t.callback_metrics
