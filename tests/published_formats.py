"""Tiny datasets written in the exact formats DomainNet, Digits-5 and image-folder collections are published in.

Every writer returns what a reader must find. Digit images are constant (value :func:`digit_value` of
the digit and the item's position), so they survive any resize unchanged and tie each image to its label;
SVHN-layout files can instead carry a pattern (:func:`pattern`) that checks the axis order.
"""

from __future__ import annotations

import bz2
import gzip
import pickle
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from scipy.io import savemat

DIGITS = np.arange(10)


def digit_value(digit: int, position: int) -> int:
    """The constant grey level of digit image ``position`` (labelled ``digit``)."""
    return 20 * int(digit) + position % 7


def digit_labels(n: int, offset: int = 0) -> np.ndarray:
    """``n`` digits 0..9 repeating, starting at ``offset``."""
    return ((np.arange(n) + offset) % 10).astype(np.int64)


def constant_images(labels: np.ndarray, side: int, channels: int = 0) -> np.ndarray:
    """uint8 [N, side, side] (or [..., channels]) constant images of :func:`digit_value`."""
    values = np.asarray([digit_value(d, i) for i, d in enumerate(labels)], np.uint8)
    shape = (len(labels), side, side) + ((channels,) if channels else ())
    return np.broadcast_to(values.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()


def pattern(n: int, side: int = 32) -> np.ndarray:
    """uint8 [N, side, side, 3] images whose pixel (r, c, ch) of item i is (7r + 3c + 50ch + 11i) mod 256."""
    i, r, c, ch = np.ogrid[:n, :side, :side, :3]
    return ((7 * r + 3 * c + 50 * ch + 11 * i) % 256).astype(np.uint8)


# ---------------------------------------------------------------------------------------- Digits-5
def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """An IDX file of uint8 ``array``: magic 0x0800 | ndim, big-endian dims, then the bytes."""
    array = np.ascontiguousarray(array, np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path = Path(str(path) + (".gz" if gz else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if gz else open)(path, "wb") as handle:
        handle.write(header + array.tobytes())
    return path


def write_mnist(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = False) -> dict:
    """The four MNIST IDX files (28x28); returns {"train": labels, "test": labels}."""
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        labels = digit_labels(n)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", constant_images(labels, 28), gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        out[split] = labels
    return out


def write_svhn_mat(path: Path, images: np.ndarray, labels: np.ndarray, zero_as_ten: bool = True) -> Path:
    """SVHN's .mat: ``X`` [32, 32, 3, N] uint8 and ``y`` [N, 1] (the digit 0 stored as 10 unless told)."""
    y = np.where((labels == 0) & zero_as_ten, 10, labels).reshape(-1, 1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"X": np.ascontiguousarray(images.transpose(1, 2, 3, 0)), "y": y})
    return path


def write_svhn_layout(folder: Path, names: tuple[str, str], n_train: int = 20, n_test: int = 10,
                      zero_as_ten: bool = True) -> dict:
    """Train and test .mat files of constant 32x32x3 images; returns {"train": labels, "test": labels}."""
    out = {}
    for name, split, n in ((names[0], "train", n_train), (names[1], "test", n_test)):
        labels = digit_labels(n, 3)
        write_svhn_mat(folder / name, constant_images(labels, 32, 3), labels, zero_as_ten)
        out[split] = labels
    return out


def write_usps_h5(path: Path, n_train: int = 20, n_test: int = 10) -> dict:
    """``usps.h5``: groups train/test with ``data`` [N, 256] in [0, 1] and ``target`` [N]."""
    out = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        for split, n in (("train", n_train), ("test", n_test)):
            labels = digit_labels(n, 5)
            group = h5.create_group(split)
            group["data"] = constant_images(labels, 16).reshape(n, 256) / 255.0
            group["target"] = labels
            out[split] = labels
    return out


def write_usps_libsvm(folder: Path, n_train: int = 20, n_test: int = 10) -> dict:
    """``usps.bz2`` and ``usps.t.bz2``: LIBSVM lines ``<digit + 1> 1:<v> ... 256:<v>``, v in [-1, 1]."""
    out = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name, split, n in (("usps.bz2", "train", n_train), ("usps.t.bz2", "test", n_test)):
        labels = digit_labels(n, 7)
        values = constant_images(labels, 16).reshape(n, 256) / 255.0 * 2 - 1
        lines = [f"{d + 1} " + " ".join(f"{k + 1}:{v:.6f}" for k, v in enumerate(row))
                 for d, row in zip(labels, values)]
        (folder / name).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
        out[split] = labels
    return out


def write_mnist_m(folder: Path, n_train: int = 20, n_test: int = 10) -> dict:
    """``mnist_m_{train,test}/`` PNGs (32x32 RGB) and ``mnist_m_{train,test}_labels.txt``."""
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = digit_labels(n, 1)
        images = constant_images(labels, 32, 3)
        (folder / f"mnist_m_{split}").mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (image, d) in enumerate(zip(images, labels)):
            name = f"{i:08d}.png"
            Image.fromarray(image).save(folder / f"mnist_m_{split}" / name)
            lines.append(f"{name} {d}")
        (folder / f"mnist_m_{split}_labels.txt").write_text("\n".join(lines) + "\n")
        out[split] = labels
    return out


def write_fedbn_pickles(folder: Path, n_parts: int = 2, n_per_part: int = 5, n_test: int = 6) -> dict:
    """FedBN's copy: ``partitions/train_part<k>.pkl`` and ``test.pkl``, each a pickled (images, labels)."""
    (folder / "partitions").mkdir(parents=True, exist_ok=True)
    train = []
    for k in range(n_parts):
        labels = digit_labels(n_per_part, k)
        with open(folder / "partitions" / f"train_part{k}.pkl", "wb") as handle:
            pickle.dump((constant_images(labels, 28), labels), handle)
        train.append(labels)
    labels = digit_labels(n_test)
    with open(folder / "test.pkl", "wb") as handle:
        pickle.dump((constant_images(labels, 28), labels), handle)
    return {"train": np.concatenate(train), "test": labels}


def write_digits5(root: Path, n_train: int = 20, n_test: int = 10) -> dict:
    """All five domains in their published formats under ``root``; returns {domain: {"train", "test"}}."""
    return {"mnist": write_mnist(root / "MNIST", n_train, n_test, gz=True),
            "svhn": write_svhn_layout(root / "svhn", ("train_32x32.mat", "test_32x32.mat"), n_train, n_test),
            "usps": write_usps_h5(root / "usps" / "usps.h5", n_train, n_test),
            "synthdigits": write_svhn_layout(root / "SynthDigits", ("synth_train_32x32.mat", "synth_test_32x32.mat"),
                                             n_train, n_test, zero_as_ten=False),
            "mnist_m": write_mnist_m(root / "mnist_m", n_train, n_test)}


# ------------------------------------------------------------------------------- image-file trees
def write_image(path: Path, value: int, side: int = 8, grey: bool = False) -> Path:
    """A real JPEG or PNG (by suffix) of constant ``value``; ``grey`` writes a one-channel image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side) if grey else (side, side, 3), value, np.uint8)).save(path)
    return path


def write_domainnet(root: Path, domains: tuple[str, ...], classes: tuple[str, ...], n_train: int = 4,
                    n_test: int = 2) -> None:
    """``<domain>/<class>/<domain>_<k>_<i>.jpg`` images and official ``<domain>_{train,test}.txt`` files;
    each class's official index is its position in the sorted ``classes``."""
    index = {c: i for i, c in enumerate(sorted(classes))}
    for domain in domains:
        for split, n in (("train", n_train), ("test", n_test)):
            lines = []
            for cls in classes:
                for i in range(n):
                    rel = f"{domain}/{cls}/{domain}_{index[cls]:03d}_{split}{i:02d}.jpg"
                    write_image(root / rel, 10 * index[cls], grey=domain == "quickdraw")
                    lines.append(f"{rel} {index[cls]}")
            (root / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")


def write_domain_folders(root: Path, counts: dict[str, dict[str, int]]) -> None:
    """``<root>/<domain>/<class>/<i>.png`` with ``counts[domain][class]`` images each."""
    for domain, per_class in counts.items():
        for cls, n in per_class.items():
            for i in range(n):
                write_image(root / domain / cls / f"{i}.{'png' if i % 2 else 'jpg'}", 30 * i % 256)


# ------------------------------------------------------------------------------- litdata
def write_litdata(folder: Path, item, n: int, chunk_size: int = 4) -> Path:
    """``folder``: what ``litdata.optimize`` writes for the items ``item(i)``, i < n, in chunks of
    ``chunk_size`` (its work folders beside ``folder``; the process's multiprocessing start method kept)."""
    import multiprocessing
    import os

    from litdata import optimize

    env = {"DATA_OPTIMIZER_CACHE_FOLDER": f"{folder}-work", "DATA_OPTIMIZER_DATA_CACHE_FOLDER": f"{folder}-data"}
    saved = {key: os.environ.get(key) for key in env}
    start_method = multiprocessing.get_start_method(allow_none=True)  # optimize sets it for the whole process
    os.environ.update(env)
    try:
        optimize(fn=item, inputs=list(range(n)), output_dir=str(folder), chunk_size=chunk_size, num_workers=1,
                 verbose=False, start_method="fork")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        multiprocessing.set_start_method(start_method, force=True)
    return folder
