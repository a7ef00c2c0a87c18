"""Digits-5 read from tiny files in each dataset's published format."""

import numpy as np
import pytest
from published_formats import (constant_images, digit_labels, digit_value, pattern, write_digits5,
                               write_fedbn_pickles, write_idx, write_mnist, write_svhn_layout, write_svhn_mat,
                               write_usps_h5, write_usps_libsvm)

from ecos_lightning.data import DIGITS5_DOMAINS, ArrayImageDataset, load_digits5, read_idx


def expected_values(labels):
    return np.asarray([digit_value(d, i) for i, d in enumerate(labels)])


def check_split(data, domain_id, labels, is_test):
    """The items of one domain's split: labels as written, each image constant at its label's value, RGB."""
    items = data.items
    at = np.flatnonzero((items.domains == domain_id) & (data.test_mask == is_test))
    assert np.array_equal(items.labels[at], labels)
    images = items.images[at]
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    assert np.array_equal(images[:, 0, 0, 0], expected_values(labels))
    assert np.all(images == images[:, :1, :1, :1])  # constant over pixels and channels


def test_all_five_domains_read_with_their_label_conventions(tmp_path):
    written = write_digits5(tmp_path, n_train=12, n_test=7)
    data = load_digits5(tmp_path)
    assert isinstance(data.items, ArrayImageDataset)
    assert data.items.domain_names == DIGITS5_DOMAINS and data.items.num_classes == 10
    assert len(data.items) == 5 * 19 and data.test_mask.sum() == 5 * 7
    assert data.items.domain_counts() == {d: 19 for d in DIGITS5_DOMAINS}
    for d, name in enumerate(DIGITS5_DOMAINS):
        check_split(data, d, written[name]["train"], False)
        check_split(data, d, written[name]["test"], True)
    assert {f.name for f in data.files} >= {"train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                                             "train_32x32.mat", "usps.h5", "synth_test_32x32.mat",
                                             "mnist_m_train_labels.txt", "00000000.png"}


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_plain_and_gzipped(tmp_path, gz):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    assert np.array_equal(read_idx(write_idx(tmp_path / "x-images-idx3-ubyte", images, gz), 2051), images)
    labels = np.array([7, 0, 9], np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / "x-labels-idx1-ubyte", labels, gz), 2049), labels)


