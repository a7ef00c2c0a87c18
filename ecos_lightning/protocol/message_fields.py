"""Field checks shared by the message classes. Each raises :class:`MessageError` naming the field."""

from __future__ import annotations

import math
import numbers
import re

import numpy as np

from .container import MessageError
from .encoder_spec import EncoderSpec


def expect_keys(meta: dict, keys: set, where: str) -> None:
    """``meta`` holds exactly ``keys``."""
    if set(meta) != keys:
        missing, extra = sorted(keys - set(meta)), sorted(set(meta) - keys)
        raise MessageError(f"{where}: missing fields {missing}, unexpected fields {extra}")


def expect_tensors(tensors: dict, names: set) -> None:
    """The container holds exactly the tensors ``names``."""
    if set(tensors) != names:
        raise MessageError(f"tensors: expected exactly {sorted(names)}, got {sorted(tensors)}")


def check_real(value, name: str, ok, what: str) -> None:
    """A real number (not bool) with ``ok(float(value))``; ``what`` says which in the error."""
    try:
        good = isinstance(value, numbers.Real) and not isinstance(value, bool) and ok(float(value))
    except OverflowError:  # a JSON integer beyond the float range
        good = False
    if not good:
        raise MessageError(f"{name}: must be {what}, got {value!r:.40}")


def check_finite(array, name: str) -> None:
    """A float array without NaN or Inf."""
    if not np.isfinite(array).all():
        raise MessageError(f"{name}: contains NaN or Inf")


def check_int(value, name: str, low: int, high: int | None = None) -> None:
    """An integer (not bool) in ``[low, high]``."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low
            or (high is not None and value > high)):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise MessageError(f"{name}: must be an integer {bounds}, got {value!r:.40}")


def check_hex(value, name: str, length: int, what: str) -> None:
    """``length`` lowercase hex characters (64: a SHA-256 digest)."""
    if not isinstance(value, str) or not re.fullmatch(f"[0-9a-f]{{{length}}}", value):
        raise MessageError(f"{name}: must be {length} lowercase hex characters, {what}")


def check_class_names(names, max_classes: int) -> tuple[str, ...]:
    """1 to ``max_classes`` unique non-empty strings, as a tuple."""
    if (not isinstance(names, (list, tuple)) or not 0 < len(names) <= max_classes
            or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names)):
        raise MessageError(f"class_names: must be 1 to {max_classes} unique non-empty strings")
    return tuple(names)


def check_noise_and_delta(noise_multiplier, delta) -> None:
    """A Gaussian release's settings: noise multiplier finite >= 0, delta in (0, 1)."""
    check_real(noise_multiplier, "noise_multiplier", lambda v: 0 <= v < math.inf, "a finite number >= 0")
    check_real(delta, "delta", lambda v: 0 < v < 1, "a number in (0, 1)")


def check_epsilon(value, name: str) -> None:
    """A privacy cost: a number >= 0 or inf."""
    check_real(value, name, lambda v: v >= 0, "a number >= 0 or inf")


def check_encoder(spec) -> None:
    """An encoder spec dict (``EncoderSpec.to_dict()``)."""
    try:
        EncoderSpec.from_dict(spec)
    except (ValueError, OverflowError) as exc:
        raise MessageError(f"encoder: {exc}") from None
