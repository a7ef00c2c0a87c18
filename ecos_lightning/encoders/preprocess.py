"""Images to the tensors an encoder takes: one implementation for the tensor, PIL and dataset paths.

Preprocessing resizes every image to ``input_size x input_size`` (no crop, so images of any size
and aspect ratio give comparable features) with ``torch.nn.functional.interpolate`` (antialiased
when downsizing), then normalises with the spec's mean / std.  A uint8 image of more than
:data:`FLOAT_PIXELS` pixels is first shrunk by an integer factor (the mean of each block, a band of
rows at a time), so no float copy of a large image is ever made.  The tensor path
(:func:`preprocess`), the PIL path (:func:`pil_transform`) and the dataset path of
``extract_features`` all go through the functions below, so the same picture gives the same
features whichever way it is supplied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from ..protocol.encoder_spec import EncoderSpec

__all__ = [
    "is_pil",
    "item_image",
    "pil_to_chw",
    "pil_transform",
    "preprocess",
    "resize_normalise",
    "resize_square",
    "shrink_to_float",
    "to_nchw",
    "to_unit_float",
]

# Float images must lie in [0, 1]; allow a little slack for resampling overshoot.
FLOAT_RANGE_TOL = 1e-2
#: A uint8 image of more pixels than this is shrunk before it is converted to float (48 MB of float RGB).
FLOAT_PIXELS = 1 << 22


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


def is_pil(x: Any) -> bool:
    return isinstance(x, Image.Image)


def pil_to_chw(img: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> uint8 RGB tensor [3, H, W]."""
    return pil_to_tensor(_PILToRGB()(img))


def to_nchw(x: torch.Tensor) -> torch.Tensor:
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


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
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
        if lo < -FLOAT_RANGE_TOL or hi > 1.0 + FLOAT_RANGE_TOL:
            raise ValueError(
                f"Float images must have values in [0,1] (got range [{lo:.3g}, {hi:.3g}]). Pass uint8 for "
                "0-255 data; for tensors already preprocessed by this encoder (e.g. a dataset using "
                "encoder.pil_transform()), call extract_features(..., preprocessed=True)."
            )
    return x


def shrink_to_float(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float [B,3,h,w] in [0, 1]; above :data:`FLOAT_PIXELS` pixels, the mean of each
    k x k block (k the smallest integer factor that brings it within, but no side below ``size``),
    converted a band of rows at a time, so the whole image never exists as float."""
    h, w = x.shape[-2:]
    k = min(math.ceil(math.sqrt(h * w / FLOAT_PIXELS)), min(h, w) // size)
    if k < 2:
        return to_unit_float(x)
    rows = k * max(1, FLOAT_PIXELS // (k * w * x.shape[0]))
    bands = [F.avg_pool2d(x[..., top:top + rows, :].float(), k, ceil_mode=True) for top in range(0, h, rows)]
    return torch.cat(bands, dim=-2).div_(255.0)


def resize_square(x: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """float [B,C,H,W] in [0,1] -> [B,C,size,size] (no crop; antialiased when shrinking; bicubic clamped)."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if interpolation == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    x = F.interpolate(x, size=(size, size), mode=interpolation, align_corners=False, antialias=h > size or w > size)
    return x.clamp(0.0, 1.0) if interpolation == "bicubic" else x


def resize_normalise(x: torch.Tensor, size: int, interpolation: str, mean: torch.Tensor,
                     std: torch.Tensor) -> torch.Tensor:
    """float [B,3,H,W] in [0,1] -> resized to ``size`` squared (:func:`resize_square`) and
    normalised with per-channel ``mean`` / ``std`` tensors [1,3,1,1]."""
    x = resize_square(x, size, interpolation)
    return (x - mean.to(x.dtype)) / std.to(x.dtype)


def preprocess(images: torch.Tensor | np.ndarray, spec: EncoderSpec) -> torch.Tensor:
    """Raw images (see :func:`to_nchw`; uint8 or float in [0,1]) -> normalised float [B,3,S,S] for ``spec``."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor or numpy array of images, got {type(images).__name__}")
    x = to_nchw(images)
    x = shrink_to_float(x, spec.input_size) if x.dtype == torch.uint8 else to_unit_float(x)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return resize_normalise(x, spec.input_size, spec.interpolation, mean, std).contiguous()


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
        return preprocess(img.unsqueeze(0), self.spec)[0]

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"{type(self).__name__}(size={s.input_size}, interpolation={s.interpolation!r}, "
            f"mean={s.mean}, std={s.std})"
        )


def pil_transform(spec: EncoderSpec) -> Callable:
    """Picklable transform from a PIL image to the preprocessed tensor [3,S,S] for ``spec``."""
    from torchvision import transforms

    return transforms.Compose([_PILToRGB(), transforms.PILToTensor(), _PreprocessImage(spec)])
