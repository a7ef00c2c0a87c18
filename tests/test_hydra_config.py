"""The Hydra example (configs/hydra/data/ecos.yaml) instantiates with Hydra and trains a foreign module; Hydra's
containers hash and save as the plain Python values they hold."""

from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import ListConfig, OmegaConf
from PIL import Image
from torch.utils.data import TensorDataset

from ecos_lightning.datamodules import ProxyDataModule

ROOT = Path(__file__).resolve().parents[1]


def image_folder(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")


class PlainClassifier(L.LightningModule):
    """A template-style module: plain cross-entropy, so it must never receive a -1 label."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_hydra_example_instantiates_and_trains(tmp_path):
    image_folder(tmp_path / "open_pool", 20, seed=0)
    image_folder(tmp_path / "client" / "train", 6, seed=1)
    image_folder(tmp_path / "client" / "test", 3, seed=2)
    data = OmegaConf.load(ROOT / "configs" / "hydra" / "data" / "ecos.yaml")
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "data": data})
    cfg.data.merge_with({"budget": 12, "num_clusters": 3, "encoder_input_size": 32, "batch_size": 4, "num_workers": 0,
                         "coverage_clusters": [2, 3]})
    dm = instantiate(cfg.data)
    assert isinstance(dm, ProxyDataModule) and type(dm.hparams.coverage_clusters) is list
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")])
    trainer.fit(PlainClassifier(), datamodule=dm)
    assert len(dm.proxy) == 12
    checkpoint = torch.load(next((tmp_path / "ckpt").glob("*.ckpt")), weights_only=True)  # no omegaconf class inside
    assert checkpoint["datamodule_hyper_parameters"]["coverage_clusters"] == [2, 3]


def test_an_omegaconf_list_and_a_python_list_give_one_hash(tmp_path):
    images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pool, client = TensorDataset(images, torch.arange(40) % 3), TensorDataset(images[:10], torch.arange(10) % 3)

    def module(clusters):
        return ProxyDataModule(open_dataset=pool, client_dataset=client, label_source="class_coverage",
                               coverage_clusters=clusters, cache_dir=str(tmp_path))

    assert module(ListConfig([2, 3])).proxy_hash() == module([2, 3]).proxy_hash() == module((2, 3)).proxy_hash()
    assert module([2, 4]).proxy_hash() != module([2, 3]).proxy_hash()
