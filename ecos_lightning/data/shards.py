"""WebDataset tar shards as a map-style pool: every sample read by index, one seek, the pool never unpacked.

A WebDataset pool is a list of uncompressed ``.tar`` shards whose members are grouped into samples by
WebDataset's rule (``webdataset.tariterators.group_by_keys`` with ``base_plus_ext``): consecutive members
sharing the path up to the first dot of the basename form one sample, keyed by that path; the rest of the
name is the member's extension (lower case). A sample's image is its first member with an image extension
(``jpg``, ``jpeg``, ``png``, ``webp``, then WebDataset's other image extensions; or the one named by
``image=``), its class the integer in its ``cls`` member (or the one ``label=`` names), decoded as
WebDataset's ``basichandlers`` do (a class id is below 2**31); a sample without a class is unlabelled (-1),
one without an image is skipped and reported. An image is decoded only when its header declares at most
:data:`MAX_PIXELS` pixels (a JPEG above it is decoded at a power-of-two scale within it).

WebDataset itself streams shards sequentially and has no random access, but training on a proxy reads a
few scattered samples of a huge pool. So each shard is indexed once, by hand: :mod:`tarfile` walks the
member headers (seeking past the data, never reading an image) and records each sample's key and its
image's byte offset (``TarInfo.offset_data``) and size; a sample is then one ``os.pread`` and a PIL
decode. An index is cached in ``<cache dir>/wds-index/`` under a hash of the shard's absolute path and
:func:`~ecos_lightning.files.file_stamp` (size, modification and change time, inode; and the
``image``/``label`` choice): rewriting a shard changes its change time even when its modification time is
set back, so a rewritten shard is indexed again, and a shard that changes once indexed is an error when it
is read. Nothing is written beside the user's data. Extraction reads samples in index order, so reads run
through each shard sequentially (the OS's read-ahead streams it).
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import re
import tarfile
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm
from webdataset.autodecode import IMAGE_EXTENSIONS, basichandlers
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, meta_prefix, meta_suffix

from ..files import atomic_write_bytes, default_cache_dir, file_stamp, stable_hash
from .items import ItemInfo

#: Image extensions in the order a sample's image is chosen when it has several.
IMAGE_ORDER = ("jpg", "jpeg", "png", "webp") + tuple(e for e in IMAGE_EXTENSIONS
                                                      if e not in ("jpg", "jpeg", "png", "webp"))
#: Bumped when the cached index format changes.
INDEX_VERSION = 1
#: Shards to index at least before the indexing runs in processes, and how many processes.
PARALLEL_SHARDS = 16
INDEX_PROCESSES = max(1, min(32, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                            os.cpu_count() or 1))
#: Shards a process keeps open at once (least recently used closed first).
MAX_OPEN_SHARDS = 64
#: Class ids lie below this; a class member holds at most this many bytes.
MAX_CLASS, MAX_CLASS_BYTES = 2 ** 31, 32
#: The most pixels an image may declare to be decoded (4096 x 4096).
MAX_PIXELS = 1 << 24
#: Bytes of end-of-archive zero blocks a tar ends with (POSIX: two 512-byte blocks).
END_BLOCKS = 1024
# webdataset's tar_file_iterator skips these member names (its default ``skip_meta``)
_SKIP_META = re.compile(r"__[^/]*__($|/)")


@dataclass(frozen=True)
class WebDatasetSource:
    """WebDataset shards: ``root`` a folder of ``.tar`` files, one ``.tar``, or a brace pattern
    (``/data/pool-{000000..000099}.tar``, expanded as WebDataset does); ``image`` / ``label`` the
    extensions of a sample's image and class members (None: the first image extension found, ``cls``)."""

    root: str
    image: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class ShardIndex:
    """One shard's samples in member order: keys [M] str, offsets and sizes [M] int64 (the image member's
    data bytes), labels [M] int64 (-1: no class member); skipped: keys of samples without an image."""

    keys: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray
    skipped: np.ndarray


