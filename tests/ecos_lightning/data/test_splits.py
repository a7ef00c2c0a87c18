"""Tests of the client/open domain split."""

import numpy as np
import pytest

from ecos_lightning.data import DOMAINS, DomainSplit, paper_split


@pytest.fixture(scope="module")
def arrays():
    """A synthetic layout like digits-lite: 5 domains, balanced classes, shuffled order."""
    rng = np.random.default_rng(123)
    sizes = [1740, 2000, 2000, 2000, 2000]
    domains = np.concatenate([np.full(n, d) for d, n in enumerate(sizes)]).astype(np.int64)
    labels = np.concatenate([np.repeat(np.arange(10), n // 10) for n in sizes]).astype(np.int64)
    perm = rng.permutation(len(domains))
    return domains[perm], labels[perm]


def _sets(split: DomainSplit):
    return split.open_indices, split.client_train_indices, split.client_test_indices


@pytest.mark.parametrize("client", list(range(5)) + list(DOMAINS))
def test_disjoint_covering_sorted(arrays, client):
    domains, labels = arrays
    split = paper_split(domains, labels, client)
    parts = _sets(split)
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)
    everything = np.concatenate(parts)
    assert len(everything) == len(domains)
    assert np.array_equal(np.sort(everything), np.arange(len(domains)))
    name = client if isinstance(client, str) else DOMAINS[client]
    assert split.client_domain == name


def test_client_data_comes_from_client_domain(arrays):
    domains, labels = arrays
    split = paper_split(domains, labels, "street")
    d = DOMAINS.index("street")
    assert np.all(domains[split.client_train_indices] == d)
    assert np.all(domains[split.client_test_indices] == d)
    # The open pool holds every other domain in full, and the rest of the client domain.
    for other in range(5):
        if other != d:
            assert np.sum(domains[split.open_indices] == other) == np.sum(domains == other)
    assert np.sum(domains[split.open_indices] == d) == 1000


def test_proportions(arrays):
    domains, labels = arrays
    split = paper_split(domains, labels, "printed")
    assert len(split.client_train_indices) + len(split.client_test_indices) == 1000
    assert len(split.client_test_indices) == 300
    assert len(split.client_train_indices) == 700

    split = paper_split(domains, labels, "handwritten", client_fraction=0.25, test_fraction=0.5)
    n_client = len(split.client_train_indices) + len(split.client_test_indices)
    assert abs(n_client - 0.25 * 1740) <= 10
    assert abs(len(split.client_test_indices) - 0.5 * n_client) <= 10


def test_stratified(arrays):
    domains, labels = arrays
    split = paper_split(domains, labels, "blended", client_fraction=0.4, test_fraction=0.25)
    d = DOMAINS.index("blended")
    domain_counts = np.bincount(labels[domains == d], minlength=10)
    client = np.concatenate([split.client_train_indices, split.client_test_indices])
    assert np.array_equal(np.bincount(labels[client], minlength=10), np.round(domain_counts * 0.4))
    assert np.array_equal(np.bincount(labels[split.client_test_indices], minlength=10), np.full(10, 20))
    assert np.array_equal(np.bincount(labels[split.client_train_indices], minlength=10), np.full(10, 60))


def test_deterministic_and_seed_dependent(arrays):
    domains, labels = arrays
    a = paper_split(domains, labels, 3, seed=7)
    b = paper_split(domains, labels, "street", seed=7)
    for x, y in zip(_sets(a), _sets(b)):
        assert np.array_equal(x, y)
    c = paper_split(domains, labels, 3, seed=8)
    assert not np.array_equal(a.client_train_indices, c.client_train_indices)


def test_accepts_lists_and_numpy_ints(arrays):
    domains, labels = arrays
    a = paper_split(list(domains), list(labels), np.int64(1), seed=np.int64(2))
    b = paper_split(domains, labels, 1, seed=2)
    assert np.array_equal(a.client_test_indices, b.client_test_indices)


def test_custom_domain_names():
    domains = np.repeat([0, 1], 100)
    labels = np.tile(np.arange(2), 100)
    split = paper_split(domains, labels, "b", domain_names=("a", "b"))
    assert split.client_domain == "b"
    assert np.all(split.client_train_indices >= 100)


@pytest.mark.parametrize("bad", ["mnist", 5, -1, 1.0, None, True])
def test_unknown_domain_lists_valid_values(arrays, bad):
    domains, labels = arrays
    with pytest.raises(ValueError, match="client_domain") as err:
        paper_split(domains, labels, bad)
    assert "handwritten" in str(err.value) and "lowres" in str(err.value)


@pytest.mark.parametrize("name", ["client_fraction", "test_fraction"])
@pytest.mark.parametrize("value", [0.0, 1.0, -0.2, 1.5, "0.5", None])
def test_bad_fractions(arrays, name, value):
    domains, labels = arrays
    with pytest.raises(ValueError, match=name) as err:
        paper_split(domains, labels, 0, **{name: value})
    assert "(0, 1)" in str(err.value)


def test_bad_arrays_and_seed(arrays):
    domains, labels = arrays
    with pytest.raises(ValueError, match="domains and labels"):
        paper_split(domains, labels[:-1], 0)
    with pytest.raises(ValueError, match="seed"):
        paper_split(domains, labels, 0, seed=-1)
    with pytest.raises(ValueError, match="no samples"):
        paper_split(np.zeros(10, np.int64), np.arange(10), "lowres")
