"""ProxyDataModule's train / eval transforms: what a model gets from each loader, the built-in default,
datasets that are already normalised, and transforms given in a LightningCLI config."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from ecos_lightning.datamodules import ProxyDataModule
from ecos_lightning.datamodules.images import resize_uint8, to_uint8_chw
from ecos_lightning.datamodules.proxy import _weak_augmentation

ROOT = Path(__file__).resolve().parents[2]
NORMALISE = v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])


class PilImages(Dataset):
    """``n`` RGB PIL images of 16 x 16 with labels ``i % 4``."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.images = (torch.rand(n, 16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return Image.fromarray(self.images[i]), i % 4


class NormalisedImages(TensorDataset):
    """Float images with ``Normalize`` applied in the dataset: values outside [0, 1]."""

    def __getitem__(self, i):
        image, label = super().__getitem__(i)
        return NORMALISE(image), label


def _module(tmp_path, open_ds=None, client_ds=None, test_ds=None, **kwargs):
    args = dict(open_dataset=open_ds if open_ds is not None else PilImages(60, 0),
                client_dataset=client_ds if client_ds is not None else PilImages(20, 1),
                client_test_dataset=test_ds if test_ds is not None else PilImages(12, 2),
                sampler="train_helpers.TOY_SAMPLER", budget=20, image_size=16, batch_size=4,
                cache_dir=str(tmp_path / "cache"), dataset_id="toy")
    return ProxyDataModule(**{**args, **kwargs})


class Recorder(pl.LightningModule):
    """Records the shape and value range of every image batch each step gets."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(1, 4))
        self.seen = {"train": set(), "val": set(), "test": set(), "predict": set()}
        self.low = {}

    def _record(self, stage, x):
        self.seen[stage].add(tuple(x.shape[1:]))
        self.low[stage] = min(self.low.get(stage, 0.0), float(x.min()))
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self._record("train", x), y)

    def validation_step(self, batch, batch_idx):
        self._record("val", batch[0])

    def test_step(self, batch, batch_idx):
        self._record("test", batch[0])

    def predict_step(self, batch, batch_idx):
        return self._record("predict", batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path):
    return pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)


class RawImageTypes:
    """A transform recording the type of the image it receives, then ``transform``."""

    def __init__(self, transform):
        self.transform, self.types = transform, set()

    def __call__(self, image):
        self.types.add(type(image))
        return self.transform(image)


def test_custom_transforms_are_what_the_model_sees(tmp_path):
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    train = RawImageTypes(v2.Compose([*to_float, v2.RandomHorizontalFlip(), v2.Resize(24), v2.Grayscale(),
                                      v2.Normalize(mean=[0.5], std=[0.25])]))
    evaluate = v2.Compose([*to_float, v2.Resize(20), v2.Grayscale(), v2.Normalize(mean=[0.5], std=[0.25])])
    dm = _module(tmp_path, train_transform=train, eval_transform=evaluate, num_workers=0)  # records in this process
    model = Recorder()
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    trainer.predict(model, datamodule=dm)
    assert train.types == {Image.Image}  # the image as the dataset gives it
    assert model.seen == {"train": {(1, 24, 24)}, "val": {(1, 20, 20)}, "test": {(1, 20, 20)},
                          "predict": {(1, 20, 20)}}
    assert all(low < -0.5 for low in model.low.values())  # normalised, not in [0, 1]
    _, labels = next(iter(dm.test_dataloader()))
    assert labels.tolist() == [0, 1, 2, 3]  # labels untouched


class OldImageSubset(Dataset):
    """The loaders' items as they were before transforms could be given: the reference for the default."""

    def __init__(self, base, indices, labels, size, transform=None):
        self.base, self.indices, self.labels, self.size, self.transform = base, indices, labels, size, transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        x = resize_uint8(to_uint8_chw(self.base[int(self.indices[i])][0]), self.size)
        if self.transform is not None:
            x = self.transform(x)
        return x.float().div_(255.0), int(self.labels[i])


