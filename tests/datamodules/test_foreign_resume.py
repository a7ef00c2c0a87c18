"""A lightning-hydra-template style project resumes and tests from checkpoints with Lightning's own
calls: the proxy comes from the checkpoint, and neither the features nor the client are touched again."""

import logging
import shutil

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

from ecos_lightning.datamodules import ProxyDataModule


class SimpleDenseNet(torch.nn.Module):
    """The template's network: a plain ``nn.Module`` the module stores among its hyperparameters."""

    def __init__(self, size: int = 16, classes: int = 4):
        super().__init__()
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, classes))

    def forward(self, x):
        return self.model(x)


class TemplateModule(L.LightningModule):
    """Saves its hyperparameters the template's way, network object included (not weights-only safe)."""

    def __init__(self, net: torch.nn.Module, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def module(cache):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(90, 3, 16, 16, generator=g)
    return ProxyDataModule(open_dataset=TensorDataset(images, torch.arange(90) % 4),
                           client_dataset=TensorDataset(images[:30] * 0.5, torch.arange(30) % 4),
                           client_test_dataset=TensorDataset(images[30:40], torch.arange(10) % 4),
                           encoder_input_size=32, num_clusters=4, budget=20, image_size=16, batch_size=4,
                           cache_dir=str(cache), num_workers=0)


def trainer(tmp_path, epochs):
    return L.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                     callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])


@pytest.fixture()
def checkpointed(tmp_path):
    """One epoch trained, its checkpoint, then the cache wiped: a cold machine."""
    dm = module(tmp_path / "cache")
    trainer(tmp_path, 1).fit(TemplateModule(SimpleDenseNet()), datamodule=dm)
    shutil.rmtree(tmp_path / "cache")
    return dm.proxy_indices(), tmp_path / "ckpt" / "last.ckpt"


@pytest.fixture()
def no_protocol(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("the protocol ran for a checkpointed proxy")

    monkeypatch.setattr(ProxyDataModule, "_inputs", refuse)


def test_fit_resumes_with_the_checkpoints_proxy(tmp_path, checkpointed, no_protocol, caplog):
    indices, ckpt = checkpointed
    dm = module(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="ecos_lightning"):
        trainer(tmp_path, 2).fit(TemplateModule(SimpleDenseNet()), datamodule=dm, ckpt_path=ckpt, weights_only=False)
    np.testing.assert_array_equal(dm.proxy_indices(), indices)
    assert not (tmp_path / "cache").exists()  # no features, no artifact
    said = [r.getMessage() for r in caplog.records if "restored from checkpoint" in r.getMessage()]
    assert len(said) == 1 and "the protocol does not run" in said[0]


def test_test_from_a_checkpoint_runs_no_protocol(tmp_path, checkpointed, no_protocol):
    indices, ckpt = checkpointed
    dm = module(tmp_path / "cache")
    result = trainer(tmp_path, 1).test(TemplateModule(SimpleDenseNet()), datamodule=dm, ckpt_path=ckpt,
                                        weights_only=False)
    assert 0.0 <= result[0]["test_acc"] <= 1.0
    np.testing.assert_array_equal(dm.proxy_indices(), indices)
    assert not (tmp_path / "cache").exists()


def test_a_checkpoint_of_other_settings_is_refused(tmp_path, checkpointed, no_protocol):
    _, ckpt = checkpointed
    dm = module(tmp_path / "cache")
    dm.hparams.budget = 21  # another proxy
    with pytest.raises(ValueError, match="was trained on proxy"):
        trainer(tmp_path, 2).fit(TemplateModule(SimpleDenseNet()), datamodule=dm, ckpt_path=ckpt, weights_only=False)
