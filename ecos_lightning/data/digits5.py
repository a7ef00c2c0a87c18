"""Digits-5 read from the files each of its five datasets is published in (nothing is downloaded).

``<root>`` holds one folder per domain (the first of the names in brackets that holds any of the domain's
files, so torchvision's ``<root>/MNIST/raw/`` is found below a ``MNIST`` folder of its own; a root with
fewer domains is read with ``domains``, source-name key ``domains=mnist,svhn``); each image comes out
``uint8 [size, size, 3]`` (grayscale repeated to 3 channels, resized bilinearly when its side differs;
``size`` 32 by default, as in the Digits-5 of Peng et al. 2019), labels are the digits ``0..9``. The
whole dataset is held in memory (3 KB per 32-pixel image: about 2.3 GB for all five domains in full,
SynthDigits' 479,400 training images most of it; ``domains`` reads fewer):

``mnist`` (folder mnist, MNIST or MNIST/raw)
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each plain or ``.gz``: IDX, big-endian header, magic 2051 (images
    ``[N, 28, 28]``) / 2049 (labels ``[N]``); labels as stored.
``svhn`` (svhn, SVHN)
    ``train_32x32.mat``, ``test_32x32.mat``: ``X`` ``[32, 32, 3, N]`` uint8, ``y`` ``[N, 1]`` with the
    digit 0 stored as 10.
``usps`` (usps, USPS)
    ``usps.h5`` (HDF5: groups ``train``/``test``, each ``data`` ``[N, 256]`` floats in [0, 1] and
    ``target`` ``[N]`` digits), else LIBSVM ``usps.bz2``/``usps.t.bz2`` (labels 1..10 for the digits
    0..9, 256 values in [-1, 1]); 16x16 grayscale.
``synthdigits`` (synthdigits, SynthDigits, synth, syn)
    ``synth_train_32x32.mat``, ``synth_test_32x32.mat`` (Ganin's SynNumbers) in the SVHN layout; 10 is
    read as 0 as in SVHN.
``mnist_m`` (mnist_m, MNIST_M, mnistm)
    ``mnist_m_train/``, ``mnist_m_test/`` image folders with ``mnist_m_train_labels.txt``,
    ``mnist_m_test_labels.txt`` (``<file> <digit>`` lines).

The formats follow torchvision's readers (``MNIST``: IDX magic and layout; ``SVHN``: ``y % 10``;
``USPS``: label - 1 and ``(v + 1) / 2 * 255``). SynthDigits: public readers of ``synth_*_32x32.mat``
(for example the M3SDA/FedBN-era ``load_syn`` loaders) either take ``y`` as stored (digits 0..9) or map
10 to 0 as for SVHN; mapping 10 to 0 reads both spellings right, so this reader does.

FedBN's copy of Digits-5 (``<Domain>/partitions/train_part*.pkl`` and ``<Domain>/test.pkl``, each a
pickled ``(images, labels)`` pair) is a pickle: reading one can run code it carries, so it is read only
with ``allow_pickle=True`` (source-name key ``allow_pickle=true``) and otherwise refused with that advice.
"""

from __future__ import annotations

import gzip
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .items import ArrayImageDataset, ReadData

__all__ = ["DIGITS5_DOMAINS", "load_digits5", "read_idx"]

#: The five domains, in the order of their domain ids.
DIGITS5_DOMAINS = ("mnist", "svhn", "usps", "synthdigits", "mnist_m")
_FOLDERS = {"mnist": ("mnist", "MNIST", "MNIST/raw"), "svhn": ("svhn", "SVHN"), "usps": ("usps", "USPS"),
            "synthdigits": ("synthdigits", "SynthDigits", "synth", "syn"), "mnist_m": ("mnist_m", "MNIST_M", "mnistm")}
