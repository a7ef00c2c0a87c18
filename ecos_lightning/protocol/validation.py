"""Argument checks shared by the protocol: every error names the argument and the fix."""

from __future__ import annotations

import numbers

import numpy as np

_CHECK_ROWS = 65536  # rows checked at a time


def as_features(x, name: str) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 matrix [N, d], or raise ``ValueError`` naming ``name``.

    Accepts numpy arrays and anything with ``.numpy()`` (torch tensors on CPU or GPU).
    No copy is made when ``x`` is already a C-contiguous float32 array.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - report any conversion failure the same way
        raise ValueError(f"{name} must be a 2-D float array [N, d], got {type(x).__name__}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, d], got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows): pass at least one feature vector")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has feature dimension 0: pass vectors of length >= 1")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = 0
    for start in range(0, arr.shape[0], _CHECK_ROWS):  # in blocks: a memory-mapped matrix is never held whole
        bad += int((~np.isfinite(arr[start:start + _CHECK_ROWS])).any(axis=1).sum())
    if bad:
        raise ValueError(f"{name} has {bad} row(s) with NaN or Inf: clean or drop them before calling")
    return arr


def positive_int(value, name: str) -> int:
    """Return ``value`` as an int >= 1, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def non_negative_float(value, name: str) -> float:
    """Return ``value`` as a finite float >= 0, or raise ``ValueError`` naming ``name``."""
    try:
        ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and np.isfinite(float(value)) and value >= 0
    except OverflowError:  # an integer beyond the float range
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r:.40}")
    return float(value)


def probability(value, name: str) -> float:
    """Return ``value`` as a float in the open interval (0, 1), or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)
