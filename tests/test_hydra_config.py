"""The Hydra example (configs/hydra/data/ecos.yaml) instantiates with Hydra and trains a foreign module; Hydra's
containers hash and save as the plain Python values they hold."""

import shutil
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
    """A template-style module: plain cross-entropy, so it must never receive a -1 label; it saves its own
    hyperparameters, an ``nn.Module`` among them (not weights-only safe)."""

    def __init__(self, net: torch.nn.Module | None = None):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = net or torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_hydra_example_instantiates_and_trains(tmp_path):
    image_folder(tmp_path / "open_pool", 20, seed=0)
    image_folder(tmp_path / "client" / "train", 6, seed=1)
    image_folder(tmp_path / "client" / "test", 3, seed=2)
    data = OmegaConf.load(ROOT / "configs" / "hydra" / "data" / "ecos.yaml")
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "data": data})
    cfg.data.merge_with({"budget": 12, "sampler": {"num_clusters": 3}, "encoder_input_size": 32, "batch_size": 4,
                         "num_workers": 0, "label_source": {"_target_": "ecos_lightning.label_sources.ClassCoverage",
                                                            "clusters": [2, 3], "noise_multiplier": 0.0}})
    dm = instantiate(cfg.data)
    clusters = dm.hparams.label_source["init_args"]["clusters"]
    assert isinstance(dm, ProxyDataModule) and type(clusters) is list and type(dm.label_source.clusters) is list
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    trainer.fit(PlainClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))),
                datamodule=dm)
    assert len(dm.proxy) == 12
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=False)
    assert checkpoint["datamodule_hyper_parameters"]["label_source"]["init_args"]["clusters"] == [2, 3]  # plain
    assert "omegaconf" not in repr(checkpoint["datamodule_hyper_parameters"])

    # the template resumes and tests from the checkpoint: a fresh module from the same config, a cold cache
    shutil.rmtree(tmp_path / "ecos_cache")
    again = instantiate(cfg.data)
    L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path).fit(
        PlainClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))), datamodule=again,
        ckpt_path=ckpt, weights_only=False)
    assert again.proxy.indices == dm.proxy.indices and not (tmp_path / "ecos_cache").exists()
    tested = instantiate(cfg.data)
    result = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path).test(
        PlainClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))),
        datamodule=tested, ckpt_path=ckpt, weights_only=False)
    assert 0.0 <= result[0]["test_acc"] <= 1.0 and tested.proxy.indices == dm.proxy.indices
    assert not (tmp_path / "ecos_cache").exists()  # no features, no artifact, no client query


def test_an_omegaconf_list_and_a_python_list_give_one_hash(tmp_path):
    images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pool, client = TensorDataset(images, torch.arange(40) % 3), TensorDataset(images[:10], torch.arange(10) % 3)

    def module(clusters):
        return ProxyDataModule(open_dataset=pool, client_dataset=client, label_source="class_coverage",
                               coverage_clusters=clusters, cache_dir=str(tmp_path))

    assert module(ListConfig([2, 3])).proxy_hash() == module([2, 3]).proxy_hash() == module((2, 3)).proxy_hash()
    assert module([2, 4]).proxy_hash() != module([2, 3]).proxy_hash()
