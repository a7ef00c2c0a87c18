"""Image folders: every file PIL can decode, nested folders included, and the dataset over image paths.

Three layouts: any folder of images (unlabelled, :func:`scan_images`), one folder per class
(``<root>/<class>/<file>``, :func:`scan_labelled_images`) and one folder per domain of class folders
(``<root>/<domain>/<class>/<file>``, :func:`scan_domain_folders`, e.g. Office-Caltech10). A folder is
scanned once (each candidate file decoded) to learn which images are readable; corrupt or unreadable
files are skipped and counted. :class:`PathImageDataset` then serves the readable ones as ``(RGB PIL
image, label)`` items.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from .items import ItemInfo

#: File suffixes (lower case) of every format PIL can open.
IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


@dataclass(frozen=True)
class ImageScan:
    """Readable images of a folder. paths: sorted by relative path; labels: class index of each
    path (labelled scans only); skipped: files with an image suffix that PIL could not decode."""

    root: Path
    paths: list[Path]
    skipped: list[Path]
    labels: list[int] | None = None
    class_names: list[str] | None = None

    def summary(self) -> str:
        return f"{len(self.paths)} images in {self.root}" + (
            f" ({len(self.skipped)} corrupt or unreadable skipped)" if self.skipped else "")


class PathImageDataset(ItemInfo, Dataset):
    """Items ``(RGB PIL image, label)`` read from the image files ``paths``, in order.

    ``labels`` [N]: the label of each path (int64); None = unlabelled (every label -1).
    ``domains``, ``domain_names``, ``class_names``: see :class:`~ecos_lightning.data.items.ItemInfo`.
    """

    def __init__(self, paths: list[str | os.PathLike], labels: list[int] | None = None, domains=None,
                 domain_names: tuple[str, ...] = (), class_names: tuple[str, ...] = ()):
        self.paths = list(paths)
        self.labels = np.asarray([-1] * len(self.paths) if labels is None else labels, dtype=np.int64)
        if self.labels.shape != (len(self.paths),):
            raise ValueError(f"labels must have shape ({len(self.paths)},), one per path, got {self.labels.shape}")
        self._set_info(len(self.paths), domains, domain_names, class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return _load(self.paths[index]), int(self.labels[index])

    def subset(self, indices: np.ndarray) -> "PathImageDataset":
        """The items at ``indices`` (int [M]), in that order, with their domains and the class names."""
        indices = np.asarray(indices, dtype=np.int64)
        return PathImageDataset([self.paths[i] for i in indices], self.labels[indices],
                                None if self.domains is None else self.domains[indices], self.domain_names,
                                self.class_names)


def scan_images(root: str | os.PathLike, progress: bool = True) -> ImageScan:
    """Every readable image under ``root`` (recursively); ``ValueError`` when there is none."""
    root = _folder(root)
    paths, skipped = _readable(_image_files(root), f"reading {root}", progress)
    if not paths:
        raise ValueError(f"no readable image in {root} ({len(skipped)} corrupt or unreadable files skipped)")
    return ImageScan(root, paths, skipped)


def scan_labelled_images(root: str | os.PathLike, progress: bool = True) -> ImageScan:
    """An ImageFolder layout: one sub-folder per class (sorted names = label order), images below it."""
    root = _folder(root)
    classes = _subfolders(root)
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected <root>/<class name>/<images>)")
    files, labels = _class_files(root, classes)
    paths, skipped = _readable(files, f"reading {root}", progress)
    if not paths:
        raise ValueError(f"no readable image in {root} ({len(skipped)} corrupt or unreadable files skipped)")
    label_of = dict(zip(files, labels))
    return ImageScan(root, paths, skipped, [label_of[p] for p in paths], classes)


@dataclass(frozen=True)
class DomainScan:
    """Readable images of a ``<root>/<domain>/<class>/<file>`` tree, sorted by (domain, class, path).

    labels, domains: int [N] per path, indexing ``class_names`` (the sorted union of every domain's
    class folders, so a label means the same class in every domain) and ``domain_names``.
    """

    root: Path
    paths: list[Path]
    labels: np.ndarray
    domains: np.ndarray
    domain_names: tuple[str, ...]
    class_names: tuple[str, ...]
    skipped: list[Path]


def scan_domain_folders(root: str | os.PathLike, domains: tuple[str, ...] | None = None,
                        progress: bool = True) -> DomainScan:
    """One folder per domain (sorted names, or ``domains`` in that order), each of class folders.

    A domain folder whose only sub-folder is ``images`` (the Office-31 layout) is read through it.
    ``FileNotFoundError`` names a missing domain folder; ``ValueError`` a domain without readable images.
    """
    root = _folder(root)
    names = tuple(domains) if domains else tuple(_subfolders(root))
    if not names:
        raise ValueError(f"{root} has no domain sub-folders (expected <root>/<domain>/<class name>/<images>)")
    folders = []
    for name in names:
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"domain folder {name!r} not found in {root}: expected {folder}/<class name>/"
                                    "<images>")
        folders.append(folder / "images" if _subfolders(folder) == ["images"] else folder)
    classes = sorted({c for folder in folders for c in _subfolders(folder)})
    paths, labels, domain_ids, skipped = [], [], [], []
    for d, (name, folder) in enumerate(zip(names, folders)):
        files, file_labels = _class_files(folder, [c for c in classes if (folder / c).is_dir()], classes)
        readable, bad = _readable(files, f"reading {name}", progress)
        if not readable:
            raise ValueError(f"no readable image in domain folder {folder} (expected <class name>/<images> below "
                             f"it; {len(bad)} corrupt or unreadable files skipped)")
        label_of = dict(zip(files, file_labels))
        paths += readable
        labels += [label_of[p] for p in readable]
        domain_ids += [d] * len(readable)
        skipped += bad
    return DomainScan(root, paths, np.asarray(labels, np.int64), np.asarray(domain_ids, np.int64), names,
                      tuple(classes), skipped)


def _subfolders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_files(root: Path, classes: list[str], label_order: list[str] | None = None
                 ) -> tuple[list[Path], list[int]]:
    """Image files under ``root/<class>`` for each class, and each file's index in ``label_order`` (default
    ``classes``)."""
    order = {name: i for i, name in enumerate(label_order or classes)}
    files, labels = [], []
    for name in classes:
        found = _image_files(root / name)
        files += found
        labels += [order[name]] * len(found)
    return files, labels


def _folder(root) -> Path:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    return root


def _image_files(root: Path) -> list[Path]:
    """Files under ``root`` with an image suffix, sorted; an unreadable folder raises ``PermissionError``."""
    def fail(exc: OSError):
        raise PermissionError(f"cannot read folder {exc.filename}: {exc.strerror}")

    found = []
    for folder, dirs, files in os.walk(root, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder, f) for f in files
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _readable(files: list[Path], desc: str, progress: bool) -> tuple[list[Path], list[Path]]:
    paths, skipped = [], []
    for path in tqdm(files, desc=desc, unit="img", disable=not progress):
        try:
            _load(path)
            paths.append(path)
        except Exception:  # noqa: BLE001 - PIL raises many types on corrupt data: all mean "skip"
            skipped.append(path)
    return paths, skipped


def _load(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
