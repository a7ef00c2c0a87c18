import warnings

import numpy as np
import pytest

from ecos_lightning.protocol import (CentroidsMessage, ClientResponder, CloudSampler, ScoresMessage,
                                     noise_multiplier_for_epsilon)
from ecos_lightning.protocol.baselines import run_baseline


def _round_trip(cloud, open_features, client_features, sigma, seed=0):
    down = CentroidsMessage.from_bytes(cloud.fit(open_features).to_bytes())
    up = ClientResponder(noise_multiplier=sigma, seed=seed).respond(down, client_features)
    return ScoresMessage.from_bytes(up.to_bytes())


def test_ecos_without_noise_samples_the_client_component(mixture):
    open_features, component, client = mixture
    cloud = CloudSampler(num_clusters=40, seed=0)
    idx = cloud.sample(_round_trip(cloud, open_features, client, sigma=0.0), budget=500)
    assert len(idx) == 500 and len(np.unique(idx)) == 500
    assert (component[idx] == 2).mean() >= 0.95


def test_ecos_at_epsilon_one_still_samples_the_client_component(mixture):
    open_features, component, client = mixture
    sigma = noise_multiplier_for_epsilon(1.0, 1e-5)
    for seed in range(3):
        cloud = CloudSampler(num_clusters=40, seed=seed)
        up = _round_trip(cloud, open_features, client, sigma=sigma, seed=seed)
        assert up.epsilon <= 1.0
        idx = cloud.sample(up, budget=500)
        assert (component[idx] == 2).mean() >= 0.90


def test_random_baseline_takes_the_component_share(mixture):
    open_features, component, _ = mixture
    shares = [(component[run_baseline("random", open_features, 500, seed=s)] == 2).mean() for s in range(5)]
    assert 0.15 <= np.mean(shares) <= 0.25


def test_selection_is_deterministic_and_has_provenance(mixture):
    open_features, _, client = mixture
    runs = []
    for _ in range(2):
        cloud = CloudSampler(num_clusters=40, seed=3)
        runs.append(cloud.select(_round_trip(cloud, open_features, client, sigma=4.0, seed=7), budget=300))
    a, b = runs
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.indices.dtype == np.int64 and len(np.unique(a.indices)) == 300
    np.testing.assert_array_equal(a.clusters, cloud.assignment_[a.indices])
    assert a.allocation.sum() == 300
    assert np.all(a.allocation[~a.kept] == 0)
    assert np.all(a.scores > 0)


def test_allocation_follows_scores_inside_each_cluster_near_the_centroid(mixture):
    open_features, _, _ = mixture
    cloud = CloudSampler(num_clusters=10, seed=0)
    down = cloud.fit(open_features)
    scores = np.zeros(10, dtype=np.float32)
    scores[[1, 4]] = [300.0, 100.0]
    up = ScoresMessage(scores, 0.0, 1, 1e-5, float("inf"), down.digest())
    sel = cloud.select(up, budget=200)
    assert sel.allocation[1] == 150 and sel.allocation[4] == 50
    assert set(np.unique(sel.clusters)) == {1, 4}
    # candidates come from the 3x nearest members of the cluster
    nearest_450 = set(cloud.members(1)[:450].tolist())
    assert set(sel.indices[sel.clusters == 1].tolist()) <= nearest_450


def test_budget_larger_than_pool_returns_whole_pool_with_warning(mixture):
    open_features, _, client = mixture
    small = open_features[:50]
    cloud = CloudSampler(num_clusters=5, seed=0)
    up = _round_trip(cloud, small, client, sigma=0.0)
    with pytest.warns(UserWarning, match="whole pool"):
        idx = cloud.sample(up, budget=80)
    np.testing.assert_array_equal(np.sort(idx), np.arange(50))


def test_budget_above_kept_capacity_is_filled_from_other_clusters(mixture):
    open_features, _, _ = mixture
    cloud = CloudSampler(num_clusters=20, seed=0)
    down = cloud.fit(open_features)
    scores = np.zeros(20, dtype=np.float32)
    scores[0] = 50.0
    up = ScoresMessage(scores, 0.0, 1, 1e-5, float("inf"), down.digest())
    budget = int(cloud.cluster_sizes_[0]) + 30
    with pytest.warns(UserWarning, match="more from the other clusters"):
        idx = cloud.sample(up, budget=budget)
    assert len(idx) == budget and len(np.unique(idx)) == budget