_WHAT = {"mnist": "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and "
                  "t10k-labels-idx1-ubyte[.gz]",
         "svhn": "train_32x32.mat and test_32x32.mat",
         "usps": "usps.h5, or usps.bz2 and usps.t.bz2",
         "synthdigits": "synth_train_32x32.mat and synth_test_32x32.mat",
         "mnist_m": "mnist_m_train/, mnist_m_test/, mnist_m_train_labels.txt and mnist_m_test_labels.txt"}
#: How the names of each domain's published files begin (one is enough for a folder to be the domain's).
_PUBLISHED = {"mnist": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                        "t10k-labels-idx1-ubyte"),
              "svhn": ("train_32x32.mat", "test_32x32.mat"), "usps": ("usps.h5", "usps.bz2", "usps.t.bz2"),
              "synthdigits": ("synth_train_32x32.mat", "synth_test_32x32.mat"),
              "mnist_m": ("mnist_m_train", "mnist_m_test")}
_IDX_MAGIC = {"images": 2051, "labels": 2049}


@dataclass
class _Split:
    """One domain as read: images [N, H, W] or [N, H, W, 3] uint8 and labels [N] per split, files read."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    files: list[Path]


def load_digits5(root, domains: tuple[str, ...] = DIGITS5_DOMAINS, size: int = 32,
                 allow_pickle: bool = False) -> ReadData:
    """Every train and test image of ``domains`` under ``root`` (see the module docstring).

    Items are ordered by domain (in ``domains`` order), then train before test, then as stored; the
    dataset's domain ids index ``domains``. ``FileNotFoundError`` names a missing file and where it was
    looked for (a missing domain also the domains found, to read with ``domains``); ``ValueError`` a file
    that is not in its published format.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Digits-5 folder not found: {root} (expected one folder per domain below it: "
                                f"{', '.join(_FOLDERS[d][0] for d in DIGITS5_DOMAINS)})")
    unknown = [d for d in domains if d not in DIGITS5_DOMAINS]
    if unknown or not domains:
        raise ValueError(f"unknown Digits-5 domains {unknown}: choose among {DIGITS5_DOMAINS}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (image side in pixels), got {size!r}")
    images, labels, domain_ids, test, files = [], [], [], [], []
    for d, name in enumerate(domains):
        split = _read_domain(root, name, allow_pickle)
        for is_test, (x, y) in ((False, split.train), (True, split.test)):
            images.append(_rgb(x, size))
            labels.append(y)
            domain_ids.append(np.full(len(y), d, np.int64))
            test.append(np.full(len(y), is_test))
        files += split.files
    items = ArrayImageDataset(np.concatenate(images), np.concatenate(labels), np.concatenate(domain_ids),
                              tuple(domains), tuple(str(c) for c in range(10)))
    return ReadData(items, np.concatenate(test), tuple(files))


def _read_domain(root: Path, name: str, allow_pickle: bool) -> _Split:
    folder = _domain_folder(root, name)
    if folder is None:
        found = [d for d in DIGITS5_DOMAINS if _domain_folder(root, d) is not None]
        hint = (f", or read only the domains found ({', '.join(found)}): digits5:domains={','.join(found)}:{root}"
                if found else "")
        raise FileNotFoundError(f"Digits-5 domain {name!r} not found: no folder {' or '.join(_FOLDERS[name])} in "
                                f"{root} holds its files ({_WHAT[name]}): put them in {root / _FOLDERS[name][0]}"
                                f"{hint}")
    if not _published_present(folder, name):
        if not allow_pickle:
            raise ValueError(f"{folder} holds a pickled copy of {name} (test.pkl, partitions/train_part*.pkl) and "
                             f"not its published files ({_WHAT[name]}); reading a pickle can run code it carries: "
                             "add allow_pickle=true to the source name only if you trust where it came from")
        return _read_fedbn_pickles(folder, sorted(folder.glob("partitions/train_part*.pkl")))
    return _READERS[name](folder)


