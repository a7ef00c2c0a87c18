"""A tiny model and a one-epoch fit, shared by the callback tests."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger


class TinyModel(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3 * 8 * 8, 4)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture
def fit_tiny(tmp_path):
    """``fit_tiny(datamodule, callback) -> trainer``: two steps of TinyModel with a CSV logger in tmp_path."""

    def run(datamodule, callback):
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, default_root_dir=tmp_path,
                             logger=CSVLogger(tmp_path), enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[callback])
        trainer.fit(TinyModel(), datamodule=datamodule)
        return trainer

    return run
