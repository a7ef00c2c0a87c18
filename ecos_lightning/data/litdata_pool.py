"""A litdata optimized dataset (the output folder of ``litdata.optimize``) as a map-style pool.

``litdata.StreamingDataset`` reads any item by its global index from the chunk files in place (a local,
uncompressed dataset is never copied or unpacked). An item is a dict, a tuple/list or a bare image; its
image is a PIL image, encoded bytes, a uint8 array [H, W(, C)] or a uint8 tensor [C, H, W] (what litdata's
JPEG serializer gives), served as an RGB PIL image; its label an int (-1: unlabelled). In a dict the image
is the field ``image=`` names, else the first of :data:`IMAGE_FIELDS`, the label the field ``label=``
names, else the first of :data:`LABEL_FIELDS` (none: unlabelled); in a tuple, positions 0 and 1 (or the
positions the options give). The layout is read from item 0.

A labelled pool's labels are read on first use (one pass over the items, which decodes what litdata's
serializers decode) and cached in the cache folder under the pool's data id; the data id itself hashes
``index.json`` and each chunk file's name, size and modification time, reading no item.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from ..files import atomic_write_bytes, default_cache_dir, stable_hash
from .folders import _load
from .items import ItemInfo

#: Dict fields taken as the image, in order, when ``image=`` is not given.
IMAGE_FIELDS = ("image", "img", "jpg", "jpeg", "png", "webp")
#: Dict fields taken as the label, in order, when ``label=`` is not given.
LABEL_FIELDS = ("label", "class", "cls", "target")


@dataclass(frozen=True)
class LitDataSource:
    """The litdata optimized dataset in the folder ``root``; ``image`` / ``label``: the item's image and
    label field (a dict key, or a position in a tuple item); None: found by name (see the module)."""

    root: Path
    image: str | None = None
    label: str | None = None


def _streaming(root: Path):
    from litdata import StreamingDataset

    return StreamingDataset(str(root))


class LitDataImageDataset(ItemInfo, Dataset):
    """Items ``(RGB PIL image, label)`` of the litdata dataset in ``root``, read by index.

    image, label: the item's image and label field (dict key or tuple position; label None =
    unlabelled). ``labels`` int64 [N] is read on first access (cached at ``labels_file``). The
    ``StreamingDataset`` is built per process on first read and never pickled.
    """

    def __init__(self, root: Path, length: int, image, label, labels_file: Path | None, progress: bool = True):
        self.root, self.length, self.image, self.label, self.labels_file = Path(root), length, image, label, labels_file
        self.progress = progress
        self._labels = np.full(length, -1, np.int64) if label is None else None
        self._set_info(length, None, (), ())
        self._stream, self._pid = None, None

    def __len__(self) -> int:
        return self.length

    def _item(self, index: int):
        if self._stream is None or self._pid != os.getpid():
            self._stream, self._pid = _streaming(self.root), os.getpid()
        return self._stream[index]

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        index = int(index)
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} is out of range for a pool of {self.length} items")
        index %= self.length
        item = self._item(index)
        image = _as_rgb(item[self.image] if self.image is not None else item, f"{self.root} item {index}")
        return image, -1 if self.label is None else _as_label(item[self.label], f"{self.root} item {index}")

    @property
    def labels(self) -> np.ndarray:
        """Every item's label, int64 [N] (-1 unlabelled)."""
        if self._labels is None:
            self._labels = self._read_labels()
        return self._labels

    def _read_labels(self) -> np.ndarray:
        if self.labels_file is not None:
            try:
                labels = np.load(self.labels_file, allow_pickle=False)
                if labels.shape == (self.length,) and labels.dtype == np.int64:
                    return labels
            except (OSError, ValueError):
                pass
        labels = np.asarray([_as_label(self._item(i)[self.label], f"{self.root} item {i}")
                             for i in tqdm(range(self.length), desc=f"labels of {self.root}", unit="item",
                                           disable=not self.progress)], np.int64)
        if self.labels_file is not None:
            buffer = io.BytesIO()
            np.save(buffer, labels, allow_pickle=False)
            atomic_write_bytes(self.labels_file, buffer.getvalue())
        return labels

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_stream": None, "_pid": None}