def _domain_folder(root: Path, name: str) -> Path | None:
    """The first candidate folder of ``name`` holding any of its published files, else the first holding
    FedBN's pickled copy, else None."""
    folders = [root / f for f in _FOLDERS[name] if (root / f).is_dir()]
    return next((f for f in folders if _published_present(f, name)), None) or next(
        (f for f in folders if (f / "test.pkl").is_file() and any(f.glob("partitions/train_part*.pkl"))), None)


def _published_present(folder: Path, name: str) -> bool:
    return any(p.name.startswith(_PUBLISHED[name]) for p in folder.iterdir())


def _need(folder: Path, *names: str) -> Path:
    """The first of ``names`` that is a file in ``folder``, else a ``FileNotFoundError`` naming it."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{' or '.join(names)} not found in {folder}: put the published file there")


# ------------------------------------------------------------------------------------------- MNIST
def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file (plain or ``.gz``) whose big-endian header magic must be ``magic``
    (2051: images ``[N, rows, cols]``; 2049: labels ``[N]``)."""
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
        data = handle.read()
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        raise ValueError(f"{path} is not an IDX file of magic {magic} (found {found}): expected the published "
                         "MNIST file")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: the header promises {shape} = {int(np.prod(shape))} bytes, the file holds "
                         f"{body.size}: the file is truncated or not MNIST")
    return body.reshape(shape)


def _read_mnist(folder: Path) -> _Split:
    parts, files = {}, []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        pair = []
        for kind, name in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
            path = _need(folder, name, name + ".gz")
            pair.append(read_idx(path, _IDX_MAGIC[kind]))
            files.append(path)
        parts[split] = _checked(pair[0], pair[1].astype(np.int64), files[-1])
    return _Split(parts["train"], parts["test"], files)


