"""Budget allocation and redundancy removal: pure numpy functions used by the cloud and baselines."""

from __future__ import annotations

import math

import numpy as np


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Split integer ``total`` in proportion to ``weights`` [K] (>= 0, positive sum) -> int64 [K].

    Floors of the exact quotas, then one more unit to the largest remainders
    (ties: larger weight first, then lower index). Sums to ``total`` exactly.
    """
    quotas = total * weights / weights.sum()
    base = np.floor(quotas).astype(np.int64)
    short = int(total - base.sum())
    if short > 0:
        order = np.lexsort((np.arange(len(weights)), -weights, -(quotas - base)))
        base[order[:short]] += 1
    return base


def allocate_budget(scores: np.ndarray, capacities: np.ndarray, budget: int) -> np.ndarray:
    """Allocate ``budget`` over clusters in proportion to ``scores`` [K], capped by ``capacities`` [K].

    Clusters with score <= 0 get nothing. What a full cluster cannot take is redistributed,
    again in proportion to score, over the clusters with room left. Returns int64 [K] summing
    to ``min(budget, capacity of the positive-score clusters)``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    capacities = np.asarray(capacities, dtype=np.int64)
    allocation = np.zeros(len(scores), dtype=np.int64)
    remaining = int(budget)
    open_ = (scores > 0) & (capacities > 0)
    while remaining > 0 and open_.any():
        proposal = largest_remainder(scores[open_], remaining)
        room = capacities[open_] - allocation[open_]
        taken = np.minimum(proposal, room)
        allocation[open_] += taken
        remaining -= int(taken.sum())
        open_ &= allocation < capacities
    return allocation


def kcenter_greedy(points: np.ndarray, k: int, initial=(0,)) -> np.ndarray:
    """Farthest-first traversal (k-center greedy): indices [k] int64 into ``points`` [n, d], pick order.

    Starts from the ``initial`` indices (returned first), then repeatedly adds the unchosen point
    whose squared L2 distance to its nearest chosen point is largest (ties: lowest index), so the
    picks are unique even among duplicate points. Each step costs one matrix-vector product over
    ``points``.
    """
    n = points.shape[0]
    k = min(k, n)
    chosen = [int(i) for i in dict.fromkeys(int(i) for i in initial)][:k]
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if not chosen:
        raise ValueError("initial must name at least one starting index")
    sq_norms = np.einsum("ij,ij->i", points, points)
    min_dist = np.full(n, np.inf, dtype=np.float64)
    picks = []
    while len(picks) < k:
        index = chosen[len(picks)] if len(picks) < len(chosen) else int(np.argmax(min_dist))
        d = sq_norms - 2.0 * (points @ points[index]) + sq_norms[index]
        np.minimum(min_dist, np.maximum(d, 0.0), out=min_dist)
        min_dist[index] = -np.inf  # chosen: stays below every distance, never picked again
        picks.append(index)
    return np.asarray(picks, dtype=np.int64)


#: How a cluster's share is taken among its candidates (see :func:`select_near_centroid`).
WITHIN_CLUSTER = ("kcenter", "nearest", "random")


def select_near_centroid(features: np.ndarray, members: np.ndarray, count: int, candidate_factor: float,
                         within: str = "kcenter", rng: np.random.Generator | None = None) -> np.ndarray:
    """Pick ``count`` members of one cluster; int64 indices into the pool.

    ``members`` [m] are open-pool indices sorted by distance to the centroid. The
    ``ceil(candidate_factor * count)`` nearest are candidates (``candidate_factor=inf``: every member).
    ``within`` = ``"kcenter"``: k-center greedy among the candidates from the nearest one (diverse);
    ``"nearest"``: the ``count`` nearest members (the candidate factor plays no part);
    ``"random"``: ``count`` candidates uniformly at random without replacement, drawn from ``rng``.
    """
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    if within == "nearest":
        return members[:count]
    size = len(members) if math.isinf(candidate_factor) else math.ceil(candidate_factor * count)
    pool = members[: min(len(members), max(count, size))]
    if within == "random":
        if rng is None:
            raise ValueError("within='random' needs an rng")
        return np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False))
    if within != "kcenter":
        raise ValueError(f"within must be one of {WITHIN_CLUSTER}, got {within!r}")
    picks = kcenter_greedy(features[pool], count, initial=(0,))
    return pool[picks]
