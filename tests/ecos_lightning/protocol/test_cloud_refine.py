"""CloudSampler.refine: the next round's centroids split the clusters the last answer kept."""

import numpy as np
import pytest

from ecos_lightning.protocol import CentroidsMessage, ClientResponder, CloudSampler, ScoresMessage


def _answered(cloud, pool, client, sigma=0.0, seed=0):
    message = CentroidsMessage.from_bytes(cloud.message_.to_bytes())
    return ScoresMessage.from_bytes(ClientResponder(noise_multiplier=sigma, seed=seed).respond(message, client).to_bytes())


@pytest.mark.parametrize("fp16, pca_dim", [(False, None), (True, 4)])
def test_refine_splits_only_the_kept_clusters_and_partitions_the_pool(mixture, fp16, pca_dim):
    pool, component, client = mixture
    cloud = CloudSampler(num_clusters=20, seed=0, fp16=fp16, pca_dim=pca_dim)
    cloud.fit(pool)
    scores = _answered(cloud, pool, client)
    kept = np.flatnonzero(np.clip(scores.scores, 0, None) > 0)
    refined = cloud.refine(scores, sub_clusters=3)
    message = refined.message_
    assert message.num_clusters == 20 - len(kept) + 3 * len(kept)
    assert message.centroids.dtype == cloud.message_.centroids.dtype and message.encoder == cloud.message_.encoder
    assert np.array_equal(np.bincount(refined.parents_, minlength=20), np.where(np.isin(np.arange(20), kept), 3, 1))
    assert (message.projection is None) == (pca_dim is None)
    # every pool image sits in one new cluster, inside the cluster it came from, each cluster nearest-first
    assert np.array_equal(np.sort(refined.member_order_), np.arange(len(pool)))
    assert np.array_equal(refined.parents_[refined.assignment_], cloud.assignment_)
    for c in range(message.num_clusters):
        members = refined.members(c)
        assert len(members) and np.all(refined.assignment_[members] == c)
    # the unsplit clusters keep their centroid and their member order
    whole = np.flatnonzero(np.bincount(refined.parents_, minlength=20) == 1)
    for new, old in enumerate(whole):
        assert np.array_equal(message.centroids[new], cloud.message_.centroids[old])
        assert np.array_equal(refined.members(new), cloud.members(old))
    # the refined sampler selects from the next round's answer, which is checked against its own centroids
    again = _answered(refined, pool, client, seed=1)
    assert (component[refined.sample(again, 300)] == 2).mean() > 0.9
    with pytest.raises(ValueError):
        refined.select(scores, 300)


def test_refine_is_deterministic_and_leaves_small_clusters_whole(mixture):
    pool, _, client = mixture
    cloud = CloudSampler(num_clusters=20, seed=0)
    cloud.fit(pool)
    scores = _answered(cloud, pool, client)
    first, second = cloud.refine(scores, 4), cloud.refine(scores, 4)
    assert first.message_.to_bytes() == second.message_.to_bytes()
    assert np.array_equal(first.member_order_, second.member_order_)
    huge = cloud.refine(scores, 10_000)  # at most one sub-cluster per MIN_SUB_CLUSTER members
    assert np.all(np.bincount(huge.parents_) <= np.maximum(1, cloud.cluster_sizes_ // 8))


def test_refine_refuses_scores_of_other_centroids_and_an_unfitted_sampler(mixture):
    pool, _, client = mixture
    cloud, other = CloudSampler(num_clusters=20, seed=0), CloudSampler(num_clusters=20, seed=1)
    with pytest.raises(RuntimeError, match="fit"):
        cloud.refine(None, 4)
    cloud.fit(pool)
    other.fit(pool)
    with pytest.raises(ValueError):
        cloud.refine(_answered(other, pool, client), 4)
    with pytest.raises(ValueError, match="sub_clusters"):
        cloud.refine(_answered(cloud, pool, client), 0)