def test_the_default_gives_the_same_tensors_as_before(tmp_path):
    dm = _module(tmp_path, image_size=12, val_fraction=0.2, num_workers=0)  # the reference draws in this process
    dm.prepare_data()
    dm.setup("fit")
    train, val = dm._train_val_positions()
    indices, labels = dm.proxy_indices(), np.asarray(dm.proxy.labels)
    open_ds, _, test_ds, _ = dm.sources()
    before = {
        "train": OldImageSubset(open_ds, indices[train], labels[train], 12, _weak_augmentation(12)),
        "val": OldImageSubset(open_ds, indices[val], labels[val], 12),
        "test": OldImageSubset(test_ds, np.arange(len(test_ds)), np.arange(len(test_ds)) % 4, 12),
    }
    for stage, reference in before.items():
        torch.manual_seed(0)
        now = list(getattr(dm, f"{stage}_dataloader")())
        torch.manual_seed(0)
        old = list(DataLoader(reference, batch_size=4, shuffle=stage == "train"))
        assert len(now) == len(old) > 0
        for (x, y), (x_old, y_old) in zip(now, old):
            assert x.shape[1:] == (3, 12, 12) and 0 <= float(x.min()) and float(x.max()) <= 1
            assert torch.equal(x, x_old) and torch.equal(y, y_old)


@pytest.mark.parametrize("name", ["open_dataset", "client_dataset", "client_test_dataset"])
def test_a_normalised_dataset_is_refused_naming_its_argument(tmp_path, name):
    images = torch.rand(20, 3, 16, 16)
    images[0, 0, 0, 0] = 0.0  # normalised: -2
    normalised = NormalisedImages(images, torch.arange(20) % 4)
    with pytest.raises(ValueError) as error:
        _module(tmp_path, **{name: normalised}, train_transform=NORMALISE, eval_transform=NORMALISE)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{name}: an image has torch.float32 values in [-2")
    assert message.endswith("pass the raw images (PIL, uint8, or floats in [0, 1]) and give the normalisation, "
                            "channels and size as train_transform / eval_transform")
    spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    assert train.root_message(error.value) == message  # the line train.py prints after "error:"
    raw = TensorDataset(images, torch.arange(20) % 4)  # the same images, normalised by the transform instead
    dm = _module(tmp_path, raw, raw, raw, train_transform=NORMALISE, eval_transform=NORMALISE)
    x, _ = next(iter(dm.test_dataloader()))
    assert torch.allclose(x, NORMALISE(images[:4]))


def test_fixmatch_refuses_a_train_transform(tmp_path):
    with pytest.raises(ValueError, match="unlabelled_batch_size > 0 .*leave train_transform unset"):
        _module(tmp_path, train_transform=NORMALISE, unlabelled_batch_size=4)
    _module(tmp_path, eval_transform=NORMALISE, unlabelled_batch_size=4)


def test_transforms_from_a_cli_config(tmp_path):
    compose = {"class_path": "torchvision.transforms.v2.Compose", "init_args": {"transforms": [
        {"class_path": "torchvision.transforms.v2.ToImage"},
        {"class_path": "torchvision.transforms.v2.ToDtype", "init_args": {"dtype": "torch.float32", "scale": True}},
        {"class_path": "torchvision.transforms.v2.Resize", "init_args": {"size": [32, 32]}},
        {"class_path": "torchvision.transforms.v2.Normalize",
         "init_args": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}]}}
    transforms = tmp_path / "transforms.yaml"
    transforms.write_text(yaml.safe_dump({"data": {"train_transform": compose, "eval_transform": compose}}))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", ECOS_CACHE_DIR=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1")
    args = ["fit", "--config", str(ROOT / "configs/finetune_digits.yaml"), "--config", str(transforms),
            "--data.sampler", "train_helpers.TOY_SAMPLER", "--data.budget", "40", "--data.batch_size", "8",
            "--model.init_args.input_size", "32", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "1", "--data.cache_dir", str(tmp_path / "cache")]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "client test accuracy" in proc.stdout
    saved, = tmp_path.rglob("config.yaml")
    data = yaml.safe_load(saved.read_text())["data"]
    assert data["train_transform"] == data["eval_transform"]
    assert [t["class_path"].rsplit(".", 1)[1] for t in data["train_transform"]["init_args"]["transforms"]] == [
        "ToImage", "ToDtype", "Resize", "Normalize"]