def _as_rgb(value, where: str) -> Image.Image:
    """An item's image as an RGB PIL image; ``ValueError`` naming ``where`` for anything else."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return _load(io.BytesIO(bytes(value)))
        except Exception as exc:  # noqa: BLE001 - PIL raises many types on corrupt data
            raise ValueError(f"{where}: its image bytes are not a readable image ({exc})") from None
    if isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.ndim == 3 and \
            value.shape[0] in (1, 3, 4):
        value = value.permute(1, 2, 0).numpy()
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and (
            value.ndim == 2 or (value.ndim == 3 and value.shape[2] in (1, 3, 4))):
        return Image.fromarray(value.squeeze(2) if value.ndim == 3 and value.shape[2] == 1 else value).convert("RGB")
    raise ValueError(f"{where}: the image is a {type(value).__name__} "
                     f"{getattr(value, 'dtype', '')} {list(getattr(value, 'shape', []))}, not a PIL image, encoded "
                     "bytes, a uint8 [H, W(, C)] array or a uint8 [C, H, W] tensor")


def _as_label(value, where: str) -> int:
    if isinstance(value, (torch.Tensor, np.ndarray)) and int(np.prod(value.shape)) == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < -1:
        raise ValueError(f"{where}: the label {value!r} is not an integer >= -1 (-1 = unlabelled)")
    return int(value)


def _fields(item, source: LitDataSource, root: Path):
    """(image field, label field or None) of an item's layout; ``ValueError`` naming what it holds."""
    if isinstance(item, dict):
        for kind, option in (("image", source.image), ("label", source.label)):
            if option is not None and option not in item:
                raise ValueError(f"litdata dataset {root}: its items have no field {option!r} (given as {kind}=); "
                                 f"their fields are {list(item)}")
        image = source.image or next((f for f in IMAGE_FIELDS if f in item), None)
        if image is None:
            raise ValueError(f"litdata dataset {root}: its items have the fields {list(item)}, none of "
                             f"{list(IMAGE_FIELDS)}: name the image field with image=<field>")
        return image, source.label or next((f for f in LABEL_FIELDS if f in item), None)
    if isinstance(item, (tuple, list)):
        for kind, option in (("image", source.image), ("label", source.label)):
            if option is not None and (not option.isdecimal() or int(option) >= len(item)):
                raise ValueError(f"litdata dataset {root}: its items are {len(item)}-tuples, so {kind}= takes a "
                                 f"position below {len(item)}, not {option!r}")
        image = int(source.image or 0)
        labelled = len(item) > 1 and isinstance(item[1], (int, np.integer)) and not isinstance(item[1], bool)
        default = 1 if labelled else None
        return image, int(source.label) if source.label else default
    if source.image or source.label:
        raise ValueError(f"litdata dataset {root}: its items are bare {type(item).__name__} values, without the "
                         "fields image= and label= name")
    return None, None


@dataclass(frozen=True)
class OpenedLitData:
    """A litdata pool opened: the dataset and its data id."""

    dataset: LitDataImageDataset
    data_id: str


def open_litdata(source: LitDataSource, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> OpenedLitData:
    """The pool of ``source`` (``progress``: a bar while its labels are read); ``FileNotFoundError`` names a
    missing ``index.json`` or chunk file."""
    root = Path(source.root).resolve()
    index = root / "index.json"
    if not index.is_file():
        raise FileNotFoundError(f"litdata dataset not found: {index} is missing (give the output_dir of "
                                "litdata.optimize)")
    text = index.read_bytes()
    try:
        chunks = [c["filename"] for c in json.loads(text)["chunks"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{index} is not a litdata index ({exc!r}): optimize the dataset again") from None
    stamps = []
    for name in chunks:
        chunk = root / name
        if not chunk.is_file():
            raise FileNotFoundError(f"litdata chunk {chunk} is missing (listed in {index})")
        stamps.append((name, chunk.stat().st_size, chunk.stat().st_mtime_ns))
    digest = hashlib.sha256(text).hexdigest()
    data_id = f"litdata/{stable_hash(['litdata', str(root), digest, stamps, source.image, source.label])}"
    stream = _streaming(root)
    if not len(stream):
        raise ValueError(f"litdata dataset {root} holds no item")
    image, label = _fields(stream[0], source, root)
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    labels_file = cache / f"litdata-labels-{stable_hash(data_id)}.npy"
    return OpenedLitData(LitDataImageDataset(root, len(stream), image, label, labels_file, progress), data_id)
