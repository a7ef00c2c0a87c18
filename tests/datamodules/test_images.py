"""Dataset identities: every image counts, whatever the dataset type."""

import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset

from ecos_lightning.data import ArrayImageDataset, PathImageDataset
from ecos_lightning.datamodules import ProxyDataModule
from ecos_lightning.datamodules.images import fingerprint


class ListImages(Dataset):
    """A dataset of the user's own: uint8 HWC images from a list (no fast path applies)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _pool(n=60, seed=0):
    rng = np.random.default_rng(seed)
    images = [np.full((8, 8, 3), 40 * (i % 5), np.uint8) + rng.integers(0, 20, (8, 8, 3), dtype=np.uint8)
              for i in range(n)]
    return images, np.arange(n) % 3


def _noise_except_ends(images):
    """Every image but the first, middle and last replaced by noise (what a three-image hash missed)."""
    rng = np.random.default_rng(1)
    kept = {0, len(images) // 2, len(images) - 1}
    return [im if i in kept else rng.integers(0, 255, im.shape, dtype=np.uint8) for i, im in enumerate(images)]


def test_every_image_of_a_custom_dataset_counts():
    images, labels = _pool()
    base = fingerprint(ListImages(images, labels))
    assert fingerprint(ListImages(list(images), labels)) == base
    changed = list(images)
    changed[7] = changed[7].copy()
    changed[7][0, 0, 0] ^= 1  # one bit of one image
    assert fingerprint(ListImages(changed, labels)) != base
    assert fingerprint(ListImages(_noise_except_ends(images), labels)) != base


def test_fast_paths_see_every_byte_of_arrays_and_subsets():
    images, labels = _pool()
    stack = np.stack(images)
    array = ArrayImageDataset(stack, labels)
    edited = stack.copy()
    edited[31, 4, 4, 1] ^= 1
    assert fingerprint(ArrayImageDataset(edited, labels)) != fingerprint(array)
    tensors = TensorDataset(torch.from_numpy(stack), torch.from_numpy(labels))
    assert fingerprint(TensorDataset(torch.from_numpy(edited), torch.from_numpy(labels))) != fingerprint(tensors)
    assert fingerprint(Subset(array, [1, 2])) != fingerprint(Subset(array, [1, 3]))
    assert fingerprint(Subset(array, [1, 2])) == fingerprint(Subset(ArrayImageDataset(stack.copy(), labels), [1, 2]))


def test_a_rewritten_image_file_with_its_mtime_restored_changes_the_identity(tmp_path):
    paths = []
    for i, image in enumerate(_pool(6)[0]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    before = fingerprint(PathImageDataset(paths))
    stat = os.stat(paths[2])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(paths[2])  # a rewrite ...
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... with its modification time put back
    assert fingerprint(PathImageDataset(paths)) != before


def test_a_changed_pool_gets_a_new_proxy(tmp_path):
    """The pool changes behind three kept images: new features and a new artifact, never the old proxy."""
    images, labels = _pool()
    client = ListImages(images[:20], labels[:20])

    def module(pool_images):
        return ProxyDataModule(open_dataset=ListImages(pool_images, labels), client_dataset=client,
                               encoder_input_size=32, num_clusters=3, budget=10, noise_multiplier=0.0,
                               cache_dir=str(tmp_path), num_workers=0)

    first = module(images)
    first.proxy_indices()
    changed = module(_noise_except_ends(images))
    assert changed.feature_ids()[0] != first.feature_ids()[0]
    assert changed.artifact_path() != first.artifact_path()
    changed.proxy_indices()
    assert len(list(tmp_path.glob("proxy-*.json"))) == 2

