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


# ----------------------------------------------------------------- the paper's rules with official test splits
@pytest.fixture(scope="module")
def official():
    """Three domains, 10 classes; per domain 40 train and 10 test items per class, shuffled."""
    rng = np.random.default_rng(5)
    domains = np.repeat(np.arange(3), 500)
    labels = np.tile(np.repeat(np.arange(10), 50), 3)
    test = np.tile(np.arange(50) >= 40, 30)
    perm = rng.permutation(domains.size)
    return domains[perm], labels[perm], test[perm]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_domainnet_rule_half_the_client_train_split_the_rest_in_the_pool(official, seed):
    domains, labels, test = official
    split = paper_split(domains, labels, "b", ("a", "b", "c"), seed=seed, rule="domainnet", test_mask=test)
    train, pool, client_test = split.client_train_indices, split.open_indices, split.client_test_indices
    assert np.array_equal(client_test, np.flatnonzero(test & (domains == 1)))  # the official test split
    assert np.all(domains[train] == 1) and not test[train].any()
    assert np.array_equal(np.bincount(labels[train], minlength=10), np.full(10, 20))  # 50% per class
    assert not test[pool].any()  # no official test item of any domain is pool
    assert np.sum(domains[pool] == 1) == 200 and np.sum(domains[pool] == 0) == np.sum(domains[pool] == 2) == 400
    assert np.intersect1d(train, pool).size == 0 and np.intersect1d(pool, client_test).size == 0


def test_digits_rule_the_whole_client_train_split_and_only_other_domains_in_the_pool(official):
    domains, labels, test = official
    split = paper_split(domains, labels, 0, ("a", "b", "c"), seed=1, rule="digits", test_mask=test)
    assert np.array_equal(split.client_train_indices, np.flatnonzero(~test & (domains == 0)))
    assert np.array_equal(split.client_test_indices, np.flatnonzero(test & (domains == 0)))
    assert np.array_equal(split.open_indices, np.flatnonzero(~test & (domains != 0)))


def test_digits_rule_without_official_test_holds_out_a_stratified_part(official):
    domains, labels, _ = official
    split = paper_split(domains, labels, 2, ("a", "b", "c"), seed=1, rule="digits", test_fraction=0.3)
    assert np.array_equal(np.bincount(labels[split.client_test_indices], minlength=10), np.full(10, 15))
    assert len(split.client_train_indices) == 350
    assert np.array_equal(split.open_indices, np.flatnonzero(domains != 2))


def test_the_domainnet_rule_without_a_test_mask_is_the_default_split(arrays):
    domains, labels = arrays
    a, b = paper_split(domains, labels, "street", seed=4), paper_split(domains, labels, "street", seed=4,
                                                                      rule="domainnet", test_mask=None)
    for x, y in zip(_sets(a), _sets(b)):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("rule", ["domainnet", "digits"])
def test_a_rule_split_depends_on_the_seed_only(official, rule):
    domains, labels, test = official
    splits = [paper_split(domains, labels, 1, ("a", "b", "c"), seed=s, rule=rule, test_mask=test) for s in (1, 1, 2)]
    for x, y in zip(_sets(splits[0]), _sets(splits[1])):
        assert np.array_equal(x, y)
    if rule == "domainnet":
        assert not np.array_equal(splits[0].client_train_indices, splits[2].client_train_indices)


def test_rule_errors(official):
    domains, labels, test = official
    with pytest.raises(ValueError, match="rule must be one of"):
        paper_split(domains, labels, 0, ("a", "b", "c"), rule="half")
    with pytest.raises(ValueError, match="test_mask must be a bool array"):
        paper_split(domains, labels, 0, ("a", "b", "c"), test_mask=test[:-1])
    with pytest.raises(ValueError, match="no items in its official test split"):
        paper_split(domains, labels, 0, ("a", "b", "c"), test_mask=np.zeros_like(test))
    one = domains == 0
    with pytest.raises(ValueError, match="leaves the open pool empty"):
        paper_split(domains[one], labels[one], 0, ("a",), rule="digits", test_mask=test[one])