def shard_files(root: str) -> list[Path]:
    """The shards ``root`` names: a folder's ``*.tar`` files (sorted by name), one file, or a brace
    pattern's expansion (in its order). ``FileNotFoundError`` names a missing shard or folder."""
    given = Path(root)
    if given.is_dir():
        shards = sorted(p for p in given.iterdir() if p.suffix == ".tar" and p.is_file())
        if not shards:
            raise FileNotFoundError(f"no .tar shards in the folder {root} (a WebDataset pool is a folder of .tar "
                                    "files, one .tar, or a brace pattern such as pool-{000000..000099}.tar)")
        return shards
    if given.is_file():
        return [given]
    if "{" not in root:
        raise FileNotFoundError(f"WebDataset shards not found: {root} (give a folder of .tar files, one .tar, or a "
                                "brace pattern such as /data/pool-{000000..000099}.tar)")
    shards = [Path(p) for p in expand_urls(root)]
    for shard in shards:
        if not shard.is_file():
            raise FileNotFoundError(f"shard {shard} not found (from the pattern {root})")
    return shards


def index_shard(path: str | os.PathLike, image: str | None = None, label: str | None = None) -> ShardIndex:
    """Index one uncompressed tar shard by its member headers (no image is read); a class member's few
    bytes are read. ``ValueError`` for a file that is not an uncompressed tar, a truncated one (its end-of-
    archive blocks included), a member name repeated within a sample or a class that is not an integer in
    [0, 2**31), naming the shard."""
    path = Path(path)
    size = path.stat().st_size
    members = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isreg() or _skipped_name(info.name):
                    continue
                if info.offset_data + info.size > size:
                    raise ValueError(f"shard {path} is truncated: member {info.name!r} ends at byte "
                                     f"{info.offset_data + info.size} of {size}; write the shard again")
                members.append({"fname": info.name, "data": (info.offset_data, info.size), "__url__": str(path)})
            end = tar.offset
    except tarfile.TarError as exc:
        raise ValueError(f"shard {path} is not a readable uncompressed tar file ({exc}); WebDataset pools are read "
                         "by random access, so give plain .tar shards (not .tar.gz)") from None
    try:
        samples = list(group_by_keys(iter(members)))
    except ValueError as exc:
        raise ValueError(f"shard {path}: {exc.args[0]}") from None
    image, label = (image or "").lower() or None, (label or "cls").lower()
    keys, offsets, sizes, labels, skipped = [], [], [], [], []
    with open(path, "rb") as handle:
        _check_end(handle, end, size, path)
        for sample in samples:
            ext = image if image is not None else next((e for e in IMAGE_ORDER if e in sample), None)
            if ext not in sample:
                skipped.append(sample["__key__"])
                continue
            keys.append(sample["__key__"])
            offsets.append(sample[ext][0])
            sizes.append(sample[ext][1])
            labels.append(_label(handle, sample, label, path))
    return ShardIndex(np.asarray(keys, dtype=np.str_), np.asarray(offsets, np.int64), np.asarray(sizes, np.int64),
                      np.asarray(labels, np.int64), np.asarray(skipped, dtype=np.str_))


def _skipped_name(name: str) -> bool:
    """Whether WebDataset's tar iterator skips a member of this name (metadata such as ``__index__``)."""
    return ("/" not in name and name.startswith(meta_prefix) and name.endswith(meta_suffix)) or bool(
        _SKIP_META.match(name))


def _check_end(handle, end: int, size: int, path: Path) -> None:
    """Refuse a shard whose member headers stop before its end or that lacks its end-of-archive blocks:
    tarfile ends its walk silently at a corrupt header or at the end of the file, so the bytes after the
    last member must be at least :data:`END_BLOCKS` zero bytes (what a copy cut short lacks)."""
    if size - end < END_BLOCKS:
        raise ValueError(f"shard {path} is truncated: it ends {max(size - end, 0)} bytes after its last member, "
                         f"without the {END_BLOCKS} bytes of end-of-archive blocks; write or copy the shard again")
    for start in range(end, size, 1 << 20):
        if os.pread(handle.fileno(), min(1 << 20, size - start), start).strip(b"\0"):
            raise ValueError(f"shard {path} is corrupt: no valid tar header at byte {end} of {size}; write the "
                             "shard again")


