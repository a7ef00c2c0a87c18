import numpy as np
import pytest

from ecos_lightning.protocol.baselines import BASELINES, run_baseline


@pytest.mark.parametrize("name", ["random", "kcenter", "upload"])
def test_budget_met_with_unique_indices_and_deterministic(mixture, name):
    open_features, _, client = mixture
    a = run_baseline(name, open_features, 300, client_features=client, seed=1)
    b = run_baseline(name, open_features, 300, client_features=client, seed=1)
    assert a.dtype == np.int64 and len(a) == 300 and len(np.unique(a)) == 300
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() < len(open_features)


def test_full_returns_everything(mixture):
    open_features, _, _ = mixture
    np.testing.assert_array_equal(run_baseline("full", open_features, 10), np.arange(len(open_features)))


def test_upload_takes_nearest_neighbours_of_client_features(mixture):
    open_features, component, client = mixture
    idx = run_baseline("upload", open_features, 500, client_features=client)
    assert (component[idx] == 2).mean() == 1.0
    first = run_baseline("upload", open_features, 1, client_features=client[:1])
    assert first[0] == np.argmin(((open_features - client[0]) ** 2).sum(1))


def test_upload_goes_deeper_when_neighbours_overlap():
    points = np.arange(100, dtype=np.float32)[:, None]
    client = np.zeros((5, 1), np.float32)
    np.testing.assert_array_equal(np.sort(run_baseline("upload", points, 40, client_features=client)),
                                  np.arange(40))


def test_kcenter_is_diverse_without_client_information(mixture):
    open_features, component, _ = mixture
    idx = run_baseline("kcenter", open_features, 100, seed=0)
    assert len(np.unique(component[idx])) == 5


def test_budget_larger_than_pool_warns_and_returns_pool(mixture):
    open_features, _, _ = mixture
    with pytest.warns(UserWarning, match="whole pool"):
        idx = run_baseline("random", open_features[:20], 50)
    np.testing.assert_array_equal(idx, np.arange(20))


@pytest.mark.parametrize("name, kwargs, match", [
    ("nope", {}, "unknown baseline 'nope'"),
    ("upload", {}, "client_features is required"),
    ("upload", {"client_features": np.zeros((3, 2), np.float32)}, "dimension 2"),
    ("random", {"budget": 0}, "budget"),
])
def test_errors_name_the_problem(mixture, name, kwargs, match):
    open_features, _, _ = mixture
    kwargs = {"budget": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        run_baseline(name, open_features, kwargs.pop("budget"), **kwargs)


def test_all_baselines_share_one_signature(mixture):
    open_features, _, client = mixture
    for fn in BASELINES.values():
        assert len(fn(open_features, 5, client_features=client, seed=0)) >= 5


@pytest.mark.parametrize("pool", [np.ones((200, 8), np.float32),  # every row identical
                                  np.repeat(np.eye(8, dtype=np.float32), 25, axis=0)])  # 8 groups of 25
@pytest.mark.parametrize("name", ["random", "kcenter", "upload"])
def test_duplicate_pools_give_budget_unique_indices(name, pool):
    for budget in (1, 10, 100, len(pool) - 1):
        idx = run_baseline(name, pool, budget, client_features=pool[:40], seed=3)
        assert len(idx) == len(np.unique(idx)) == budget and 0 <= idx.min() and idx.max() < len(pool)
