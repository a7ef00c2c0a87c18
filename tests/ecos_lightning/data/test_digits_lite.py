"""Tests of the digits-lite generator, cache and torch wrapper."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ecos_lightning.data import DOMAINS, DigitsLite, DigitsLiteDataset, load_digits_lite
from ecos_lightning.data import digits_lite as dl
from ecos_lightning.files import default_cache_dir

SEED = 0


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("digits_lite_cache")


@pytest.fixture(scope="module")
def data(cache_dir) -> DigitsLite:
    return load_digits_lite(cache_dir=cache_dir, seed=SEED)


def _row_keys(images: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    return flat.view(np.dtype((np.void, flat.shape[1]))).ravel()


def _assert_same(a: DigitsLite, b: DigitsLite) -> None:
    assert a.images.tobytes() == b.images.tobytes()
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.domains, b.domains)
    assert a.domain_names == b.domain_names


def test_shapes_and_dtypes(data):
    n = len(data)
    assert data.images.shape == (n, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.labels.shape == (n,) and data.labels.dtype == np.int64
    assert data.domains.shape == (n,) and data.domains.dtype == np.int64
    assert data.domain_names == DOMAINS
    assert set(np.unique(data.labels)) == set(range(10))
    assert set(np.unique(data.domains)) == set(range(len(DOMAINS)))


def test_domain_sizes_and_class_balance(data):
    for d, name in enumerate(DOMAINS):
        labels = data.labels[data.domains == d]
        assert 1500 <= len(labels) <= 3000, name
        counts = np.bincount(labels, minlength=10)
        assert counts.min() == counts.max(), (name, counts)
    assert np.sum(data.domains != 0) == 4 * 2000


def test_handwritten_is_balanced_sklearn_digits(data):
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target)
    hand = data.domains == DOMAINS.index("handwritten")
    assert hand.sum() == 10 * counts.min()
    imgs = data.images[hand]
    # Grey, white digit on a black background.
    assert np.array_equal(imgs[..., 0], imgs[..., 1]) and np.array_equal(imgs[..., 0], imgs[..., 2])
    assert np.median(imgs[:, 0, :, 0]) < 30


def test_no_duplicate_images_within_or_across_domains(data):
    keys = _row_keys(data.images)
    assert len(np.unique(keys)) == len(data)


def test_domains_look_different(data):
    """Coarse per-domain statistics that follow from the domain descriptions."""
    imgs = data.images.astype(np.float32)
    mean = {name: imgs[data.domains == d].mean() for d, name in enumerate(DOMAINS)}
    assert mean["printed"] > 150  # light paper
    assert mean["handwritten"] < 100 and mean["lowres"] < 130  # light digit on dark
    chroma = {name: np.abs(imgs[data.domains == d] - imgs[data.domains == d].mean(-1, keepdims=True)).mean()
              for d, name in enumerate(DOMAINS)}
    assert chroma["handwritten"] == 0 and chroma["lowres"] == 0
    assert chroma["street"] > 10 and chroma["blended"] > 5


def test_make_unique_separates_copies():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    images[3] = images[0]
    images[4] = images[0]
    images[5, 0, 0, 0] = 255
    images[2] = images[5]
    original = images.copy()
    dl._make_unique(images)
    assert len(np.unique(_row_keys(images))) == 6
    # First occurrences are untouched; copies change by at most one grey level per pixel.
    assert np.array_equal(images[[0, 1, 2]], original[[0, 1, 2]])
    assert np.abs(images.astype(int) - original.astype(int)).max() == 1


def test_fonts_are_partitioned():
    parts = dl._font_partition()
    assert set(parts) == {"printed", "blended", "street", "lowres"}
    all_fonts = [f for fonts in parts.values() for f in fonts]
    assert len(all_fonts) == len(set(all_fonts))
    assert all(len(f) >= 1 for f in parts.values())
    usable = dl._usable_fonts()
    assert sorted(all_fonts) == sorted(usable)
    for bad in ("cmsy10.ttf", "cmex10.ttf", "LastResortHE-Regular.ttf", "DejaVuSansDisplay.ttf"):
        assert bad not in usable
    assert not any(f.startswith(("STIXSiz", "STIXNonUni")) for f in usable)
    assert "DejaVuSans.ttf" in usable


def test_cache_file_written_atomically(data, cache_dir):
    path = Path(cache_dir) / f"digits_lite_v1_seed{SEED}.npz"
    assert path.is_file()
    assert sorted(os.listdir(cache_dir)) == [path.name]  # no temporary files left
    with np.load(path, allow_pickle=False) as z:
        assert z["images"].shape == data.images.shape


def test_cache_read_equals_generation_and_regeneration(data, cache_dir, tmp_path):
    cached = load_digits_lite(cache_dir=cache_dir, seed=SEED)
    _assert_same(cached, data)
    # A fresh generation in another directory (with progress bars) is byte-identical.
    regenerated = load_digits_lite(cache_dir=tmp_path, seed=SEED, progress=True)
    _assert_same(regenerated, data)


def test_env_var_sets_default_cache_dir(data, cache_dir, monkeypatch):
    monkeypatch.setenv("ECOS_CACHE_DIR", str(cache_dir))
    assert default_cache_dir() == Path(cache_dir)
    _assert_same(load_digits_lite(seed=SEED), data)


def test_different_seeds_differ(data, tmp_path):
    other = load_digits_lite(cache_dir=tmp_path, seed=1)
    assert other.images.shape == data.images.shape
    assert np.array_equal(np.bincount(other.domains), np.bincount(data.domains))
    for d, name in enumerate(DOMAINS):
        if name == "handwritten":  # real scans, independent of the seed
            continue
        a = _row_keys(data.images[data.domains == d])
        b = _row_keys(other.images[other.domains == d])
        assert len(np.intersect1d(a, b)) == 0, name


@pytest.fixture
def counted_generation(data, monkeypatch):
    """Replace generation by returning the module dataset, counting calls."""
    calls = []

    def fake(seed=0, progress=False):
        calls.append(seed)
        return data

    monkeypatch.setattr(dl, "generate_digits_lite", fake)
    return calls


def test_corrupt_cache_is_regenerated_with_warning(data, tmp_path, counted_generation):
    path = tmp_path / f"digits_lite_v1_seed{SEED}.npz"
    path.write_bytes(b"not an npz file")
    with pytest.warns(RuntimeWarning, match="regenerating"):
        fresh = load_digits_lite(cache_dir=tmp_path, seed=SEED)
    assert counted_generation == [SEED]
    _assert_same(fresh, data)
    assert sorted(os.listdir(tmp_path)) == [path.name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_same(load_digits_lite(cache_dir=tmp_path, seed=SEED), data)
    assert counted_generation == [SEED]  # the rewritten cache was read, not regenerated


def test_cache_with_wrong_shapes_is_regenerated(data, tmp_path, counted_generation):
    path = tmp_path / f"digits_lite_v1_seed{SEED}.npz"
    np.savez(
        path,
        images=np.zeros((3, 28, 28), np.uint8),
        labels=np.zeros(3, np.int64),
        domains=np.zeros(3, np.int64),
        domain_names=np.asarray(DOMAINS),
    )
    with pytest.warns(RuntimeWarning, match="regenerating"):
        fresh = load_digits_lite(cache_dir=tmp_path, seed=SEED)
    assert counted_generation == [SEED]
    _assert_same(fresh, data)
    _assert_same(load_digits_lite(cache_dir=tmp_path, seed=SEED), data)


def test_failed_write_leaves_no_files(data, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dl.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        dl._write_cache(tmp_path / "x.npz", data)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("seed", [-1, 1.5, "0", None, True])
def test_bad_seed_raises(seed, tmp_path):
    with pytest.raises(ValueError, match="seed"):
        load_digits_lite(cache_dir=tmp_path, seed=seed)
    assert os.listdir(tmp_path) == []


def test_bad_cache_dir_raises():
    with pytest.raises(ValueError, match="cache_dir"):
        load_digits_lite(cache_dir=123, seed=0)


def test_subset_keeps_order(data):
    idx = np.array([5, 0, len(data) - 1, 5])
    sub = data.subset(idx)
    assert len(sub) == 4
    assert np.array_equal(sub.images, data.images[idx])
    assert np.array_equal(sub.labels, data.labels[idx])
    assert np.array_equal(sub.domains, data.domains[idx])
    assert sub.domain_names == data.domain_names
    assert len(data.subset([])) == 0
    mask = data.domains == 2
    assert len(data.subset(mask)) == mask.sum()


def test_dataclass_validates_arrays():
    with pytest.raises(ValueError, match="images"):
        DigitsLite(np.zeros((2, 28, 28, 3), np.uint8), np.zeros(2, np.int64), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="labels"):
        DigitsLite(np.zeros((2, 32, 32, 3), np.uint8), np.zeros(3, np.int64), np.zeros(2, np.int64))


def test_torch_dataset_items(data):
    ds = DigitsLiteDataset(data)
    assert len(ds) == len(data)
    image, label = ds[7]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert image.shape == (3, 32, 32)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert type(label) is int and label == data.labels[7]
    assert torch.allclose(image * 255, torch.from_numpy(data.images[7]).permute(2, 0, 1).float())

    seen = []

    def transform(img):
        seen.append(img)
        return np.asarray(img)

    out, label = DigitsLiteDataset(data, transform=transform)[3]
    from PIL import Image

    assert isinstance(seen[0], Image.Image) and seen[0].size == (32, 32) and seen[0].mode == "RGB"
    assert np.array_equal(out, data.images[3]) and label == int(data.labels[3])

    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    xb, yb = next(iter(loader))
    assert xb.shape == (16, 3, 32, 32) and yb.dtype == torch.int64
