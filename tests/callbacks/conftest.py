"""A tiny model and a one-epoch fit, shared by the callback tests."""

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger
from train_helpers import CountingModel


@pytest.fixture
def fit_tiny(tmp_path):
    """``fit_tiny(datamodule, callback) -> trainer``: two steps of CountingModel with a CSV logger in tmp_path."""

    def run(datamodule, callback):
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, default_root_dir=tmp_path,
                             logger=CSVLogger(tmp_path), enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[callback])
        trainer.fit(CountingModel(size=8), datamodule=datamodule)
        return trainer

    return run
