"""A litdata optimized dataset (the output folder of ``litdata.optimize``) as a map-style pool.

``litdata.StreamingDataset`` reads any item by its global index from the chunk files in place (a local,
uncompressed dataset is never copied or unpacked). An item is a dict, a tuple/list or a bare image; its
image is a PIL image, encoded bytes, a uint8 array [H, W(, C)] or a uint8 tensor [C, H, W] (what litdata's
JPEG serializer gives), served as an RGB PIL image; its label an int (-1: unlabelled). In a dict the image
is the field ``image=`` names, else the first of :data:`IMAGE_FIELDS`, the label the field ``label=``
names, else the first of :data:`LABEL_FIELDS` (none: unlabelled); in a tuple, positions 0 and 1 (or the
positions the options give). The layout is read from item 0.

``index.json`` is checked before any item is read: the layout ``litdata.optimize`` writes (chunks with
plain file names and integer counts, every chunk file whole, no compression or encryption, items built of
dicts, lists and tuples, one known serializer per field). A field stored with a serializer that unpickles
(:data:`PICKLE_SERIALIZERS`: unpickling runs code of the pool author's choice) is refused unless the
source allows it (``allow_pickle=true``); without it those serializers are replaced by ones that refuse
to read. litdata's image serializers decode an image only when its header declares at most
:data:`~.shards.MAX_PIXELS` pixels, and so does the reader for encoded image bytes.

A labelled pool's labels are read on first use (one pass over the items, which decodes what litdata's
serializers decode) and cached in the cache folder under the pool's data id; the data id itself hashes
``index.json`` and each chunk file's name and :func:`~ecos_lightning.files.file_stamp`, reading no item. A pool whose
files change after it was opened is an error when a process starts reading it.
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

from ..files import atomic_write_bytes, default_cache_dir, file_stamp, stable_hash
from .items import ItemInfo
from .shards import MAX_PIXELS, decode_image

#: Dict fields taken as the image, in order, when ``image=`` is not given.
IMAGE_FIELDS = ("image", "img", "jpg", "jpeg", "png", "webp")
#: Dict fields taken as the label, in order, when ``label=`` is not given.
LABEL_FIELDS = ("label", "class", "cls", "target")
#: litdata's serializers (``litdata.streaming.serializers._SERIALIZERS``) that unpickle what they read:
#: ``pickle``, and ``graph`` (its metadata, and the whole of its ``graph:pickle`` form).
PICKLE_SERIALIZERS = ("pickle", "graph")
#: The pytree nodes an item may be built of, dicts first (litdata's ``defaultdict`` node imports a module the
#: index names).
ITEM_NODES = ("builtins.dict", "collections.OrderedDict", "builtins.list", "builtins.tuple")
#: How deep an item's fields may nest.
MAX_DEPTH = 16


@dataclass(frozen=True)
class LitDataSource:
    """The litdata optimized dataset in the folder ``root``; ``image`` / ``label``: the item's image and
    label field (a dict key, or a position in a tuple item); None: found by name (see the module);
    ``allow_pickle``: read fields that litdata unpickles (only from a pool whose author you trust)."""

    root: Path
    image: str | None = None
    label: str | None = None
    allow_pickle: bool = False


class _Refused:
    """Stands in for a litdata serializer that unpickles: reading its field is an error."""

    def setup(self, metadata) -> None:
        self.format = metadata

    def deserialize(self, data):
        raise ValueError(f"a {self.format!r} field is unpickled only with allow_pickle=true")


class _PixelBound:
    """A litdata image serializer that decodes an image only when its header declares at most
    :data:`MAX_PIXELS` pixels (``pil``: width and height lead its bytes; the others: encoded images)."""

    def __init__(self, name: str, inner):
        self.name, self.inner = name, inner

    def setup(self, metadata) -> None:
        self.inner.setup(metadata)

    def deserialize(self, data):
        if self.name == "pil":
            width, height = (int(v) for v in np.frombuffer(bytes(data[:8]), np.uint32))
        else:
            with Image.open(io.BytesIO(bytes(data))) as image:
                width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"the image declares {width}x{height} pixels, above the limit of {MAX_PIXELS}")
        return self.inner.deserialize(data)


def _streaming(root: Path, stamps: list, allow_pickle: bool):
    """litdata's ``StreamingDataset`` of ``root`` with the module's serializers; ``ValueError`` when a file's
    (name, stamp) is no longer one of ``stamps``."""
    from litdata import StreamingDataset
    from litdata.streaming.serializers import _SERIALIZERS

    if _stamps(root, [name for name, _ in stamps]) != stamps:
        raise ValueError(f"litdata dataset {root} changed since the pool was opened: open the pool again")
    guarded = {name: _PixelBound(name, _SERIALIZERS[name]) for name in ("pil", "jpeg", "image")}
    refused = {} if allow_pickle else {name: _Refused() for name in PICKLE_SERIALIZERS}
    return StreamingDataset(str(root), serializers={**guarded, **refused})


def _read(stream, index: int, root: Path):
    """Item ``index`` of ``stream``; ``ValueError`` naming it for anything its serializers raise."""
    try:
        return stream[index]
    except Exception as exc:  # noqa: BLE001 - litdata's serializers raise many types on bad chunks
        raise ValueError(f"litdata dataset {root}: item {index} does not decode with the serializers "
                         f"{root / 'index.json'} names ({exc!r:.300}); optimize the dataset again") from None


def _serializer(data_format: str) -> str:
    """The serializer litdata reads a ``data_format`` entry with (``name`` or ``name:sub``, as its item
    loader resolves it: ``sub`` when that is a serializer's name)."""
    from litdata.streaming.serializers import _SERIALIZERS

    name, _, sub = data_format.partition(":")
    return sub if sub in _SERIALIZERS else name


class LitDataImageDataset(ItemInfo, Dataset):
    """Items ``(RGB PIL image, label)`` of the litdata dataset in ``root``, read by index.

    image, label: the item's image and label field (dict key or tuple position; label None =
    unlabelled). ``labels`` int64 [N] is read on first access (cached at ``labels_file``). stamps: each
    file's (name, file stamp) when the pool was opened, checked when a process starts reading. The
    ``StreamingDataset`` is built per process on first read and never pickled.
    """

    def __init__(self, root: Path, length: int, image, label, labels_file: Path | None, stamps: list,
                 allow_pickle: bool = False, progress: bool = True):
        self.root, self.length, self.image, self.label, self.labels_file = Path(root), length, image, label, labels_file
        self.progress, self.stamps, self.allow_pickle = progress, stamps, allow_pickle
        self._labels = np.full(length, -1, np.int64) if label is None else None
        self._set_info(length, None, (), ())
        self._stream, self._pid = None, None

    def __len__(self) -> int:
        return self.length

    def _item(self, index: int):
        if self._stream is None or self._pid != os.getpid():
            self._stream, self._pid = _streaming(self.root, self.stamps, self.allow_pickle), os.getpid()
        return _read(self._stream, index, self.root)

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
        return decode_image(bytes(value), where)
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


def _stamps(root: Path, names: list[str]) -> list | None:
    """(name, :func:`~ecos_lightning.files.file_stamp`) of each file ``names`` in ``root``; None when one is
    missing."""
    try:
        return [(name, file_stamp(root / name)) for name in names]
    except OSError:
        return None


def _bad(index: Path, what: str) -> ValueError:
    return ValueError(f"{index} is not a litdata index this reader takes: {what}; optimize the dataset again "
                      "(litdata.optimize, without compression)")


def _count(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _spec_fields(node, name: str = "", depth: int = 0) -> list[str]:
    """The names of the leaves of a ``data_spec`` node (``name``: the node's own, "" at the top);
    ``ValueError`` for a node that is not a container of :data:`ITEM_NODES` or a leaf."""
    if not isinstance(node, dict) or not isinstance(node.get("children_spec"), list) or depth > MAX_DEPTH:
        raise ValueError("a node is not a {type, context, children_spec} object (or nests too deep)")
    kind, children = node.get("type"), node["children_spec"]
    if kind is None and not children:
        return [name or "the item"]
    if kind not in ITEM_NODES:
        raise ValueError(f"a node of type {kind!r:.80} (items are built of {', '.join(ITEM_NODES)})")
    keys = json.loads(node["context"]) if kind in ITEM_NODES[:2] else list(range(len(children)))
    if not isinstance(keys, list) or len(keys) != len(children):
        raise ValueError("a dict node's keys do not match its children")
    return [leaf for key, child in zip(keys, children)
            for leaf in _spec_fields(child, f"{name}.{key}" if name else str(key), depth + 1)]


def read_index(text: bytes, index: Path) -> tuple[list[dict], list[str], list[str]]:
    """(chunks, data_format, the field each format reads) of ``text``, the litdata ``index.json`` file
    ``index``, checked as the module says; ``ValueError`` naming the file and what is wrong."""
    from litdata.streaming.serializers import _SERIALIZERS

    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _bad(index, f"it is not JSON ({exc})") from None
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict):
        raise _bad(index, "it has no 'config' object")
    chunks = data.get("chunks")
    if not isinstance(chunks, list) or not chunks:
        raise _bad(index, "its 'chunks' is not a list of chunks, or an empty one")
    for i, chunk in enumerate(chunks):
        name = chunk.get("filename") if isinstance(chunk, dict) else None
        if not (isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..")
                and _count(chunk.get("chunk_size"), 1) and _count(chunk.get("chunk_bytes"), 0)):
            raise _bad(index, f"chunk {i} is not a {{filename, chunk_size, chunk_bytes}} entry with a file name "
                              "in the folder and integer counts (chunk_size at least 1)")
    for key in ("compression", "compression_level", "encryption"):
        if config.get(key) is not None:
            raise _bad(index, f"its {key} is {config[key]!r:.80}, but only datasets without compression or "
                              "encryption are read in place")
    if config.get("item_loader", "PyTreeLoader") != "PyTreeLoader":
        raise _bad(index, f"its items are read by {config['item_loader']!r:.80}, not litdata's PyTreeLoader")
    formats = config.get("data_format")
    if not (isinstance(formats, list) and formats and all(
            isinstance(f, str) and f.count(":") <= 1 and _serializer(f) in _SERIALIZERS for f in formats)):
        raise _bad(index, f"its data_format {formats!r:.120} is not a list of litdata's serializers "
                          f"({', '.join(_SERIALIZERS)})")
    try:
        spec = json.loads(config.get("data_spec"))
        if not (isinstance(spec, list) and len(spec) == 2 and spec[0] == 1):
            raise ValueError("it is not a [1, node] pair")
        fields = _spec_fields(spec[1])
    except (ValueError, TypeError, RecursionError) as exc:
        raise _bad(index, f"its data_spec is not an item layout ({exc})") from None
    if len(fields) != len(formats):
        raise _bad(index, f"its data_spec has {len(fields)} fields but its data_format {len(formats)}")
    return chunks, formats, fields


@dataclass(frozen=True)
class OpenedLitData:
    """A litdata pool opened: the dataset and its data id."""

    dataset: LitDataImageDataset
    data_id: str


def open_litdata(source: LitDataSource, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> OpenedLitData:
    """The pool of ``source`` (``progress``: a bar while its labels are read): ``index.json`` checked
    (:func:`read_index`; a pickle-backed field refused unless ``source.allow_pickle``) before item 0 is read
    for the layout. ``FileNotFoundError`` names a missing ``index.json`` or chunk file, ``ValueError`` the
    file at fault otherwise."""
    root = Path(source.root).resolve()
    index = root / "index.json"
    if not index.is_file():
        raise FileNotFoundError(f"litdata dataset not found: {index} is missing (give the output_dir of "
                                "litdata.optimize)")
    first = _stamps(root, [index.name])
    text = index.read_bytes()
    chunks, formats, fields = read_index(text, index)
    pickled = [f"{field!r} ({fmt})" for field, fmt in zip(fields, formats) if _serializer(fmt) in PICKLE_SERIALIZERS]
    if pickled and not source.allow_pickle:
        raise ValueError(f"litdata dataset {root}: {index} stores the field(s) {', '.join(pickled)} with a serializer "
                         "that unpickles, which runs code of the pool author's choice: optimize the pool without "
                         f"object fields, or name it litdata:allow_pickle=true:{root} if you trust its author")
    for chunk in chunks:
        path = root / chunk["filename"]
        if not path.is_file():
            raise FileNotFoundError(f"litdata chunk {path} is missing (listed in {index})")
        if path.stat().st_size < chunk["chunk_bytes"]:
            raise ValueError(f"litdata chunk {path} is truncated: {path.stat().st_size} of the {chunk['chunk_bytes']} "
                             f"bytes {index} lists; optimize the dataset again")
    stamps = _stamps(root, [index.name] + [chunk["filename"] for chunk in chunks])
    if first is None or stamps is None or stamps[0] != first[0]:  # ``text`` is the index the stamps name
        raise ValueError(f"litdata dataset {root} changed while it was opened: open it again")
    digest = hashlib.sha256(text).hexdigest()
    data_id = f"litdata/{stable_hash(['litdata', str(root), digest, stamps, source.image, source.label])}"
    stream = _streaming(root, stamps, source.allow_pickle)
    image, label = _fields(_read(stream, 0, root), source, root)
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    labels_file = cache / f"litdata-labels-{stable_hash(data_id)}.npy"
    return OpenedLitData(LitDataImageDataset(root, len(stream), image, label, labels_file, stamps,
                                             source.allow_pickle, progress), data_id)
