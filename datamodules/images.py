"""Dataset adapters: any ``(image, label)`` dataset -> the tensors a model gets (built-in: fixed-size float
images in [0, 1]; or a transform of the user's)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision.datasets import DatasetFolder
from torchvision.transforms import v2
from tqdm import tqdm

from ecos_lightning.data import ArrayImageDataset, PathImageDataset
from ecos_lightning.data.litdata_pool import LitDataImageDataset
from ecos_lightning.data.shards import TarShardDataset
from ecos_lightning.encoders.preprocess import FLOAT_RANGE_TOL, is_pil, item_image, pil_to_chw
from ecos_lightning.features.store import matrix_digest
from ecos_lightning.files import file_stamp, stable_hash


def to_uint8_chw(image) -> torch.Tensor:
    """PIL image, uint8/float array or tensor (HWC or CHW, grey or RGB) -> uint8 tensor [3, H, W].

    Non-uint8 values must lie in [0, 1] (with the encoder's slack for resampling overshoot), as the
    encoder's preprocessing requires: a normalised image is refused, not clamped.
    """
    if is_pil(image):
        return pil_to_chw(image)
    x = torch.as_tensor(np.asarray(image)) if not isinstance(image, torch.Tensor) else image
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3:
        raise ValueError(f"an image must be [H, W], [H, W, C] or [C, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(2, 0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if x.dtype != torch.uint8:
        dtype, x = x.dtype, x.float()
        lo, hi = (float(v) for v in torch.aminmax(x)) if x.numel() else (0.0, 0.0)
        if not (-FLOAT_RANGE_TOL <= lo and hi <= 1.0 + FLOAT_RANGE_TOL):
            raise ValueError(f"an image has {dtype} values in [{lo:.3g}, {hi:.3g}] (already normalised?), not "
                             "uint8 or floats in [0, 1]")
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return x.contiguous()


def check_raw_images(dataset: Dataset, name: str) -> None:
    """Refuse, naming the argument ``name``, a dataset whose first image :func:`to_uint8_chw` cannot read
    (for example float tensors a ``Normalize`` in the dataset produced): the encoder needs raw images."""
    if len(dataset) == 0:
        return
    with torch.random.fork_rng(devices=[]):  # a random transform of the dataset's must not move the global stream
        image = item_image(dataset[0])
    try:
        to_uint8_chw(image)
        return
    except ValueError as exc:
        problem = str(exc)
    # raised outside the handler, so the message is the innermost one (train.py reports that one)
    raise ValueError(f"{name}: {problem}: pass the raw images (PIL, uint8, or floats in [0, 1]) and give the "
                     "normalisation, channels and size as train_transform / eval_transform")


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] -> [3, size, size] (antialiased)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return v2.functional.resize(x, [size, size], antialias=True)


class UnitImage:
    """The built-in transform: an image :func:`to_uint8_chw` reads -> float [3, size, size] in [0, 1];
    ``augmentation`` acts on the resized uint8 image."""

    def __init__(self, size: int, augmentation=None):
        self.size, self.augmentation = size, augmentation

    def __call__(self, image) -> torch.Tensor:
        x = resize_uint8(to_uint8_chw(image), self.size)
        if self.augmentation is not None:
            x = self.augmentation(x)
        return x.float().div_(255.0)


class ImageSubset(Dataset):
    """Items ``(transform(image), label)`` for ``indices`` of ``base``.

    ``transform`` takes the image as ``base`` gives it (PIL, array or tensor) and returns the model's
    input tensor; ``labels`` [len(indices)] replace the base labels (-1 = unlabelled).
    """

    def __init__(self, base: Dataset, indices: np.ndarray, labels: np.ndarray, transform):
        self.base, self.indices, self.labels = base, np.asarray(indices), np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.transform(item_image(self.base[int(self.indices[i])])), int(self.labels[i])


class TwoViewSubset(Dataset):
    """Items ``(weak view, strong view)`` of unlabelled images, both float [3, size, size] in [0, 1]."""

    def __init__(self, base: Dataset, indices: np.ndarray, size: int, weak, strong):
        self.base, self.indices, self.size, self.weak, self.strong = base, np.asarray(indices), size, weak, strong

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x = resize_uint8(to_uint8_chw(item_image(self.base[int(self.indices[i])])), self.size)
        return self.weak(x).float().div_(255.0), self.strong(x).float().div_(255.0)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Labels int64 [N] of ``dataset``: the second element of each item, as ``dataset[i]`` gives it.

    Items go through the dataset's ``target_transform`` like any training batch. Reading every item
    loads every image, so datasets whose labels are provably the items' labels are read without
    images: :class:`~ecos_lightning.data.ArrayImageDataset` (digits-lite),
    :class:`~ecos_lightning.data.PathImageDataset`, the ``wds:`` and ``litdata:`` pools (a litdata
    pool's labels are read once and cached), a ``TensorDataset`` of ``(images, labels [N])``, a
    torchvision ``DatasetFolder``/``ImageFolder`` without ``target_transform``, and a ``Subset`` of any
    of these.
    """
    if type(dataset).__getitem__ is Subset.__getitem__:
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    fast = _labels_without_images(dataset)
    if fast is not None:
        return np.asarray(fast.cpu() if isinstance(fast, torch.Tensor) else fast, dtype=np.int64)
    with torch.random.fork_rng(devices=[]):  # a random transform of the dataset's must not move the global stream
        return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def _labels_without_images(dataset: Dataset):
    """The labels of the datasets :func:`dataset_labels` reads without loading images, else None.

    A dataset qualifies by its item method (a subclass that overrides ``__getitem__`` does not).
    """
    getitem = type(dataset).__getitem__
    if getitem in (ArrayImageDataset.__getitem__, PathImageDataset.__getitem__, TarShardDataset.__getitem__,
                   LitDataImageDataset.__getitem__):
        return dataset.labels
    if getitem is TensorDataset.__getitem__ and len(dataset.tensors) >= 2 and dataset.tensors[1].ndim == 1:
        return dataset.tensors[1]
    if getitem is DatasetFolder.__getitem__ and dataset.target_transform is None:
        return dataset.targets
    return None


def dataset_domains(dataset: Dataset) -> np.ndarray | None:
    domains = getattr(dataset, "domains", None)
    return None if domains is None else np.asarray(domains, dtype=np.int64)


def fingerprint(dataset: Dataset, progress: bool = True) -> str:
    """A content hash of every image of ``dataset`` (the cache identity of its features and proxies).

    Datasets whose images are provably their stored data are hashed without decoding an image: the
    arrays of an :class:`~ecos_lightning.data.ArrayImageDataset` or a ``TensorDataset`` (every byte),
    the files of a :class:`~ecos_lightning.data.PathImageDataset`, of a torchvision ``DatasetFolder``
    without ``transform``, of WebDataset shards and of a litdata pool (each file's path and
    :func:`~ecos_lightning.files.file_stamp`, which any rewrite of the file changes), and a ``Subset``
    of any of these (its base and indices). Any other
    dataset is read item by item, every image hashed as the encoder receives it (with a progress bar
    when ``progress``; random transforms are seeded so the hash is stable): pass ``dataset_id`` to
    ``ProxyDataModule`` to name a large one instead.
    """
    digest = hashlib.sha256(f"{type(dataset).__name__}:{len(dataset)}".encode())
    fast = _stored_content(dataset)
    if fast is not None:
        digest.update(fast.encode())
        return digest.hexdigest()[:16]
    items = range(len(dataset))
    if progress and len(dataset) >= 1000:
        items = tqdm(items, desc="hashing dataset images", unit="img")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for i in items:
            image = to_uint8_chw(item_image(dataset[i]))
            digest.update(str(tuple(image.shape)).encode())
            digest.update(image.numpy().tobytes())
    return digest.hexdigest()[:16]


def _stored_content(dataset: Dataset) -> str | None:
    """A hash of the data that provably makes up ``dataset``'s images (see :func:`fingerprint`), else None."""
    getitem = type(dataset).__getitem__
    if getitem is Subset.__getitem__:
        base = _stored_content(dataset.dataset)
        indices = np.asarray(dataset.indices, dtype="<i8")
        return None if base is None else stable_hash([base, hashlib.sha256(indices.tobytes()).hexdigest()])
    if getitem is ArrayImageDataset.__getitem__:
        return matrix_digest(np.asarray(dataset.images))
    if getitem is TensorDataset.__getitem__ and dataset.tensors:
        return matrix_digest(dataset.tensors[0].detach().cpu().numpy())
    if getitem is PathImageDataset.__getitem__:
        return _file_stamps(dataset.paths)
    if getitem is TarShardDataset.__getitem__:
        return stable_hash([[str(p) for p in dataset.shards], dataset.stamps, matrix_digest(dataset.offsets)])
    if getitem is LitDataImageDataset.__getitem__:
        return stable_hash([str(dataset.root), dataset.stamps, dataset.image])
    if getitem is DatasetFolder.__getitem__ and dataset.transform is None:
        return stable_hash([getattr(dataset.loader, "__qualname__", repr(dataset.loader)),
                            _file_stamps(p for p, _ in dataset.samples)])
    return None


def _file_stamps(paths) -> str:
    """A hash of each file's absolute path and :func:`~ecos_lightning.files.file_stamp`, in order."""
    return stable_hash([(str(Path(p).resolve()), *file_stamp(p)) for p in paths])

