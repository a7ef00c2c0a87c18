"""Frozen, pooled timm feature extractors and batched feature extraction.

Any timm model name can serve as the feature encoder used to compare a client's private images
with an open-source pool; an :class:`~ecos_lightning.protocol.encoder_spec.EncoderSpec` names it.
"""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm import tqdm

from ..protocol.encoder_spec import OFFLINE_MODEL_NAME, EncoderSpec
from .factory import check_timm_name, create_timm_model, spec_for_model
from .preprocess import is_pil, item_image, pil_to_chw, pil_transform, preprocess, to_nchw

__all__ = ["FeatureEncoder", "build_encoder", "encoder_feature_dim", "extract_features"]

# On CPU, extract_features runs the network on sub-batches of at most this many
# images (smaller batches stay in cache; measured faster than 256 on CPU).
_CPU_FORWARD_CHUNK = 64


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
        return preprocess(images.to(self.device, non_blocking=True), self.spec)

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
        return pil_transform(self.spec)

    def extra_repr(self) -> str:
        return f"spec={self.spec}, feature_dim={self.feature_dim}"


@functools.lru_cache(maxsize=64)  # a pure function of the spec, asked on every cache lookup of its features
def encoder_feature_dim(spec: EncoderSpec) -> int:
    """Feature length of the encoder ``spec`` describes, found on PyTorch's meta device.

    No weights are read and no memory is allocated for parameters or activations, so the size of
    what a spec asks for can be checked before the encoder is built.
    """
    check_timm_name(spec.name)
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

    A string is a timm model name, expanded with :func:`spec_for_model`
    (default weights ``"offline"``, so other names need an explicit spec).
    ``device`` None picks CUDA when available, else CPU. The model is created
    on a fork of the global torch random stream, which is left as it was.
    Random weights (``"none"``) warn: their features carry no meaning.

    Raises:
        ValueError: unknown timm name; ``weights="offline"`` for a model other
            than ``efficientnet_lite0``; weights that do not fit the model.
        FileNotFoundError: ``spec.weights`` is a path that does not exist.
    """
    if isinstance(spec, str):
        spec = spec_for_model(spec)
    elif not isinstance(spec, EncoderSpec):
        raise TypeError(f"spec must be an EncoderSpec or a timm model name, got {type(spec).__name__}")
    if spec.weights == "none":
        warnings.warn(f"encoder {spec.name} has random weights (weights='none'): its features carry no meaning "
                      "about the images, so a proxy chosen with them is no better than random; use pretrained "
                      "weights ('offline' for efficientnet_lite0, 'hub', or a weights file)", stacklevel=2)
    with torch.random.fork_rng(devices=[]):
        model = create_timm_model(spec.name, num_classes=0, weights=spec.weights)
    model = model.to(_resolve_device(device))
    return FeatureEncoder(model, spec)


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
        if is_pil(img):
            return pil_to_chw(img)
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
        return to_nchw(img.unsqueeze(0))[0]

    def __call__(self, items: list) -> tuple[torch.Tensor, bool]:
        imgs = [self._as_chw(item_image(it)) for it in items]
        if self.preprocessed:
            return torch.stack(imgs), True
        first = imgs[0]
        if all(im.shape == first.shape and im.dtype == first.dtype for im in imgs):
            return torch.stack(imgs), False
        return torch.cat([preprocess(im.unsqueeze(0), self.spec) for im in imgs]), True


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
            pixels = _check_preprocessed(batch, spec) if is_pre else preprocess(batch, spec)
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
