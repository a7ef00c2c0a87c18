"""ProxyDataModule and the callbacks in a project built on the unified ``lightning`` package."""

import json

import lightning as L
import pytest
import torch
from torch.utils.data import TensorDataset

from ecos_lightning.callbacks import PrivacyLedger, ProxyReport, read_ledger
from ecos_lightning.datamodules import ProxyDataModule


class UnifiedModel(L.LightningModule):
    """A module of a project that imports ``lightning``, not ``pytorch_lightning``."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
        self.seen = 0

    def training_step(self, batch, batch_idx):
        if isinstance(batch, dict):  # the FixMatch stream: labelled proxy batch and unlabelled views
            batch = batch["proxy"]
        x, y = batch
        self.seen += len(x)
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def datasets():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(90, 3, 16, 16, generator=g)
    return TensorDataset(images, torch.arange(90) % 4), TensorDataset(images[:30] * 0.5, torch.arange(30) % 4)


@pytest.mark.parametrize("fixmatch", [False, True])
def test_a_lightning_trainer_takes_the_data_module_and_the_callbacks(tmp_path, fixmatch):
    open_ds, client_ds = datasets()
    dm = ProxyDataModule(open_dataset=open_ds, client_dataset=client_ds, client_test_dataset=client_ds,
                         encoder_input_size=32, num_clusters=4, budget=20, image_size=16, batch_size=4,
                         unlabelled_batch_size=4 if fixmatch else 0, cache_dir=str(tmp_path / "cache"))
    model = UnifiedModel()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path,
                        callbacks=[PrivacyLedger(str(tmp_path / "ledger.json")), ProxyReport()])
    trainer.fit(model, datamodule=dm)
    assert model.seen == 18  # 20 selected, 10% held out for validation
    assert len(read_ledger(tmp_path / "ledger.json")["entries"]) == 1
    assert json.loads((tmp_path / "proxy_report.json").read_text())
    assert 0.0 <= trainer.test(model, datamodule=dm, verbose=False)[0]["test_acc"] <= 1.0
