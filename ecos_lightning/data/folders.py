"""Image folders: every file PIL can decode, nested folders included, and the dataset over image paths.

A folder is scanned once (each candidate file decoded) to learn which images are readable;
corrupt or unreadable files are skipped and counted. :class:`PathImageDataset` then serves the
readable ones as ``(RGB PIL image, label)`` items.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

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


class PathImageDataset(Dataset):
    """Items ``(RGB PIL image, label)`` read from the image files ``paths``, in order.

    ``labels`` [N]: the label of each path (int64); None = unlabelled (every label -1).
    """

    def __init__(self, paths: list[str | os.PathLike], labels: list[int] | None = None):
        self.paths = list(paths)
        self.labels = np.asarray([-1] * len(self.paths) if labels is None else labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return _load(self.paths[index]), int(self.labels[index])


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
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected <root>/<class name>/<images>)")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = _image_files(root / name)
        files += found
        labels += [label] * len(found)
    paths, skipped = _readable(files, f"reading {root}", progress)
    if not paths:
        raise ValueError(f"no readable image in {root} ({len(skipped)} corrupt or unreadable files skipped)")
    label_of = dict(zip(files, labels))
    return ImageScan(root, paths, skipped, [label_of[p] for p in paths], classes)


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
