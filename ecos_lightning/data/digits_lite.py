"""digits-lite: a small five-domain digit dataset generated offline.

digits-lite is the embedded default dataset of ``ecos_lightning``. It is built
deterministically from material that ships inside installed packages, so it
needs no network access:

``handwritten``
    scikit-learn's bundled ``load_digits`` scans (8x8, values 0..16), upscaled
    to 32x32, white digit on black. The first ``m`` scans of every class in
    dataset order are kept, where ``m`` is the smallest class count, so the
    domain is exactly class-balanced. These images do not depend on the seed.
``printed``
    Digits rendered with matplotlib's bundled fonts under a random affine
    transform (rotation, scale, shear, translation), dark ink on light paper
    with mild noise.
``blended``
    MNIST-M style: a digit mask ``m`` in ``[0, 1]`` combined with a random crop
    of one of scikit-image's bundled colour photographs by the MNIST-M rule
    ``|crop - m * 255|``.
``street``
    SVHN style: a coloured digit in the centre with partly visible neighbour
    digits cut by the left/right edges, on synthetic clutter (colour gradient,
    shapes, noise), with contrasting colours and slight blur.
``lowres``
    USPS style: a grey digit with thick strokes rendered at 16x16, blurred and
    upsampled to 32x32.

Domains never share source material: the scikit-learn scans are used only by
``handwritten``, the photographs only by ``blended``, and the usable
matplotlib fonts (those with ten distinct, non-empty digit glyphs that look
like digits) are split into disjoint sets for the four rendered domains by a
fixed rule over their sorted file names. No two images of the dataset are
byte-identical.

All images are ``uint8 [32, 32, 3]``; labels are ``int64`` in ``0..9``; each
image carries an ``int64`` domain id indexing :data:`DOMAINS`. The generated
arrays are cached to ``<cache_dir>/digits_lite_v1_seed{seed}.npz``.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..files import atomic_write_bytes, default_cache_dir

__all__ = [
    "DOMAINS",
    "DigitsLite",
    "DigitsLiteDataset",
    "load_digits_lite",
    "generate_digits_lite",
    "cache_path",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "SAMPLES_PER_CLASS",
]

DOMAINS: tuple[str, ...] = ("handwritten", "printed", "blended", "street", "lowres")
"""Domain names; the domain id of an image is its index in this tuple."""

IMAGE_SIZE = 32
NUM_CLASSES = 10
SAMPLES_PER_CLASS = 200
"""Images per class in every rendered (non-``handwritten``) domain."""

_CACHE_VERSION = 1
_FONT_DOMAINS = ("printed", "blended", "street", "lowres")

# Font files whose code points for "0".."9" are not digits (symbol, size-variant
# and fallback fonts). Fonts are also checked by rendering (see _usable_fonts).
_FONT_DENYLIST_PREFIXES = ("STIXSiz", "STIXNonUni", "cmex10", "cmsy10", "LastResort")

# Colour photographs that scikit-image ships inside its package.
_PHOTO_LOADERS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "rocket",
    "stereo_motorcycle",
)

_GLYPH_HEIGHT = 48  # height (px) of every normalised high-resolution glyph
_CANVAS = 80  # side (px) of the square canvas holding a centred glyph
_CHUNK = 500  # images generated per step (fixed, so progress does not change output)


# --------------------------------------------------------------------------- #
# Public containers
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, eq=False)
class DigitsLite:
    """In-memory digits-lite arrays.

    Attributes:
        images: ``uint8 [N, 32, 32, 3]``.
        labels: ``int64 [N]`` class labels in ``0..9``.
        domains: ``int64 [N]`` domain ids, indices into ``domain_names``.
        domain_names: names of the domains (defaults to :data:`DOMAINS`).
    """

    images: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    domain_names: tuple[str, ...] = DOMAINS

    def __post_init__(self) -> None:
        images, labels, domains = self.images, self.labels, self.domains
        if not (isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)):
            raise ValueError(f"images must be an array of shape [N, 32, 32, 3], got {getattr(images, 'shape', type(images))}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must have dtype uint8, got {images.dtype}")
        n = images.shape[0]
        for name, arr in (("labels", labels), ("domains", domains)):
            if not (isinstance(arr, np.ndarray) and arr.shape == (n,)):
                raise ValueError(f"{name} must be an array of shape [{n}], got {getattr(arr, 'shape', type(arr))}")
            if arr.dtype != np.int64:
                raise ValueError(f"{name} must have dtype int64, got {arr.dtype}")
        object.__setattr__(self, "domain_names", tuple(str(d) for d in self.domain_names))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray) -> "DigitsLite":
        """Rows ``indices`` (integer positions, in the given order) as a new dataset.

        A boolean mask of length ``len(self)`` is accepted as well.
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean indices must have shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
        idx = idx.reshape(-1)
        return DigitsLite(
            images=self.images[idx],
            labels=self.labels[idx],
            domains=self.domains[idx],
            domain_names=self.domain_names,
        )


