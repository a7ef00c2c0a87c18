"""The proxy file: the cloud's selected proxy set as JSON, read by the training side.

Format (version 1), every key required::

    {"version": 1, "kind": "ecos-proxy",
     "indices": [int, ...],          # unique indices into the open pool, B >= 1
     "paths": [str, ...] | null,     # file of each index when the pool is an image folder
     "clusters": [int, ...],         # cluster of each index (-1: none)
     "scores": [float, ...],         # clipped noisy score of that cluster
     "labels": [int, ...] | null,    # label of each index (-1: unlabelled), in [0, len(class_names))
     "class_names": [str, ...] | null,
     "epsilon": float | null,        # privacy cost reported by the client; null = inf (not private)
     "delta": float, "bytes_down": int, "bytes_up": int,
     "open": str}                    # the open pool, as given to ``ecos-cloud probe --open``
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

from .features import atomic_write_bytes

PROXY_VERSION = 1
PROXY_KIND = "ecos-proxy"
MAX_PROXY_BYTES = 1 << 30
FIELDS = ("version", "kind", "indices", "paths", "clusters", "scores", "labels", "class_names", "epsilon",
          "delta", "bytes_down", "bytes_up", "open")


def read_proxy_file(path: str | os.PathLike) -> dict:
    """Read and validate a proxy file; ``ValueError`` naming the field on any problem."""
    path = Path(path)
    if path.stat().st_size > MAX_PROXY_BYTES:
        raise ValueError(f"proxy file {path}: larger than {MAX_PROXY_BYTES} bytes")
    return parse_proxy(path.read_bytes(), str(path))


def write_proxy_file(path: str | os.PathLike, proxy: dict) -> None:
    """Validate ``proxy`` and write it atomically (nothing is written when it is invalid)."""
    proxy = validate_proxy(proxy)
    atomic_write_bytes(Path(path), json.dumps(proxy, indent=1, allow_nan=False).encode())


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
    missing, extra = [f for f in FIELDS if f not in proxy], sorted(set(proxy) - set(FIELDS))
    if missing or extra:
        raise ValueError(f"{where}: missing fields {missing}, unexpected fields {extra}")
    if proxy["version"] != PROXY_VERSION or isinstance(proxy["version"], bool):
        fail("version", f"must be {PROXY_VERSION}, got {proxy['version']!r}")
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
    if proxy["paths"] is not None and (not isinstance(proxy["paths"], list) or len(proxy["paths"]) != size
                                       or not all(isinstance(p, str) and p for p in proxy["paths"])):
        fail("paths", f"must be null or a list of {size} non-empty strings")
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
        if not _int(proxy[field]) or proxy[field] < 0:
            fail(field, f"must be an integer >= 0, got {proxy[field]!r}")
    if not isinstance(proxy["open"], str) or not proxy["open"]:
        fail("open", "must be a non-empty string")
    return proxy


def _int_list(proxy: dict, field: str, fail, low: int, high: float = math.inf, size: int | None = None) -> int:
    values = proxy[field]
    if (not isinstance(values, list) or (size is not None and len(values) != size)
            or not all(_int(v) and low <= v <= high for v in values)):
        bounds = f"in [{low}, {high}]" if high < math.inf else f">= {low}"
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