def test_more_clusters_than_points_gives_one_point_per_cluster():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(12, 8)).astype(np.float32)
    cloud = CloudSampler(num_clusters=30, seed=0)
    with pytest.warns(UserWarning, match="one point per cluster"):
        down = cloud.fit(points)
    assert down.num_clusters == 12
    np.testing.assert_array_equal(np.sort(cloud.assignment_), np.arange(12))
    up = ClientResponder(noise_multiplier=0.0).respond(down, points[:3])
    np.testing.assert_array_equal(np.sort(cloud.sample(up, budget=3)), np.arange(3))


@pytest.mark.parametrize("value", [0.0, -5.0])
def test_all_zero_or_negative_scores_fall_back_to_uniform(mixture, value):
    open_features, _, _ = mixture
    cloud = CloudSampler(num_clusters=10, seed=0)
    down = cloud.fit(open_features)
    up = ScoresMessage(np.full(10, value, dtype=np.float32), 1.0, 1, 1e-5, 5.0, down.digest())
    with pytest.warns(UserWarning, match="uniform"):
        sel = cloud.select(up, budget=100)
    assert len(sel.indices) == 100 and (sel.allocation > 0).sum() == 10
    assert np.all(sel.allocation >= 9) and np.all(sel.allocation <= 11)


def test_scores_below_the_noise_floor_keep_positive_clusters_with_warning(mixture):
    open_features, _, _ = mixture
    cloud = CloudSampler(num_clusters=10, seed=0)
    down = cloud.fit(open_features)
    scores = np.array([2.0, -1.0] + [0.0] * 8, dtype=np.float32)
    up = ScoresMessage(scores, 4.0, 1, 1e-5, 1.2, down.digest())
    with pytest.warns(UserWarning, match="noise threshold"):
        sel = cloud.select(up, budget=20)
    assert set(np.unique(sel.clusters)) == {0}


def test_pca_and_fp16_messages_still_select_the_component(mixture):
    open_features, component, client = mixture
    cloud = CloudSampler(num_clusters=40, seed=0, fp16=True, pca_dim=8)
    down = cloud.fit(open_features)
    assert down.centroids.dtype == np.float16 and down.centroids.shape == (40, 8)
    assert down.projection.shape == (32, 8)
    full_bytes = len(CloudSampler(num_clusters=40, seed=0).fit(open_features).to_bytes())
    assert len(down.to_bytes()) < full_bytes
    up = ClientResponder(noise_multiplier=0.0).respond(CentroidsMessage.from_bytes(down.to_bytes()), client)
    assert (component[cloud.sample(up, budget=500)] == 2).mean() >= 0.95


def test_scores_for_other_centroids_are_rejected(mixture):
    open_features, _, client = mixture
    a, b = CloudSampler(num_clusters=10, seed=0), CloudSampler(num_clusters=10, seed=1)
    down = a.fit(open_features)
    up = ClientResponder(noise_multiplier=0.0).respond(b.fit(open_features[::-1].copy()), client)
    with pytest.raises(ValueError, match="centroids_digest"):
        a.sample(up, budget=10)
    short = ScoresMessage(np.ones(9, dtype=np.float32), 0.0, 1, 1e-5, float("inf"), down.digest())
    with pytest.raises(ValueError, match="length 9"):
        a.sample(short, budget=10)


@pytest.mark.parametrize("features, match", [
    (np.zeros((0, 4), np.float32), "open_features is empty"),
    (np.zeros(10, np.float32), "open_features must be 2-D"),
    (np.array([[0.0, np.nan]] * 3, np.float32), "open_features has 3 row"),
])
def test_fit_rejects_bad_features(features, match):
    with pytest.raises(ValueError, match=match):
        CloudSampler(num_clusters=2).fit(features)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_clusters": 0}, "num_clusters"),
    ({"num_clusters": -3}, "num_clusters"),
    ({"num_clusters": 2.5}, "num_clusters"),
    ({"noise_z": -1.0}, "noise_z"),
    ({"pca_dim": 0}, "pca_dim"),
])
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CloudSampler(**kwargs)


