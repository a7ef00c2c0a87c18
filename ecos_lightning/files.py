"""Cached files: where they go, the hash that names them, and atomic writes (a reader sees the old
file or the new one, never a part of either)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
import tempfile
from pathlib import Path


def default_cache_dir() -> Path:
    """``$ECOS_CACHE_DIR`` if set, else ``~/.cache/ecos_lightning``."""
    env = os.environ.get("ECOS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/ecos_lightning").expanduser()


def file_stamp(path: str | os.PathLike) -> tuple[int, int, int, int]:
    """What identifies one version of a file without reading it: (size, mtime_ns, ctime_ns, inode).

    Any write or replacement of the file changes its change time or its inode, and neither can be set
    back by a user (``touch``, ``cp -p`` and ``rsync -t`` restore only the modification time), so a cache
    keyed on the stamp never serves another version of the file.
    """
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


def plain(value):
    """``value`` with every mapping made a dict and every sequence but a string a list, recursively: one
    form for equal configurations, whatever built them (an omegaconf ``ListConfig`` from Hydra, a tuple
    default, a list from YAML), safe to save in a checkpoint that loads with ``weights_only=True``."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(item) for item in value]
    return value


def stable_hash(obj) -> str:
    """Short SHA-256 of a JSON-able object (sorted keys; :func:`plain` first): the cache key of an artifact."""
    return hashlib.sha256(json.dumps(plain(obj), sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    ``durable`` also flushes the file and its folder to disk (``fsync``) before returning, so the
    write survives a power cut; a record that must not be lost (the privacy ledger) uses it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