class DigitsLiteDataset(Dataset):
    """Items are (image, label) where image is a float tensor [3, 32, 32] in [0,1] unless a transform is given (the transform receives a PIL.Image)."""

    def __init__(self, data: DigitsLite, transform: Callable[[Any], Any] | None = None) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.data.images[index]
        label = int(self.data.labels[index])
        if self.transform is not None:
            from PIL import Image

            return self.transform(Image.fromarray(np.ascontiguousarray(image))), label
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        return tensor, label


# --------------------------------------------------------------------------- #
# Loading and caching
# --------------------------------------------------------------------------- #


def cache_path(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Path of the cache file for ``seed`` inside ``cache_dir``."""
    base = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return base / f"digits_lite_v{_CACHE_VERSION}_seed{seed}.npz"


def load_digits_lite(
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = False,
) -> DigitsLite:
    """Load digits-lite for ``seed``, generating and caching it on first use.

    Args:
        cache_dir: directory of the cache file; defaults to ``$ECOS_CACHE_DIR``
            if set, else ``~/.cache/ecos_lightning``.
        seed: non-negative integer; the same seed always gives identical
            arrays, different seeds give different rendered images.
        progress: show a tqdm progress bar per domain while generating.

    Returns:
        The dataset, domains concatenated in :data:`DOMAINS` order.

    Raises:
        ValueError: ``seed`` is not a non-negative integer, or ``cache_dir``
            is not a path.
    """
    seed = _check_seed(seed)
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise ValueError(f"cache_dir must be a str, os.PathLike or None, got {type(cache_dir).__name__}")
    path = cache_path(cache_dir, seed)

    if path.exists():
        try:
            return _read_cache(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable cache is regenerated
            warnings.warn(
                f"digits-lite cache {path} is unreadable or invalid ({type(exc).__name__}: {exc}); regenerating it",
                RuntimeWarning,
                stacklevel=2,
            )

    data = generate_digits_lite(seed=seed, progress=progress)
    _write_cache(path, data)
    return data


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be a non-negative int, got {seed!r} ({type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return int(seed)


def _read_cache(path: Path) -> DigitsLite:
    with np.load(path, allow_pickle=False) as z:
        arrays = {key: z[key] for key in ("images", "labels", "domains", "domain_names")}
    images, labels, domains = arrays["images"], arrays["labels"], arrays["domains"]
    names = tuple(str(x) for x in arrays["domain_names"].tolist())
    if names != DOMAINS:
        raise ValueError(f"unexpected domain names {names}")
    data = DigitsLite(images=images, labels=labels, domains=domains, domain_names=names)
    if len(data) == 0:
        raise ValueError("empty dataset")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError("labels out of range")
    if domains.min() < 0 or domains.max() >= len(DOMAINS):
        raise ValueError("domain ids out of range")
    return data


def _write_cache(path: Path, data: DigitsLite) -> None:
    """Write ``data`` to ``path`` atomically and durably (``files.atomic_write_bytes``)."""
    buffer = io.BytesIO()
    np.savez(buffer, images=data.images, labels=data.labels, domains=data.domains,
             domain_names=np.asarray(data.domain_names, dtype=np.str_))
    atomic_write_bytes(path, buffer.getvalue(), durable=True)


# --------------------------------------------------------------------------- #
# Generation
# --------------------------------------------------------------------------- #


def generate_digits_lite(seed: int = 0, progress: bool = False) -> DigitsLite:
    """Generate digits-lite for ``seed`` in memory (no caching)."""
    seed = _check_seed(seed)
    fonts = _font_partition()
    generators: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
        "printed": _PrintedRenderer(_load_glyphs(fonts["printed"])),
        "blended": _BlendedRenderer(_load_glyphs(fonts["blended"]), _load_photos()),
        "street": _StreetRenderer(_load_glyphs(fonts["street"])),
        "lowres": _LowresRenderer(_load_glyphs(fonts["lowres"])),
    }

    images, labels, domains = [], [], []
    for domain_id, name in enumerate(DOMAINS):
        if name == "handwritten":
            bar = _progress_bar(name, progress, total=None)
            imgs, labs = _handwritten()
            if bar is not None:
                bar.total = len(labs)
                bar.update(len(labs))
        else:
            bar = _progress_bar(name, progress, total=NUM_CLASSES * SAMPLES_PER_CLASS)
            rng = np.random.default_rng([seed, domain_id])
            labs = rng.permutation(np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), SAMPLES_PER_CLASS))
            parts = []
            for start in range(0, len(labs), _CHUNK):
                chunk = labs[start : start + _CHUNK]
                parts.append(generators[name](rng, chunk))
                if bar is not None:
                    bar.update(len(chunk))
            imgs = np.concatenate(parts)
        if bar is not None:
            bar.close()
        images.append(imgs)
        labels.append(labs.astype(np.int64))
        domains.append(np.full(len(labs), domain_id, dtype=np.int64))

    all_images = np.ascontiguousarray(np.concatenate(images))
    _make_unique(all_images)
    return DigitsLite(
        images=all_images,
        labels=np.concatenate(labels),
        domains=np.concatenate(domains),
        domain_names=DOMAINS,
    )


def _progress_bar(name: str, enabled: bool, total: int | None):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"digits-lite {name}", unit="img", leave=False)


def _make_unique(images: np.ndarray) -> None:
    """Nudge later copies of byte-identical images in place until all rows differ."""
    n = images.shape[0]
    flat = images.reshape(n, -1)
    for attempt in range(256):
        keys = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
        _, first = np.unique(keys, return_index=True)
        if len(first) == n:
            return
        dup = np.setdiff1d(np.arange(n), first)
        pos = attempt % flat.shape[1]
        flat[dup, pos] = np.where(flat[dup, pos] < 255, flat[dup, pos] + 1, flat[dup, pos] - 1)
    raise RuntimeError("could not make digits-lite images unique")


# ----------------------------- handwritten --------------------------------- #


def _handwritten() -> tuple[np.ndarray, np.ndarray]:
    from skimage.transform import resize
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scans = np.asarray(bunch.images, dtype=np.float32)
    target = np.asarray(bunch.target, dtype=np.int64)
    # Drop exact duplicate scans (keeping the first) before balancing.
    flat = scans.reshape(len(scans), -1)
    _, first = np.unique(flat, axis=0, return_index=True)
    keep = np.sort(first)
    scans, target = scans[keep], target[keep]
    per_class = int(np.bincount(target, minlength=NUM_CLASSES).min())
    chosen = np.sort(np.concatenate([np.flatnonzero(target == c)[:per_class] for c in range(NUM_CLASSES)]))
    scans, target = scans[chosen], target[chosen]

    big = resize(scans / 16.0, (len(scans), IMAGE_SIZE, IMAGE_SIZE), order=1, mode="edge", anti_aliasing=False)
    grey = np.clip(np.rint(big * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1), target


# ------------------------------- fonts -------------------------------------- #


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=64)
def _render_font_digits(path: Path) -> tuple[np.ndarray, ...] | None:
    """Tight-cropped float glyph bitmaps for "0".."9", or None if unavailable."""
    from matplotlib.ft2font import FT2Font

    try:
        font = FT2Font(str(path))
    except Exception:  # noqa: BLE001 - unreadable font files are skipped
        return None
    glyphs = []
    for ch in "0123456789":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            font.set_size(72, 72)
            font.set_text(ch, 0.0)
            font.draw_glyphs_to_bitmap(antialiased=True)
        bitmap = np.asarray(font.get_image(), dtype=np.float32) / 255.0
        rows = np.flatnonzero(bitmap.max(axis=1) > 0.1)
        cols = np.flatnonzero(bitmap.max(axis=0) > 0.1)
        if len(rows) == 0 or len(cols) == 0:
            return None
        glyph = bitmap[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        glyph.setflags(write=False)
        glyphs.append(glyph)
    return tuple(glyphs)


def _deskew(glyph: np.ndarray) -> np.ndarray:
    """Remove the slant of a glyph (shear so its principal axis is vertical)."""
    from skimage.transform import AffineTransform, warp

    h, w = glyph.shape
    padded = np.zeros((h, w + h), dtype=np.float32)
    padded[:, h // 2 : h // 2 + w] = glyph
    ys, xs = np.mgrid[:h, : w + h]
    mass = padded.sum()
    cx = (xs * padded).sum() / mass
    cy = (ys * padded).sum() / mass
    slant = ((xs - cx) * (ys - cy) * padded).sum() / (((ys - cy) ** 2) * padded).sum()
    shear = AffineTransform(matrix=np.array([[1.0, slant, -slant * cy], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    upright = warp(padded, shear, order=1)
    cols = np.flatnonzero(upright.max(axis=0) > 0.1)
    return upright[:, cols[0] : cols[-1] + 1] if len(cols) else upright


def _glyph_signature(glyph: np.ndarray, size: int = 12) -> np.ndarray:
    """Zero-mean, unit-norm ``size x size`` thumbnail of the deskewed glyph."""
    from skimage.transform import resize

    thumb = resize(_deskew(glyph), (size, size), order=1, anti_aliasing=True).ravel()
    thumb = thumb - thumb.mean()
    return thumb / (np.linalg.norm(thumb) + 1e-8)


_REFERENCE_FONT = "DejaVuSans.ttf"


@functools.lru_cache(maxsize=1)
def _usable_fonts() -> tuple[str, ...]:
    """Sorted file names of bundled fonts with ten distinct, digit-like glyphs.

    A font is kept when its glyphs for "0".."9" render non-empty, are pairwise
    different, and look like digits: compared (deskewed, as thumbnails) with
    the digits of matplotlib's default font DejaVu Sans, at least 8 of the 10
    glyphs are closest to their own digit and the mean similarity to their own
    digit is at least 0.5. Symbol fonts that map "0".."9" to other shapes fail
    this test.
    """
    font_dir = _font_dir()
    reference = _render_font_digits(font_dir / _REFERENCE_FONT)
    ref_sig = None if reference is None else np.stack([_glyph_signature(g) for g in reference])
    usable = []
    for path in sorted(font_dir.glob("*.ttf")):
        if path.name.startswith(_FONT_DENYLIST_PREFIXES):
            continue
        glyphs = _render_font_digits(path)
        if glyphs is None:
            continue
        keys = {(g.shape, np.round(g, 2).tobytes()) for g in glyphs}
        if len(keys) < NUM_CLASSES:
            continue
        if ref_sig is not None:
            sim = np.stack([_glyph_signature(g) for g in glyphs]) @ ref_sig.T
            matches = int((sim.argmax(axis=1) == np.arange(NUM_CLASSES)).sum())
            if matches < 8 or float(np.diag(sim).mean()) < 0.5:
                continue
        usable.append(path.name)
    return tuple(usable)


def _font_partition() -> dict[str, list[str]]:
    """Disjoint font sets for the rendered domains.

    Font ``i`` of the sorted usable list goes to domain ``(i + i // 4) % 4`` of
    ``("printed", "blended", "street", "lowres")``; the shift by ``i // 4``
    spreads the regular/bold/italic members of each font family over domains.
    """
    fonts = _usable_fonts()
    if len(fonts) < len(_FONT_DOMAINS):
        raise RuntimeError(f"need at least {len(_FONT_DOMAINS)} usable fonts for digits-lite, found {fonts}")
    parts: dict[str, list[str]] = {name: [] for name in _FONT_DOMAINS}
    for i, name in enumerate(fonts):
        parts[_FONT_DOMAINS[(i + i // 4) % len(_FONT_DOMAINS)]].append(name)
    return parts


@dataclass(frozen=True, eq=False)
class _Glyphs:
    """Normalised glyphs of a font set.

    ``canvas[f * 10 + d]`` holds digit ``d`` of font ``f`` with height
    ``_GLYPH_HEIGHT`` centred on a ``_CANVAS x _CANVAS`` float canvas;
    ``widths`` are the glyph widths in canvas pixels.
    """

    canvas: np.ndarray  # float32 [F*10, C, C]
    widths: np.ndarray  # float32 [F*10]
    n_fonts: int

    def stroke_widths(self) -> np.ndarray:
        """Mean stroke width (canvas px) of each font, estimated as 2 * area / perimeter."""
        from scipy.ndimage import binary_erosion

        ink = self.canvas > 0.5
        edge = ink & ~binary_erosion(ink, structure=np.ones((1, 3, 3), dtype=bool))
        per_glyph = 2.0 * ink.sum(axis=(1, 2)) / np.maximum(edge.sum(axis=(1, 2)), 1)
        return per_glyph.reshape(self.n_fonts, NUM_CLASSES).mean(axis=1)

    def thickened(self, target: float) -> np.ndarray:
        """Canvas with every font dilated so its strokes are about ``target`` px wide."""
        out = self.canvas.copy()
        for f, stroke in enumerate(self.stroke_widths()):
            size = int(round(target - stroke)) + 1
            rows = slice(f * NUM_CLASSES, (f + 1) * NUM_CLASSES)
            out[rows] = _thicken(self.canvas[rows], size)
        return out


def _load_glyphs(font_names: Sequence[str]) -> _Glyphs:
    from skimage.transform import resize

    font_dir = _font_dir()
    canvases, widths = [], []
    for name in font_names:
        glyphs = _render_font_digits(font_dir / name)
        assert glyphs is not None
        for g in glyphs:
            h, w = g.shape
            new_w = int(np.clip(round(w * _GLYPH_HEIGHT / h), 4, _CANVAS - 24))
            g = resize(g, (_GLYPH_HEIGHT, new_w), order=1, anti_aliasing=True)
            canvas = np.zeros((_CANVAS, _CANVAS), dtype=np.float32)
            top = (_CANVAS - _GLYPH_HEIGHT) // 2
            left = (_CANVAS - new_w) // 2
            canvas[top : top + _GLYPH_HEIGHT, left : left + new_w] = np.clip(g, 0.0, 1.0)
            canvases.append(canvas)
            widths.append(new_w)
    return _Glyphs(np.stack(canvases), np.asarray(widths, dtype=np.float32), len(font_names))


def _thicken(canvas: np.ndarray, size: int) -> np.ndarray:
    """Grey dilation of every glyph canvas (bolder strokes)."""
    from scipy.ndimage import grey_dilation

    if size <= 1:
        return canvas
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2.0
    disk = (xx**2 + yy**2) <= ((size - 1) / 2.0 + 0.25) ** 2
    return grey_dilation(canvas, footprint=disk[None]).astype(np.float32)


def _smooth(canvas: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(canvas, sigma=(0, sigma, sigma)).astype(np.float32)


def _affine(
    rng: np.random.Generator,
    n: int,
    height: tuple[float, float],
    rotation_deg: float,
    shear: float,
    aspect: tuple[float, float],
    max_width: tuple[np.ndarray, float] | None = None,
) -> np.ndarray:
    """Random forward matrices [n, 2, 2] mapping glyph pixels to output pixels.

    ``height`` is the range of the digit height in output pixels, ``aspect``
    the range of the extra horizontal stretch. With ``max_width=(widths,
    limit)`` the stretch is reduced where a glyph of canvas width ``widths[i]``
    would otherwise be wider than ``limit`` output pixels.
    """
    scale = rng.uniform(*height, size=n) / _GLYPH_HEIGHT
    theta = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, size=n))
    sh = rng.uniform(-shear, shear, size=n)
    sx = rng.uniform(*aspect, size=n)
    if max_width is not None:
        widths, limit = max_width
        sx = np.minimum(sx, limit / (np.asarray(widths, dtype=np.float64) * scale))
    cos, sin = np.cos(theta), np.sin(theta)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear_m = np.zeros((n, 2, 2))
    shear_m[:, 0, 0] = 1.0
    shear_m[:, 0, 1] = sh
    shear_m[:, 1, 1] = 1.0
    diag = np.zeros((n, 2, 2))
    diag[:, 0, 0] = sx
    diag[:, 1, 1] = 1.0
    return scale[:, None, None] * (rot @ shear_m @ diag)


def _warp(canvas: np.ndarray, which: np.ndarray, forward: np.ndarray, shift: np.ndarray, size: int) -> np.ndarray:
    """Sample glyphs under affine maps; returns float32 masks [n, size, size].

    Output pixel ``p`` (relative to the image centre, ``(x, y)`` order) shows
    canvas point ``forward^-1 (p - shift)`` (relative to the canvas centre),
    with bilinear interpolation and zero outside the canvas.
    """
    n = len(which)
    inv = np.linalg.inv(forward).astype(np.float32)
    coords = np.arange(size, dtype=np.float32) + 0.5 - size / 2.0
    px = coords[None, None, :] - shift[:, None, None, 0].astype(np.float32)
    py = coords[None, :, None] - shift[:, None, None, 1].astype(np.float32)
    c = _CANVAS / 2.0 - 0.5
    gx = inv[:, 0, 0, None, None] * px + inv[:, 0, 1, None, None] * py + c
    gy = inv[:, 1, 0, None, None] * px + inv[:, 1, 1, None, None] * py + c
    gx = np.clip(gx, 0.0, _CANVAS - 1.001)
    gy = np.clip(gy, 0.0, _CANVAS - 1.001)
    x0 = gx.astype(np.int64)
    y0 = gy.astype(np.int64)
    fx = gx - x0
    fy = gy - y0
    flat = canvas.reshape(-1)
    base = (which.astype(np.int64) * (_CANVAS * _CANVAS))[:, None, None] + y0 * _CANVAS + x0
    top = flat[base] * (1 - fx) + flat[base + 1] * fx
    bottom = flat[base + _CANVAS] * (1 - fx) + flat[base + _CANVAS + 1] * fx
    out = top * (1 - fy) + bottom * fy
    assert out.shape == (n, size, size)
    return out.astype(np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _grid(size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in ``[-1, 1]`` as ``(x, y)``, each ``[1, size, size]``."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return c[None, None, :].repeat(size, 1), c[None, :, None].repeat(size, 2)


# ------------------------------ printed ------------------------------------- #


class _PrintedRenderer:
    """Dark ink on light paper under a random affine transform."""

    def __init__(self, glyphs: _Glyphs) -> None:
        self.glyphs = glyphs
        self.canvas = _smooth(glyphs.canvas, 1.0)

    def __call__(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        n = len(labels)
        font = rng.integers(self.glyphs.n_fonts, size=n)
        forward = _affine(rng, n, height=(17.0, 25.0), rotation_deg=12.0, shear=0.25, aspect=(0.85, 1.2))
        shift = rng.uniform(-2.5, 2.5, size=(n, 2))
        mask = _warp(self.canvas, font * NUM_CLASSES + labels, forward, shift, IMAGE_SIZE)[..., None]

        paper = rng.uniform(200, 250, size=(n, 1, 1, 1)) + rng.uniform(-10, 10, size=(n, 1, 1, 3))
        ink = rng.uniform(5, 70, size=(n, 1, 1, 1)) + rng.uniform(-15, 15, size=(n, 1, 1, 3))
        x, y = _grid()
        direction = rng.normal(size=(n, 2))
        shade = (direction[:, 0, None, None] * x + direction[:, 1, None, None] * y)[..., None] * rng.uniform(0, 12, size=(n, 1, 1, 1))
        ink_amount = mask * rng.uniform(0.8, 1.0, size=(n, 1, 1, 1))
        img = ((paper + shade) * (1 - ink_amount) + ink * ink_amount).astype(np.float32)
        img = img + rng.standard_normal(size=img.shape, dtype=np.float32) * rng.uniform(3.0, 9.0, size=(n, 1, 1, 1)).astype(np.float32)
        return _to_uint8(img)


# ------------------------------ blended ------------------------------------- #


def _load_photos() -> list[np.ndarray]:
    """Colour photographs bundled with scikit-image, downscaled to about 200-400 px."""
    import skimage.data
    from skimage.transform import downscale_local_mean

    photos = []
    for name in _PHOTO_LOADERS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a photo missing from this install is skipped
            continue
        if isinstance(img, tuple):
            img = img[0]
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] < 3:
            continue
        img = img[..., :3].astype(np.float32)
        factor = max(1, min(img.shape[:2]) // 200)
        if factor > 1:
            img = downscale_local_mean(img, (factor, factor, 1)).astype(np.float32)
        photos.append(img)
    if not photos:
        raise RuntimeError("no bundled scikit-image colour photographs could be loaded for digits-lite")
    return photos


class _BlendedRenderer:
    """MNIST-M: ``|crop - mask * 255|`` over random photograph crops."""

    def __init__(self, glyphs: _Glyphs, photos: list[np.ndarray]) -> None:
        self.glyphs = glyphs
        self.canvas = _smooth(glyphs.thickened(7.0), 1.0)
        self.photos = photos

    def __call__(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        n = len(labels)
        font = rng.integers(self.glyphs.n_fonts, size=n)
        forward = _affine(rng, n, height=(18.0, 26.0), rotation_deg=15.0, shear=0.3, aspect=(0.85, 1.25))
        shift = rng.uniform(-2.0, 2.0, size=(n, 2))
        mask = _warp(self.canvas, font * NUM_CLASSES + labels, forward, shift, IMAGE_SIZE)
        mask = np.clip(mask * 1.4, 0.0, 1.0)[..., None]

        photo = rng.integers(len(self.photos), size=n)
        u = rng.random(size=(n, 2))
        flip = rng.random(size=n) < 0.5
        crops = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
        for i in range(n):
            src = self.photos[photo[i]]
            top = int(u[i, 0] * (src.shape[0] - IMAGE_SIZE + 1))
            left = int(u[i, 1] * (src.shape[1] - IMAGE_SIZE + 1))
            crop = src[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]
            crops[i] = crop[:, ::-1] if flip[i] else crop
        return _to_uint8(np.abs(crops - mask * 255.0))


# ------------------------------- street ------------------------------------- #


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _contrasting_colours(rng: np.random.Generator, n: int, min_diff: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    fg = rng.uniform(0, 255, size=(n, 3))
    bg = rng.uniform(0, 255, size=(n, 3))
    bad = np.abs(_luma(fg) - _luma(bg)) < min_diff
    while bad.any():
        k = int(bad.sum())
        fg[bad] = rng.uniform(0, 255, size=(k, 3))
        bg[bad] = rng.uniform(0, 255, size=(k, 3))
        bad = np.abs(_luma(fg) - _luma(bg)) < min_diff
    return fg, bg


class _StreetRenderer:
    """House-number crops: centred digit, cut neighbours, cluttered background."""

    def __init__(self, glyphs: _Glyphs) -> None:
        self.glyphs = glyphs
        self.canvas = _smooth(glyphs.thickened(6.0), 0.9)

    def __call__(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        n = len(labels)
        g = self.glyphs
        font = rng.integers(g.n_fonts, size=n)
        forward = _affine(rng, n, height=(19.0, 27.0), rotation_deg=6.0, shear=0.15, aspect=(0.9, 1.25))
        shift = rng.uniform(-1.5, 1.5, size=(n, 2))
        centre = font * NUM_CLASSES + labels
        mask = _warp(self.canvas, centre, forward, shift, IMAGE_SIZE)
        for side in (-1.0, 1.0):
            neighbour = font * NUM_CLASSES + rng.integers(NUM_CLASSES, size=n)
            gap = rng.uniform(4.0, 12.0, size=n)
            dx = side * (g.widths[centre] / 2 + g.widths[neighbour] / 2 + gap)
            offset = forward @ np.stack([dx, np.zeros(n)], -1)[..., None]
            present = (rng.random(size=n) < 0.8)[:, None, None]
            side_mask = _warp(self.canvas, neighbour, forward, shift + offset[..., 0], IMAGE_SIZE)
            mask = np.maximum(mask, side_mask * present)
        mask = mask[..., None]

        fg, bg = _contrasting_colours(rng, n)
        x, y = _grid()
        # Background: base colour, colour gradient, a few flat shapes, noise.
        direction = rng.normal(size=(n, 2))
        ramp = direction[:, 0, None, None] * x + direction[:, 1, None, None] * y
        back = (bg[:, None, None, :] + ramp[..., None] * rng.uniform(-30, 30, size=(n, 1, 1, 3))).astype(np.float32)
        for _ in range(3):
            cx, cy = rng.uniform(-1.2, 1.2, size=(2, n, 1, 1))
            rx, ry = rng.uniform(0.15, 0.8, size=(2, n, 1, 1))
            ellipse = rng.random(size=(n, 1, 1)) < 0.5
            inside = np.where(
                ellipse,
                ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1.0,
                (np.abs(x - cx) < rx) & (np.abs(y - cy) < ry),
            )
            strength = rng.uniform(0.3, 0.8, size=(n, 1, 1, 1)) * (rng.random(size=(n, 1, 1, 1)) < 0.8)
            alpha = (inside[..., None] * strength).astype(np.float32)
            colour = (bg[:, None, None, :] + rng.uniform(-70, 70, size=(n, 1, 1, 3))).astype(np.float32)
            back = back * (1 - alpha) + colour * alpha
        fore = (fg[:, None, None, :] + ramp[..., None] * rng.uniform(-15, 15, size=(n, 1, 1, 3))).astype(np.float32)
        img = back * (1 - mask) + fore * mask
        img = img + rng.standard_normal(size=img.shape, dtype=np.float32) * rng.uniform(2.0, 7.0, size=(n, 1, 1, 1)).astype(np.float32)
        sigma = rng.choice(np.array([0.5, 0.75, 1.0]), size=n)
        out = np.empty_like(img)
        for s in np.unique(sigma):
            sel = sigma == s
            out[sel] = gaussian_filter(img[sel], sigma=(0, s, s, 0))
        return _to_uint8(out)


# ------------------------------- lowres ------------------------------------- #


class _LowresRenderer:
    """USPS: thick grey digit filling a 16x16 frame, blurred, upsampled to 32x32."""

    size = 16

    def __init__(self, glyphs: _Glyphs) -> None:
        self.glyphs = glyphs
        self.canvas = _smooth(glyphs.thickened(8.0), 1.2)

    def __call__(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        from scipy.ndimage import gaussian_filter
        from skimage.transform import resize

        n = len(labels)
        font = rng.integers(self.glyphs.n_fonts, size=n)
        which = font * NUM_CLASSES + labels
        forward = _affine(
            rng,
            n,
            height=(12.5, 15.0),
            rotation_deg=8.0,
            shear=0.25,
            aspect=(0.95, 1.4),
            max_width=(self.glyphs.widths[which], 13.0),
        )
        shift = rng.uniform(-0.6, 0.6, size=(n, 2))
        mask = _warp(self.canvas, which, forward, shift, self.size)
        mask = np.clip(mask * 1.3, 0.0, 1.0)
        mask = gaussian_filter(mask, sigma=(0, 0.5, 0.5))
        ink = rng.uniform(200, 255, size=(n, 1, 1))
        paper = rng.uniform(0, 25, size=(n, 1, 1))
        small = paper + (ink - paper) * mask
        big = resize(small, (n, IMAGE_SIZE, IMAGE_SIZE), order=1, mode="edge", anti_aliasing=False)
        grey = _to_uint8(big)
        return np.repeat(grey[..., None], 3, axis=-1)
