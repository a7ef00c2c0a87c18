"""Datasets' per-item knowledge besides images and labels (each item's domain, the class names), the
in-memory image dataset, and what a reader of a published dataset gives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset


class ItemInfo:
    """Per-item domains and class names of a dataset (a mixin).

    domains: int64 [N], indices into ``domain_names``; None when unknown (an unlabelled folder).
    class_names: the name of each label, in label order; () when unknown.
    """

    domains: np.ndarray | None
    domain_names: tuple[str, ...]
    class_names: tuple[str, ...]

    def _set_info(self, n: int, domains: Sequence[int] | np.ndarray | None, domain_names: Sequence[str],
                  class_names: Sequence[str]) -> None:
        if domains is not None:
            domains = np.asarray(domains, dtype=np.int64)
            if domains.shape != (n,):
                raise ValueError(f"domains must have shape ({n},), one per item, got {domains.shape}")
            if n and (domains.min() < 0 or domains.max() >= len(domain_names)):
                raise ValueError(f"domains must index domain_names ({len(domain_names)} names)")
        self.domains, self.domain_names, self.class_names = domains, tuple(domain_names), tuple(class_names)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``; 0 when unknown)."""
        return len(self.class_names)

    def domain_counts(self) -> dict[str, int]:
        """Items per domain name (every domain, zeros included); {} when domains are unknown."""
        if self.domains is None:
            return {}
        counts = np.bincount(self.domains, minlength=len(self.domain_names))
        return {name: int(c) for name, c in zip(self.domain_names, counts)}


class ArrayImageDataset(ItemInfo, Dataset):
    """(image uint8 [H, W, 3], label int) items from in-memory arrays: ``images`` [N, H, W, 3], ``labels`` [N];
    ``domains``, ``domain_names``, ``class_names``: see :class:`ItemInfo`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, domains: np.ndarray | None = None,
                 domain_names: tuple[str, ...] = (), class_names: tuple[str, ...] = ()):
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        if self.labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), one per image, got {self.labels.shape}")
        self._set_info(len(images), domains, domain_names, class_names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])

    def subset(self, indices: np.ndarray) -> "ArrayImageDataset":
        """The items at ``indices`` (int [M]), in that order, with their domains and the class names."""
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayImageDataset(self.images[indices], self.labels[indices],
                                 None if self.domains is None else self.domains[indices], self.domain_names,
                                 self.class_names)


@dataclass(frozen=True)
class ReadData:
    """Every item of a published dataset as its reader found it on disk.

    items: an ArrayImageDataset or a PathImageDataset with domains and class names.
    test_mask: bool [N], True for the items of each domain's official test split (None: no official split).
    files: the files that define the data: their sizes and modification times identify it.
    """

    items: Dataset
    test_mask: np.ndarray | None
    files: tuple[Path, ...]
