"""``CloudSampler(neighbour_z=...)``: a dropped cluster just under the noise threshold is kept when its nearest
centroid is a kept cluster's, and only then."""

import math
import warnings

import numpy as np
import pytest

from ecos_lightning.protocol import CentroidsMessage, CloudSampler, ScoresMessage

# Six tight 2-D blobs of 200 points: the client's region A, B, C in a row (C the weak end), and an out-of-domain
# group D, E, F far from it (D's nearest centroid is E's).
CENTRES = np.array([[0, 0], [4, 0], [8, 0], [40, 0], [40, 4], [44, 0]], dtype=np.float32)
A, B, C, D, E, F = range(6)
NOISE_STD = 8.0  # threshold 3 std = 24 counts


def _sampler(**rules) -> CloudSampler:
    """A fitted sampler over the six blobs (each blob one cluster), rebuilt with ``restore``: no k-means."""
    rng = np.random.default_rng(0)
    assignment = np.repeat(np.arange(len(CENTRES)), 200)
    features = (CENTRES[assignment] + 0.3 * rng.normal(size=(len(assignment), 2))).astype(np.float32)
    distance = np.linalg.norm(features - CENTRES[assignment], axis=1)
    member_order = np.lexsort((distance, assignment))
    return CloudSampler.restore(CentroidsMessage(CENTRES.copy()), features, assignment, member_order, seed=0, **rules)


def _select(sampler: CloudSampler, scores, budget=300):
    up = ScoresMessage(np.asarray(scores, dtype=np.float32), NOISE_STD, 1, 1e-5, 1.0, sampler.message_.digest())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these cases is a fallback
        return sampler.select(up, budget)


def test_a_cluster_under_the_threshold_next_to_kept_ones_is_kept():
    scores = [100, 100, 20, 20, 0, 0]  # C and D both at 2.5 std, under the 3 std threshold
    without = _select(_sampler(), scores)
    assert without.kept.tolist() == [True, True, False, False, False, False]
    with_rule = _select(_sampler(neighbour_z=2.0), scores)
    assert with_rule.kept.tolist() == [True, True, True, False, False, False]
    assert with_rule.allocation[C] > 0 and with_rule.allocation[D] == 0  # D: far, its nearest centroid is E's
    assert with_rule.allocation.sum() == 300 and len(np.unique(with_rule.indices)) == 300
    assert set(with_rule.clusters.tolist()) == {A, B, C}


def test_the_second_look_has_its_own_bar():
    scores = [100, 100, 12, 0, 0, 0]  # C at 1.5 std
    assert not _select(_sampler(neighbour_z=2.0), scores).kept[C]
    assert _select(_sampler(neighbour_z=1.0), scores).kept[C]


@pytest.mark.parametrize("scores", [[100, 100, 40, 0, 0, 0], [100, 100, 40, 5, 3, 0], [100, 0, 0, 30, 30, 8]])
def test_nothing_changes_when_every_covered_cluster_clears_the_threshold(scores):
    before, after = _select(_sampler(), scores), _select(_sampler(neighbour_z=1.0), scores)
    np.testing.assert_array_equal(before.indices, after.indices)
    np.testing.assert_array_equal(before.allocation, after.allocation)
    np.testing.assert_array_equal(before.kept, after.kept)


def test_neighbour_z_is_checked():
    with pytest.raises(ValueError, match="neighbour_z"):
        CloudSampler(num_clusters=4, neighbour_z=-1.0)
    with pytest.raises(ValueError, match="neighbour_z"):
        CloudSampler(num_clusters=4, neighbour_z=math.nan)