def test_idx_header_is_checked(tmp_path):
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 2], np.uint8))
    with pytest.raises(ValueError, match="magic 2051 .found 2049.") as err:
        read_idx(labels, 2051)
    assert str(labels) in str(err.value)
    truncated = tmp_path / "t10k-images-idx3-ubyte"
    truncated.write_bytes(write_idx(tmp_path / "full", np.zeros((2, 3, 3), np.uint8)).read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(truncated, 2051)


def test_mnist_28px_comes_out_resized_grey_in_three_channels(tmp_path):
    written = write_mnist(tmp_path / "mnist", n_train=10, n_test=4)
    for size in (32, 28):
        data = load_digits5(tmp_path, domains=("mnist",), size=size)
        assert data.items.images.shape == (14, size, size, 3)
        assert np.array_equal(data.items.labels, np.concatenate([written["train"], written["test"]]))
        assert np.array_equal(data.items.images[:10, 5, 5, 2], expected_values(written["train"]))


def test_svhn_stores_zero_as_ten_and_keeps_the_axis_order(tmp_path):
    labels = np.array([0, 1, 9, 0, 5])
    write_svhn_mat(tmp_path / "SVHN" / "train_32x32.mat", pattern(5), labels)
    write_svhn_mat(tmp_path / "SVHN" / "test_32x32.mat", pattern(2), labels[:2])
    data = load_digits5(tmp_path, domains=("svhn",))
    assert data.items.labels.tolist() == [0, 1, 9, 0, 5, 0, 1]
    assert np.array_equal(data.items.images[:5], pattern(5))


@pytest.mark.parametrize("zero_as_ten", [True, False])
def test_synthdigits_reads_zero_stored_either_way(tmp_path, zero_as_ten):
    written = write_svhn_layout(tmp_path / "synth", ("synth_train_32x32.mat", "synth_test_32x32.mat"),
                                zero_as_ten=zero_as_ten)
    data = load_digits5(tmp_path, domains=("synthdigits",))
    assert np.array_equal(data.items.labels, np.concatenate([written["train"], written["test"]]))
    assert 0 in data.items.labels


def test_usps_hdf5_and_libsvm_give_the_same_images(tmp_path):
    h5 = write_usps_h5(tmp_path / "a" / "usps" / "usps.h5")
    svm = write_usps_libsvm(tmp_path / "b" / "USPS")
    a = load_digits5(tmp_path / "a", domains=("usps",), size=16)
    b = load_digits5(tmp_path / "b", domains=("usps",), size=16)
    assert np.array_equal(a.items.labels, np.concatenate([h5["train"], h5["test"]]))
    # LIBSVM labels 1..10 are the digits 0..9
    assert np.array_equal(b.items.labels, np.concatenate([svm["train"], svm["test"]]))
    assert np.array_equal(b.items.images[:20, 0, 0, 0], expected_values(svm["train"]))
    assert np.array_equal(a.items.images[:20, 0, 0, 0], expected_values(h5["train"]))


@pytest.mark.parametrize("domain,remove,folder", [
    ("mnist", "MNIST/t10k-labels-idx1-ubyte.gz", "MNIST"),
    ("svhn", "svhn/test_32x32.mat", "svhn"),
    ("usps", "usps/usps.h5", "usps"),
    ("synthdigits", "SynthDigits/synth_train_32x32.mat", "SynthDigits"),
    ("mnist_m", "mnist_m/mnist_m_test_labels.txt", "mnist_m"),
    ("mnist_m", "mnist_m/mnist_m_train/00000003.png", "mnist_m/mnist_m_train"),
])
def test_a_missing_file_is_named_with_the_folder_it_was_looked_for_in(tmp_path, domain, remove, folder):
    write_digits5(tmp_path, n_train=4, n_test=2)
    (tmp_path / remove).unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_digits5(tmp_path, domains=(domain,))
    message = str(err.value)
    assert "\n" not in message and remove.rsplit("/", 1)[-1].removesuffix(".gz") in message
    assert str(tmp_path / folder) in message


def test_a_missing_domain_or_root_names_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="Digits-5 folder not found"):
        load_digits5(tmp_path / "nowhere")
    write_mnist(tmp_path / "mnist")
    with pytest.raises(FileNotFoundError, match=r"'svhn' not found: no folder svhn or SVHN in .*train_32x32.mat"):
        load_digits5(tmp_path)
    with pytest.raises(ValueError, match="unknown Digits-5 domains"):
        load_digits5(tmp_path, domains=("kmnist",))


def test_a_pickled_copy_is_refused_unless_allowed(tmp_path):
    written = write_fedbn_pickles(tmp_path / "MNIST")
    with pytest.raises(ValueError, match="allow_pickle=true") as err:
        load_digits5(tmp_path, domains=("mnist",))
    assert str(tmp_path / "MNIST") in str(err.value) and "\n" not in str(err.value)
    data = load_digits5(tmp_path, domains=("mnist",), allow_pickle=True)
    assert np.array_equal(data.items.labels, np.concatenate([written["train"], written["test"]]))
    assert data.items.images.shape == (16, 32, 32, 3) and data.test_mask.sum() == 6


def test_labels_out_of_range_are_refused(tmp_path):
    labels = digit_labels(4)
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", constant_images(labels, 28))
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", labels + 10)
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", constant_images(labels, 28))
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(ValueError, match="digits 0..9"):
        load_digits5(tmp_path, domains=("mnist",))


def test_published_files_win_over_a_pickled_copy_beside_them(tmp_path):
    write_fedbn_pickles(tmp_path / "MNIST")
    written = write_mnist(tmp_path / "MNIST", n_train=10, n_test=4)
    data = load_digits5(tmp_path, domains=("mnist",))  # no allow_pickle needed: the pickles are not read
    assert np.array_equal(data.items.labels, np.concatenate([written["train"], written["test"]]))
    assert not any(f.suffix == ".pkl" for f in data.files)