@pytest.mark.parametrize("budget", [0, -1])
def test_sample_rejects_non_positive_budget(mixture, budget):
    open_features, _, client = mixture
    cloud = CloudSampler(num_clusters=5)
    up = _round_trip(cloud, open_features, client, sigma=0.0)
    with pytest.raises(ValueError, match="budget"):
        cloud.sample(up, budget=budget)


def test_sample_before_fit_is_an_error():
    up = ScoresMessage(np.ones(3, dtype=np.float32), 0.0, 1, 1e-5, float("inf"), "ab" * 32)
    with pytest.raises(RuntimeError, match="fit"):
        CloudSampler(num_clusters=3).sample(up, budget=1)


def test_features_are_not_copied_when_already_float32(mixture):
    open_features, _, _ = mixture
    cloud = CloudSampler(num_clusters=5)
    cloud.fit(open_features)
    assert cloud.features_ is open_features
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cloud.fit(open_features.astype(np.float64))


def test_restored_sampler_selects_exactly_like_the_fitted_one(mixture):
    open_features, _, client = mixture
    cloud = CloudSampler(num_clusters=20, seed=0)
    up = _round_trip(cloud, open_features, client, sigma=2.0, seed=4)
    restored = CloudSampler.restore(CentroidsMessage.from_bytes(cloud.message_.to_bytes()), open_features,
                                    cloud.assignment_.copy(), cloud.member_order_.copy())
    np.testing.assert_array_equal(restored.sample(up, 250), cloud.sample(up, 250))
    with pytest.raises(ValueError, match="assignment and member_order"):
        CloudSampler.restore(cloud.message_, open_features, cloud.assignment_[:-1], cloud.member_order_)


def test_progress_shows_kmeans_iterations_and_assignment(mixture, capsys):
    open_features, _, _ = mixture
    CloudSampler(num_clusters=5, seed=0, progress=True).fit(open_features)
    err = capsys.readouterr().err
    assert "assigning to centroids" in err


@pytest.mark.parametrize("pool", [np.ones((200, 8), np.float32),  # every row identical
                                  np.repeat(np.eye(8, dtype=np.float32), 25, axis=0)])  # 8 groups of 25
def test_duplicate_pools_give_budget_unique_indices(pool):
    cloud = CloudSampler(num_clusters=20, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        up = _round_trip(cloud, pool, pool[:40], sigma=1.0)
        restored = CloudSampler.restore(cloud.message_, pool, cloud.assignment_, cloud.member_order_)
        for budget in (1, 10, 100, len(pool) - 1, len(pool)):
            for sampler in (cloud, restored):
                idx = sampler.select(up, budget).indices
                assert len(idx) == len(np.unique(idx)) == budget and idx.max() < len(pool)


def test_restore_refuses_a_member_order_with_repeats(mixture):
    open_features, _, client = mixture
    cloud = CloudSampler(num_clusters=20, seed=0)
    cloud.fit(open_features)
    repeated = cloud.member_order_.copy()
    repeated[1] = repeated[0]
    shuffled = np.random.default_rng(0).permutation(cloud.member_order_)
    for member_order in (repeated, shuffled):
        with pytest.raises(ValueError, match="every pool index once, grouped by cluster"):
            CloudSampler.restore(cloud.message_, open_features, cloud.assignment_, member_order)


def test_the_cpu_path_gives_the_same_proxy_at_any_thread_count():
    rng = np.random.default_rng(3)
    pool = rng.normal(size=(5000, 32)).astype(np.float32)
    scores = None
    picks = []
    for threads in (1, 2):
        cloud = CloudSampler(num_clusters=40, seed=0, use_gpu=False, num_threads=threads)
        message = cloud.fit(pool)
        scores = scores or ClientResponder(noise_multiplier=1.0, seed=0).respond(message, pool[:300])
        picks.append((message.to_bytes(), cloud.sample(scores, budget=200)))
    assert picks[0][0] == picks[1][0]  # the same centroids, bit for bit
    np.testing.assert_array_equal(picks[0][1], picks[1][1])
