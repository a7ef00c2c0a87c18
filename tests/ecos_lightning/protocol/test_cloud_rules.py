"""The cloud's sampling rules as switches (threshold, candidate factor, within-cluster pick) and the remedy
every sampling warning names."""

import math
import warnings

import numpy as np
import pytest

from ecos_lightning.protocol import CentroidsMessage, ClientResponder, CloudSampler, ScoresMessage
from ecos_lightning.protocol.selection import select_near_centroid


def _fitted(open_features, k=10, **rules):
    cloud = CloudSampler(num_clusters=k, seed=0, **rules)
    return cloud, cloud.fit(open_features)


def _scores(down, values, noise_std=0.0):
    return ScoresMessage(np.asarray(values, dtype=np.float32), noise_std, 1, 1e-5, 1.0 if noise_std else math.inf,
                         down.digest())


def _select(cloud, up, budget):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        selection = cloud.select(up, budget)
    return selection, [str(w.message) for w in caught]


def test_nearest_first_takes_each_clusters_nearest_members(mixture):
    cloud, down = _fitted(mixture[0], within_cluster="nearest")
    sel, _ = _select(cloud, _scores(down, [0, 300, 0, 0, 100, 0, 0, 0, 0, 0]), 200)
    assert sel.allocation[1] == 150 and sel.allocation[4] == 50
    for c in (1, 4):
        assert set(sel.indices[sel.clusters == c].tolist()) == set(cloud.members(c)[:sel.allocation[c]].tolist())


def test_kcenter_spreads_out_more_than_nearest_first(mixture):
    spread = {}
    for within in ("kcenter", "nearest"):
        cloud, down = _fitted(mixture[0], within_cluster=within)
        sel, _ = _select(cloud, _scores(down, [0, 300] + [0] * 8), 60)
        picked = mixture[0][sel.indices]
        spread[within] = np.linalg.norm(picked - picked.mean(0), axis=1).mean()
    assert spread["kcenter"] > spread["nearest"]


def test_random_within_cluster_is_seeded_and_uses_the_candidate_factor(mixture):
    runs = []
    for factor in (3.0, 3.0, math.inf):
        cloud, down = _fitted(mixture[0], within_cluster="random", candidate_factor=factor)
        runs.append((cloud, _select(cloud, _scores(down, [0, 300] + [0] * 8), 100)[0]))
    (cloud, a), (_, b), (_, every) = runs
    np.testing.assert_array_equal(a.indices, b.indices)  # same seed, same picks
    assert set(a.indices.tolist()) <= set(cloud.members(1)[:300].tolist())  # among the 3x nearest
    assert not set(every.indices.tolist()) <= set(cloud.members(1)[:300].tolist())  # inf: any member
    assert len(np.unique(every.indices)) == 100


def test_without_threshold_every_positive_cluster_gets_budget(mixture):
    values = [40.0, 2.0, 1.0, 0.5, 0.0, -3.0, 0.0, 0.0, 0.0, 0.0]  # noise std 2: threshold 6 keeps cluster 0 only
    for noise_z, expected in ((3.0, {0}), (0.0, {0, 1, 2, 3})):
        cloud, down = _fitted(mixture[0], noise_z=noise_z)
        sel, _ = _select(cloud, _scores(down, values, noise_std=2.0), 200)
        assert set(np.flatnonzero(sel.allocation).tolist()) == expected
        assert set(np.flatnonzero(sel.kept).tolist()) == expected


def test_plain_score_proportional_sampling(mixture):
    """No threshold, uniform random within clusters over every member: allocation follows the clipped scores."""
    cloud, down = _fitted(mixture[0], noise_z=0.0, within_cluster="random", candidate_factor=math.inf)
    sel, _ = _select(cloud, _scores(down, [30.0, 10.0, -5.0] + [0.0] * 7, noise_std=8.0), 80)
    assert sel.allocation[:3].tolist() == [60, 20, 0] and sel.allocation.sum() == 80


def test_select_near_centroid_rejects_unknown_rules():
    members = np.arange(10)
    with pytest.raises(ValueError, match="within"):
        select_near_centroid(np.zeros((10, 2), np.float32), members, 3, 3.0, within="farthest")
    with pytest.raises(ValueError, match="rng"):
        select_near_centroid(np.zeros((10, 2), np.float32), members, 3, 3.0, within="random")


@pytest.mark.parametrize("kwargs, match", [({"within_cluster": "farthest"}, "within_cluster"),
                                           ({"candidate_factor": 0.5}, "candidate_factor"),
                                           ({"candidate_factor": "3"}, "candidate_factor")])
def test_constructor_rejects_bad_rules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CloudSampler(num_clusters=4, **kwargs)


# ------------------------------------------------------------------------------ warnings name the remedy
def _warned(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    assert caught, "expected a warning"
    return result, [str(w.message) for w in caught]


def test_every_sampling_warning_names_its_remedy(mixture):
    open_features, _, client = mixture
    rng = np.random.default_rng(0)
    points = rng.normal(size=(12, 8)).astype(np.float32)
    _, messages = _warned(lambda: CloudSampler(num_clusters=30).fit(points))  # more clusters than points
    assert "num_clusters='auto'" in messages[0] and "num_clusters <= 1" in messages[0]
    _, messages = _warned(lambda: CloudSampler(num_clusters=10).fit(open_features[:200]))  # under 39 per centroid
    assert "num_clusters='auto'" in messages[0] and "num_clusters <= 5" in messages[0]

    cloud, down = _fitted(open_features)
    _, (message,) = _warned(lambda: cloud.select(_scores(down, [2.0] + [0.0] * 9, noise_std=4.0), 20))
    assert "noise threshold 12.00" in message and "num_clusters='auto' or fewer clusters" in message \
        and "lower noise_multiplier" in message
    _, (message,) = _warned(lambda: cloud.select(_scores(down, [0.0] * 10, noise_std=4.0), 20))
    assert "uniform" in message and "num_clusters='auto'" in message
    _, (message,) = _warned(lambda: cloud.select(_scores(down, [50.0] + [0.0] * 9), int(cloud.cluster_sizes_[0]) + 5))
    assert f"use a budget <= {int(cloud.cluster_sizes_[0])}" in message and "num_clusters='auto'" in message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 10 points per centroid: its own warning, checked above
        small, small_down = _fitted(open_features[:50], k=5)
    up = ClientResponder(noise_multiplier=0.0).respond(CentroidsMessage.from_bytes(small_down.to_bytes()), client)
    _, (message,) = _warned(lambda: small.select(up, 80))
    assert "whole pool" in message and "budget <= 50" in message


def test_baseline_budget_warning_names_its_remedy(mixture):
    from ecos_lightning.protocol.baselines import run_baseline

    _, (message,) = _warned(lambda: run_baseline("random", mixture[0][:50], 80, seed=0))
    assert "whole pool" in message and "budget <= 50" in message
