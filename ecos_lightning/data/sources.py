"""Data sources by name: the one parser of source names and the one place that opens them.

A source name is

``digits-lite[:<client domain>[:<split seed>]]``
    the embedded digits-lite dataset, split for that client domain (default ``handwritten``) with
    that split seed (default 0): an open pool, the client's training data and its test data;
<an image folder>
    every readable image under the folder (nested folders included): an open pool only.

:func:`parse_source` turns a name into a :class:`DigitsLiteSource` or a :class:`FolderSource`;
:func:`open_source` gives the datasets of either as a :class:`SourceData`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..files import stable_hash
from .digits_lite import DOMAINS, load_digits_lite
from .folders import PathImageDataset, scan_images
from .splits import paper_split

__all__ = [
    "DIGITS_LITE",
    "ArrayImageDataset",
    "DigitsLiteSource",
    "FolderSource",
    "SourceData",
    "digits_lite_sources",
    "open_source",
    "parse_source",
]

DIGITS_LITE = "digits-lite"


@dataclass(frozen=True)
class DigitsLiteSource:
    """digits-lite split for the client domain ``domain`` with split seed ``seed``."""

    domain: str = "handwritten"
    seed: int = 0


@dataclass(frozen=True)
class FolderSource:
    """The images under the folder ``root``."""

    root: Path


def parse_source(name: str) -> DigitsLiteSource | FolderSource:
    """The source a name gives (see the module docstring); ``ValueError`` for a malformed digits-lite name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a source name must be a non-empty string, got {name!r}")
    if name != DIGITS_LITE and not name.startswith(DIGITS_LITE + ":"):
        return FolderSource(Path(name))
    if name == DIGITS_LITE:
        return DigitsLiteSource()
    domain, _, seed = name[len(DIGITS_LITE) + 1:].partition(":")
    if seed and not seed.isdecimal():
        raise ValueError(f"source {name!r}: the split seed after the domain must be a non-negative integer")
    return DigitsLiteSource(domain, int(seed or 0))


class ArrayImageDataset(Dataset):
    """(image uint8 [H, W, 3], label int) items from in-memory arrays; ``domains`` [N] when known."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, domains: np.ndarray | None = None,
                 domain_names: tuple[str, ...] = ()):
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.domains, self.domain_names = domains, tuple(domain_names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


@dataclass(frozen=True)
class SourceData:
    """The datasets of a source.

    open: the open pool. client, client_test: the client's training and test data (None for a folder).
    data_id: what identifies the data (a key of the features cache).
    root, paths: for a folder, its absolute path and the pool's image paths relative to it (POSIX).
    skipped: for a folder, the files with an image suffix that could not be decoded.
    """

    open: Dataset
    client: Dataset | None
    client_test: Dataset | None
    data_id: str
    root: str | None = None
    paths: list[str] | None = None
    skipped: list[Path] = field(default_factory=list)


def digits_lite_sources(client_domain: str = "handwritten", seed: int = 0, cache_dir=None) -> SourceData:
    """Open pool, client train and client test datasets of digits-lite for ``client_domain``."""
    data = load_digits_lite(cache_dir, seed=0)
    split = paper_split(data.domains, data.labels, client_domain, seed=seed)

    def part(indices):
        return ArrayImageDataset(data.images[indices], data.labels[indices], data.domains[indices], DOMAINS)

    return SourceData(part(split.open_indices), part(split.client_train_indices),
                      part(split.client_test_indices), f"digits-lite-v1/{client_domain}/split-seed{seed}")


def open_source(source: DigitsLiteSource | FolderSource, cache_dir: str | os.PathLike | None = None,
                progress: bool = True) -> SourceData:
    """The datasets of ``source``; ``cache_dir`` holds the generated digits-lite (default: the cache folder).

    A folder is scanned (every candidate image decoded once, with a progress bar when ``progress``);
    its ``data_id`` hashes its absolute path and each image's relative path, size and modification time.
    """
    if isinstance(source, DigitsLiteSource):
        return digits_lite_sources(source.domain, source.seed, cache_dir)
    if not isinstance(source, FolderSource):
        raise TypeError(f"source must be a DigitsLiteSource or a FolderSource, got {type(source).__name__}")
    scan = scan_images(source.root, progress)
    root = str(scan.root.resolve())
    paths = [p.relative_to(scan.root).as_posix() for p in scan.paths]
    files = [(p, f.stat().st_size, f.stat().st_mtime_ns) for p, f in zip(paths, scan.paths)]
    return SourceData(PathImageDataset(scan.paths), None, None, stable_hash([root, files]), root, paths, scan.skipped)