# ---------------------------------------------------------------------------- SVHN and SynthDigits
def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``X`` [32, 32, 3, N] -> [N, 32, 32, 3]; ``y`` [N, 1] with 10 meaning the digit 0."""
    from scipy.io import loadmat

    mat = loadmat(path, variable_names=("X", "y"))
    if "X" not in mat or "y" not in mat or mat["X"].ndim != 4 or mat["X"].shape[2] != 3:
        raise ValueError(f"{path} lacks X [H, W, 3, N] and y [N, 1] (the SVHN .mat layout)")
    labels = mat["y"].reshape(-1).astype(np.int64)
    return _checked(np.ascontiguousarray(mat["X"].transpose(3, 0, 1, 2)), np.where(labels == 10, 0, labels), path)


def _mat_reader(train_name: str, test_name: str):
    def read(folder: Path) -> _Split:
        train, test = _need(folder, train_name), _need(folder, test_name)
        return _Split(_read_svhn_mat(train), _read_svhn_mat(test), [train, test])
    return read


# -------------------------------------------------------------------------------------------- USPS
def _read_usps(folder: Path) -> _Split:
    if (folder / "usps.h5").is_file():
        import h5py

        path = folder / "usps.h5"
        parts = {}
        with h5py.File(path, "r") as h5:
            for split in ("train", "test"):
                if split not in h5 or "data" not in h5[split] or "target" not in h5[split]:
                    raise ValueError(f"{path} lacks {split}/data and {split}/target (the usps.h5 layout)")
                values = np.asarray(h5[split]["data"], np.float64)
                if values.ndim != 2 or values.shape[1] != 256 or values.min() < 0 or values.max() > 1:
                    raise ValueError(f"{path}: {split}/data must be [N, 256] values in [0, 1], got {values.shape}")
                images = np.rint(values * 255).astype(np.uint8).reshape(-1, 16, 16)
                parts[split] = _checked(images, np.asarray(h5[split]["target"]).reshape(-1).astype(np.int64), path)
        return _Split(parts["train"], parts["test"], [path])
    try:
        train, test = _need(folder, "usps.bz2"), _need(folder, "usps.t.bz2")
    except FileNotFoundError:
        raise FileNotFoundError(f"usps.h5, or usps.bz2 and usps.t.bz2, not found in {folder}: put the published "
                                "USPS files there") from None
    return _Split(_read_usps_libsvm(train), _read_usps_libsvm(test), [train, test])


def _read_usps_libsvm(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """LIBSVM lines ``<label 1..10> <index>:<value in [-1, 1]> ...`` -> 16x16 images, digits ``label - 1``."""
    from sklearn.datasets import load_svmlight_file

    try:
        values, labels = load_svmlight_file(str(path), n_features=256)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a LIBSVM file of 256 features: {exc}") from None
    values = values.toarray()
    if values.size and (values.min() < -1 or values.max() > 1):
        raise ValueError(f"{path}: USPS values must lie in [-1, 1]")
    images = np.rint((values + 1) / 2 * 255).astype(np.uint8).reshape(-1, 16, 16)
    return _checked(images, labels.astype(np.int64) - 1, path)


# ----------------------------------------------------------------------------------------- MNIST-M
def _read_mnist_m(folder: Path) -> _Split:
    parts, files = {}, []
    for split in ("train", "test"):
        labels_file = _need(folder, f"mnist_m_{split}_labels.txt")
        images_folder = folder / f"mnist_m_{split}"
        if not images_folder.is_dir():
            raise FileNotFoundError(f"image folder mnist_m_{split}/ not found in {folder}: put the published "
                                    "MNIST-M folders there")
        names, labels = [], []
        for number, line in enumerate(labels_file.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not re.fullmatch(r"\d+", fields[1]):
                raise ValueError(f"{labels_file} line {number}: expected '<file> <digit>', got {line!r}")
            names.append(fields[0])
            labels.append(int(fields[1]))
        images = []
        for name in names:
            path = images_folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{name} (listed in {labels_file.name}) not found in {images_folder}")
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
            files.append(path)
        files.append(labels_file)
        if len({im.shape for im in images}) > 1:
            raise ValueError(f"{images_folder}: images differ in size; MNIST-M images are all 32x32")
        parts[split] = _checked(np.stack(images) if images else np.zeros((0, 32, 32, 3), np.uint8),
                                np.asarray(labels, np.int64), labels_file)
    return _Split(parts["train"], parts["test"], files)


# -------------------------------------------------------------------------------- FedBN's pickles
def _read_fedbn_pickles(folder: Path, parts: list[Path]) -> _Split:
    """``partitions/train_part<k>.pkl`` (k in numeric order) and ``test.pkl``: pickled (images, labels)."""
    parts = sorted(parts, key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        with open(path, "rb") as handle:
            images, labels = pickle.load(handle)  # noqa: S301 - the caller opted in (allow_pickle)
        return _checked(np.asarray(images, np.uint8), np.asarray(labels).reshape(-1).astype(np.int64), path)

    train = [read(p) for p in parts]
    return _Split((np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
                  read(folder / "test.pkl"), parts + [folder / "test.pkl"])


_READERS = {"mnist": _read_mnist, "svhn": _mat_reader("train_32x32.mat", "test_32x32.mat"), "usps": _read_usps,
            "synthdigits": _mat_reader("synth_train_32x32.mat", "synth_test_32x32.mat"), "mnist_m": _read_mnist_m}


# ---------------------------------------------------------------------------------------- helpers
def _checked(images: np.ndarray, labels: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if len(images) != len(labels):
        raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be digits 0..9 after the format's convention, found "
                         f"{labels.min()}..{labels.max()}")
    return images, labels


def _rgb(images: np.ndarray, size: int) -> np.ndarray:
    """[N, H, W] or [N, H, W, 1|3] uint8 -> [N, size, size, 3] uint8 (bilinear resize when H, W != size)."""
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise ValueError(f"digit images must be [N, H, W] or [N, H, W, 3], got {images.shape}")
    if images.shape[1:3] != (size, size):
        images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images]
                          ) if len(images) else np.zeros((0, size, size) + images.shape[3:], np.uint8)
    return images if images.ndim == 4 else np.repeat(images[..., None], 3, axis=-1)
