"""The proxy file: the cloud's selected proxy set as JSON, read by the training side.

Format (version 2), every key required::

    {"version": 2, "kind": "ecos-proxy",
     "indices": [int, ...],          # unique indices into the open pool, each < 2**62, B >= 1
     "root": str | null,             # absolute root folder of an image-folder pool; null for an indexed pool
     "paths": [str, ...] | null,     # with root: file of each index, relative to root (posix, no "..")
     "clusters": [int, ...],         # cluster of each index (-1: none)
     "scores": [float, ...],         # clipped noisy score of that cluster
     "labels": [int, ...] | null,    # label of each index (-1: unlabelled), in [0, len(class_names))
     "class_names": [str, ...] | null,
     "epsilon": float | null,        # privacy cost reported by the client; null = inf (not private)
     "delta": float, "bytes_down": int, "bytes_up": int,
     "open": str}                    # the open pool, as given to ``ecos-cloud probe --open``

Version 1 (absolute paths, no root) is refused with a request to run ``ecos-cloud sample`` again.
:func:`proxy_image_files` resolves the paths (symlinks followed) and checks that each stays inside
the root and opens as an image, so a training run can refuse a bad file before it starts.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path, PurePosixPath

from PIL import Image

from .files import atomic_write_bytes

PROXY_VERSION = 2
PROXY_KIND = "ecos-proxy"
MAX_PROXY_BYTES = 1 << 30
MAX_INT = 1 << 62  # every integer field is below this (indices, clusters, byte counts)
FIELDS = ("version", "kind", "indices", "root", "paths", "clusters", "scores", "labels", "class_names", "epsilon",
          "delta", "bytes_down", "bytes_up", "open")


def read_proxy_file(path: str | os.PathLike) -> dict:
    """Read and validate a proxy file; ``ValueError`` naming the file and the field on any problem."""
    path = Path(path)
    where = f"proxy file {path}"
    if not path.exists():
        raise ValueError(f"{where} not found: pass the JSON file written by `ecos-cloud sample`")
    if not path.is_file():
        raise ValueError(f"{where} is not a file: pass the JSON file written by `ecos-cloud sample`")
    try:
        if path.stat().st_size > MAX_PROXY_BYTES:
            raise ValueError(f"{where}: larger than {MAX_PROXY_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{where} cannot be read ({exc.strerror or exc}): check its permissions") from None
    return parse_proxy(raw, where)


def write_proxy_file(path: str | os.PathLike, proxy: dict) -> None:
    """Validate ``proxy`` and write it atomically (nothing is written when it is invalid)."""
    proxy = validate_proxy(proxy)
    atomic_write_bytes(Path(path), json.dumps(proxy, indent=1, allow_nan=False).encode())


def is_pool_path(text) -> bool:
    """Whether ``text`` is a normalised relative posix path (no ``..``, ``.``, empty part, trailing slash or
    NUL): one spelling of one file below a pool root."""
    return (isinstance(text, str) and bool(text) and "\0" not in text and not PurePosixPath(text).is_absolute()
            and all(part not in ("", ".", "..") for part in text.split("/")))


def is_pool_root(text) -> bool:
    """Whether ``text`` is an absolute path without NUL: the root folder of an image-folder pool."""
    return isinstance(text, str) and "\0" not in text and os.path.isabs(text)


def proxy_image_files(proxy: dict, where: str = "proxy file") -> list[Path]:
    """The resolved image file of each of ``proxy["paths"]`` (symlinks followed).

    ``ValueError`` naming the first path that leads outside the resolved ``root`` or does not open
    as an image (PIL ``verify``).
    """
    root = Path(proxy["root"])
    if not root.is_dir():
        raise ValueError(f"{where}: the pool root {root} is not a folder on this machine: train where the pool is")
    real_root = root.resolve()
    files = []
    for relative in proxy["paths"]:
        try:
            file = (root / relative).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise ValueError(f"{where}: {relative!r} cannot be resolved ({exc}): remove it or run "
                             "`ecos-cloud sample` again") from None
        if not file.is_relative_to(real_root):
            raise ValueError(f"{where}: {relative!r} leads outside the pool root {root}: remove it or run "
                             "`ecos-cloud sample` again")
        if not file.is_file():
            what = "is not a regular file" if file.exists() else "does not exist"
            raise ValueError(f"{where}: {relative!r} {what}: remove it or run `ecos-cloud sample` again")
        try:
            with Image.open(file) as image:
                image.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for a file it cannot decode
            raise ValueError(f"{where}: {relative!r} is not a readable image ({exc}): remove it or run "
                             "`ecos-cloud sample` again") from None
        files.append(file)
    if len(set(files)) != len(files):
        raise ValueError(f"{where}: two paths lead to the same image: a proxy holds each image once; run "
                         "`ecos-cloud sample` again")
    return files


def parse_proxy(raw: bytes, where: str = "proxy file") -> dict:
    """Validate the bytes of a proxy file (see the module docstring) -> the dict."""
    try:
        proxy = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise ValueError(f"{where}: not valid UTF-8 JSON ({exc})") from None
    return validate_proxy(proxy, where)


def validate_proxy(proxy, where: str = "proxy file") -> dict:
    """Check every field of a proxy dict; returns it unchanged."""
    def fail(field: str, what: str):
        raise ValueError(f"{where}: field {field!r} {what}")

    if not isinstance(proxy, dict):
        raise ValueError(f"{where}: must be a JSON object")
    version = proxy.get("version")
    if not (_int(version) and version == PROXY_VERSION):
        if _int(version) and version == 1:
            raise ValueError(f"{where}: format version 1 is no longer read: run `ecos-cloud sample` again to write "
                             f"version {PROXY_VERSION}")
        fail("version", f"must be {PROXY_VERSION}, got {version!r}")
    missing, extra = [f for f in FIELDS if f not in proxy], sorted(set(proxy) - set(FIELDS))
    if missing or extra:
        raise ValueError(f"{where}: missing fields {missing}, unexpected fields {extra}")
    if proxy["kind"] != PROXY_KIND:
        fail("kind", f"must be {PROXY_KIND!r}, got {proxy['kind']!r}")
    size = _int_list(proxy, "indices", fail, low=0)
    if size == 0:
        fail("indices", "must hold at least one index")
    if len(set(proxy["indices"])) != size:
        fail("indices", "must be unique")
    _int_list(proxy, "clusters", fail, low=-1, size=size)
    scores = proxy["scores"]
    if not isinstance(scores, list) or len(scores) != size or not all(_finite(s) for s in scores):
        fail("scores", f"must be a list of {size} finite numbers")
    root, paths = proxy["root"], proxy["paths"]
    if root is not None and not is_pool_root(root):
        fail("root", f"must be null or an absolute folder path, got {root!r}")
    if (root is None) != (paths is None):
        fail("paths", "must be given with root (an image-folder pool) and null without it")
    if paths is not None and (not isinstance(paths, list) or len(paths) != size
                              or not all(is_pool_path(p) for p in paths) or len(set(paths)) != size):
        fail("paths", f"must be null or a list of {size} unique relative paths inside root (no '..', not absolute)")
    names = proxy["class_names"]
    if names is not None and (not isinstance(names, list) or not names
                              or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names)):
        fail("class_names", "must be null or a non-empty list of unique non-empty strings")
    if proxy["labels"] is not None:
        if names is None:
            fail("class_names", "must be given with labels")
        _int_list(proxy, "labels", fail, low=-1, high=len(names) - 1, size=size)
    epsilon = proxy["epsilon"]
    if epsilon is not None and not (_finite(epsilon) and epsilon >= 0):
        fail("epsilon", f"must be null (inf) or a finite number >= 0, got {epsilon!r}")
    if not (_finite(proxy["delta"]) and 0 < proxy["delta"] < 1):
        fail("delta", f"must be a number in (0, 1), got {proxy['delta']!r}")
    for field in ("bytes_down", "bytes_up"):
        if not _int(proxy[field]) or not 0 <= proxy[field] < MAX_INT:
            fail(field, f"must be an integer in [0, 2**62), got {proxy[field]!r}")
    if not isinstance(proxy["open"], str) or not proxy["open"]:
        fail("open", "must be a non-empty string")
    return proxy


def _int_list(proxy: dict, field: str, fail, low: int, high: int = MAX_INT - 1, size: int | None = None) -> int:
    values = proxy[field]
    if (not isinstance(values, list) or (size is not None and len(values) != size)
            or not all(_int(v) and low <= v <= high for v in values)):
        bounds = f"in [{low}, {high}]" if high < MAX_INT - 1 else f"in [{low}, 2**62)"
        count = f"{size} " if size is not None else ""
        fail(field, f"must be a list of {count}integers {bounds}")
    return len(values)


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value) -> bool:
    try:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # a JSON integer beyond the float range
        return False


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name} is not allowed")