def _label(handle, sample: dict, ext: str, path: Path) -> int:
    if ext not in sample:
        return -1
    offset, size = sample[ext]
    try:
        value = basichandlers(ext, os.pread(handle.fileno(), size, offset)) if size <= MAX_CLASS_BYTES else None
    except ValueError:
        value = None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_CLASS:
        raise ValueError(f"shard {path}: sample {sample['__key__']!r} has the class {ext!r} "
                         f"{os.pread(handle.fileno(), min(size, 40), offset)!r}"
                         f"{'...' if size > 40 else ''}, not an integer in [0, 2**31)")
    return value


def decode_image(data: bytes, where: str) -> Image.Image:
    """Encoded image bytes as an RGB PIL image, decoded only when the header declares at most
    :data:`MAX_PIXELS` pixels (a larger JPEG is decoded at a power-of-two scale within it); ``ValueError``
    naming ``where`` for unreadable bytes or a larger image."""
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on corrupt data
        raise ValueError(f"{where}: the image is not readable ({exc})") from None
    with image:
        width, height = image.size
        scale = next((s for s in (1, 2, 4, 8) if width * height <= MAX_PIXELS * s * s), None)
        if scale is None or (scale > 1 and image.format != "JPEG"):
            side = math.isqrt(MAX_PIXELS)
            raise ValueError(f"{where}: the image declares {width}x{height} pixels, above the limit of {MAX_PIXELS} "
                             f"({side}x{side}): downscale it")
        try:
            if scale > 1:
                image.draft("RGB", (-(-width // scale), -(-height // scale)))
            return image.convert("RGB")
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{where}: the image is not readable ({exc})") from None


def index_file(path: Path, stamp: tuple[int, ...], image: str | None, label: str | None, cache_dir: Path) -> Path:
    """Where the index of the absolute shard ``path`` with the file stamp ``stamp`` is cached."""
    return cache_dir / "wds-index" / f"{stable_hash([INDEX_VERSION, str(path), *stamp, image, label])}.npz"


def read_index(cached: Path) -> ShardIndex | None:
    """The shard index cached in the file ``cached``; None when it is absent or unreadable."""
    try:
        with np.load(cached, allow_pickle=False) as data:
            return ShardIndex(**{name: data[name] for name in ShardIndex.__dataclass_fields__})
    except (OSError, ValueError, KeyError):
        return None


def build_index(cached: Path, path: Path, stamp: tuple[int, ...], image: str | None, label: str | None) -> ShardIndex:
    """Index the shard ``path`` (:func:`index_shard`) and cache the index in the file ``cached``;
    ``ValueError`` when the shard's file stamp is not ``stamp`` once it is indexed."""
    index = index_shard(path, image, label)
    if file_stamp(path) != tuple(stamp):
        raise ValueError(f"shard {path} changed while it was indexed: open the pool again")
    buffer = io.BytesIO()
    np.savez(buffer, **{name: getattr(index, name) for name in ShardIndex.__dataclass_fields__})
    atomic_write_bytes(cached, buffer.getvalue())
    return index


def _indexes(jobs: list[tuple[Path, Path, tuple]], source: WebDatasetSource, progress: bool) -> list[ShardIndex]:
    """The index of each (cache file, shard, stamp) of ``jobs``: read from its cache file, else built, in
    :data:`INDEX_PROCESSES` processes when at least :data:`PARALLEL_SHARDS` shards need it (tarfile
    parses headers in Python, about 70 µs of CPU a member here: a pool of 1e7 samples is CPU-hours)."""
    indexes = [read_index(cached) for cached, _, _ in jobs]
    missing = [i for i, index in enumerate(indexes) if index is None]
    args = [(*jobs[i], source.image, source.label) for i in missing]
    workers = min(len(missing), INDEX_PROCESSES) if len(missing) >= PARALLEL_SHARDS else 1
    with tqdm(total=len(missing), desc=f"indexing {source.root}", unit="shard",
              disable=not progress or not missing) as bar:
        if workers > 1:
            # forked like DataLoader workers on Linux (the children parse tars; they run no torch op)
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
                for i, index in zip(missing, pool.map(build_index, *zip(*args))):
                    indexes[i] = index
                    bar.update()
        else:
            for i, arg in zip(missing, args):
                indexes[i] = build_index(*arg)
                bar.update()
    return indexes


class TarShardDataset(ItemInfo, Dataset):
    """Items ``(RGB PIL image, label)`` of WebDataset shards, in shard then member order, read by index.

    shards: absolute shard paths; stamps: each shard's file stamp when it was indexed; starts:
    int64 [S+1], the first item of each shard; offsets, sizes: int64 [N], each item's image bytes in its
    shard; labels: int64 [N] (-1 unlabelled). Open file descriptors are per process (``os.pread``, so
    DataLoader workers never share a file position) and are not pickled.
    """

    def __init__(self, shards: list[Path], stamps: list[tuple[int, ...]], starts: np.ndarray, offsets: np.ndarray,
                 sizes: np.ndarray, labels: np.ndarray, key_files: list[Path] | None = None):
        self.shards, self.stamps = [Path(s) for s in shards], [tuple(s) for s in stamps]
        self.starts, self.offsets, self.sizes = starts, offsets, sizes
        self.labels = np.asarray(labels, dtype=np.int64)
        self.key_files = key_files
        self._set_info(len(offsets), None, (), ())
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a pool of {len(self)} samples")
        index %= len(self)
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        offset, size = int(self.offsets[index]), int(self.sizes[index])
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size or file_stamp(self.shards[shard]) != self.stamps[shard]:
            raise ValueError(f"shard {self.shards[shard]} changed since the pool was opened: open the pool again")
        image = decode_image(data, f"shard {self.shards[shard]}: sample {self.key(index)!r}")
        return image, int(self.labels[index])

    def key(self, index: int) -> str:
        """The WebDataset key of item ``index`` (read from the shard's cached index)."""
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        if self.key_files is not None:
            try:
                with np.load(self.key_files[shard], allow_pickle=False) as data:
                    return str(data["keys"][index - self.starts[shard]])
            except (OSError, KeyError, ValueError):
                pass
        return f"#{index - self.starts[shard]}"

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: its own descriptors from here on
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.get(shard)
        if fd is not None:
            self._fds.move_to_end(shard)
            return fd
        path = self.shards[shard]
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise FileNotFoundError(f"shard {path} cannot be opened ({exc.strerror}): it was indexed when the pool "
                                    "was opened") from None
        self._fds[shard] = fd
        while len(self._fds) > MAX_OPEN_SHARDS:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"] = OrderedDict()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                os.close(fd)


@dataclass(frozen=True)
class OpenedShards:
    """A WebDataset pool opened: the dataset, its data id, and the samples skipped (``<shard>#<key>``)."""

    dataset: TarShardDataset
    data_id: str
    skipped: list[Path]


def open_webdataset(source: WebDatasetSource, cache_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> OpenedShards:
    """The pool of ``source``: every shard indexed (or its index read from ``cache_dir``, default the cache
    folder). The data id hashes each shard's absolute path and file stamp and the ``image``/``label`` choice:
    no image is decoded for it, and any write to a shard gives a new one."""
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    shards = [s.resolve() for s in shard_files(source.root)]
    stamps = [file_stamp(s) for s in shards]
    key_files = [index_file(s, st, source.image, source.label, cache) for s, st in zip(shards, stamps)]
    indexes = _indexes(list(zip(key_files, shards, stamps)), source, progress)
    counts = np.asarray([len(i.keys) for i in indexes], dtype=np.int64)
    if not counts.sum():
        raise ValueError(f"no sample with an image in the shards {source.root} ({sum(len(i.skipped) for i in indexes)} "
                         f"samples without one{'' if source.image is None else f' named {source.image!r}'})")
    starts = np.concatenate([[0], np.cumsum(counts)])
    dataset = TarShardDataset(shards, stamps, starts, np.concatenate([i.offsets for i in indexes]),
                              np.concatenate([i.sizes for i in indexes]), np.concatenate([i.labels for i in indexes]),
                              key_files)
    files = [(str(s), *st) for s, st in zip(shards, stamps)]
    data_id = f"wds/{stable_hash(['wds', files, source.image, source.label])}"
    skipped = [Path(f"{s}#{k}") for s, i in zip(shards, indexes) for k in i.skipped]
    return OpenedShards(dataset, data_id, skipped)
