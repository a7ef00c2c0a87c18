import itertools

import numpy as np
import pytest

from ecos_lightning.protocol.selection import allocate_budget, kcenter_greedy, largest_remainder


def brute_force_kcenter(points, k, start):
    """Farthest-first by explicit pairwise distances (reference)."""
    dist = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    chosen = [start]
    while len(chosen) < k:
        nearest = dist[:, chosen].min(axis=1)
        chosen.append(int(np.argmax(nearest)))
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_kcenter_greedy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(60, 5)).astype(np.float32)
    start = int(rng.integers(60))
    got = kcenter_greedy(points, 15, initial=(start,))
    assert got.tolist() == brute_force_kcenter(points.astype(np.float64), 15, start)


def test_kcenter_greedy_on_a_line_takes_ends_then_middle():
    points = np.arange(10, dtype=np.float32)[:, None]
    assert kcenter_greedy(points, 3, initial=(0,)).tolist() == [0, 9, 4]


def test_kcenter_greedy_caps_k_and_keeps_initial_order():
    points = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
    got = kcenter_greedy(points, 10, initial=(2, 1, 2))
    assert got[:2].tolist() == [2, 1] and sorted(got.tolist()) == [0, 1, 2, 3]


def test_largest_remainder_is_exact_and_proportional():
    got = largest_remainder(np.array([1.0, 1.0, 1.0]), 10)
    assert got.tolist() == [4, 3, 3]
    got = largest_remainder(np.array([5.0, 3.0, 2.0]), 7)
    assert got.sum() == 7 and got.tolist() == [4, 2, 1]


def test_allocation_is_capped_and_overflow_redistributed():
    got = allocate_budget(np.array([10.0, 10.0, 0.0, 5.0]), np.array([3, 100, 100, 100]), 30)
    assert got.tolist() == [3, 18, 0, 9]


def test_allocation_never_exceeds_capacity_and_meets_budget_when_it_can():
    rng = np.random.default_rng(1)
    for _ in range(200):
        k = int(rng.integers(1, 12))
        scores = np.where(rng.random(k) < 0.3, 0.0, rng.random(k) * 100)
        caps = rng.integers(0, 20, size=k)
        budget = int(rng.integers(1, 150))
        got = allocate_budget(scores, caps, budget)
        assert np.all(got <= caps) and np.all(got >= 0) and np.all(got[scores <= 0] == 0)
        assert got.sum() == min(budget, caps[scores > 0].sum())


def test_uncapped_allocation_is_plain_largest_remainder():
    for scores in itertools.permutations([7.0, 2.0, 1.0]):
        scores = np.array(scores)
        np.testing.assert_array_equal(allocate_budget(scores, np.full(3, 1000), 11),
                                      largest_remainder(scores, 11))


def test_kcenter_greedy_never_repeats_a_point_among_duplicates():
    # once every remaining distance is 0, the lowest unchosen index comes next
    assert kcenter_greedy(np.ones((6, 3), np.float32), 6, initial=(2,)).tolist() == [2, 0, 1, 3, 4, 5]
    groups = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # rows 0-3, 4-7, 8-11 identical
    assert kcenter_greedy(groups, 7, initial=(5,)).tolist() == [5, 0, 8, 1, 2, 3, 4]
