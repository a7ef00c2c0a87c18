"""``num_clusters="auto"``: the number of centroids K chosen from the pool size, the client size and the noise.

The rule. The client holds M samples; each covers its q nearest of the K centroids, and every count gets
Gaussian noise of std ``sigma * sqrt(q)``. The client's distribution occupies a share ``rho`` of the pool,
so its samples fall in about ``K_eff = rho * K`` clusters, and a client-covered cluster expects about
``M * q / K_eff`` counts (a sample's q nearest centroids lie mostly in the client's own region). A cluster
is distinguishable from noise when its count clears ``z * sigma * sqrt(q)`` (z = 3 noise std: a cluster
the client does not cover passes with probability 0.13%). Counts are uneven across the covered clusters
and the budget needs the smaller covered clusters too, so the *mean* must clear the threshold ``kappa``
times over; without noise a covered cluster must still expect ``n0`` counts, or most would hold none::

    M * q / (rho * K) >= max(kappa * z * sigma * sqrt(q), n0)
    K_noise = floor(M * q / (rho * max(kappa * z * sigma * sqrt(q), n0)))
    K = min(max(K_noise, K_MIN), N // 39, K_MAX),  at least 1

with ``rho = 0.1``, ``kappa = 4``, ``z = 3``, ``n0 = 4``: under noise ``K ~ 0.83 * M * sqrt(q) / sigma``
(more noise: fewer, larger clusters; a larger q adds signal faster than noise). ``N // 39``: faiss's
k-means wants at least 39 training points per centroid (it warns below); this bound wins over ``K_MIN``,
so a pool of under ``39 * K_MIN`` images gets fewer, larger clusters. ``K_MIN = 8``: fewer clusters mix
the pool's domains. ``K_MAX = 1000``: bytes down and k-means time grow linearly in K.

Where the constants come from (``python bench/ablation.py --k-sweep``, tables in ``docs/ablation.md``): on
digits-lite the client's domain covers a share 0.10 of the clusters (participation ratio of the noise-free
counts, K >= 32), and over M in {100, 300, 600} and sigma in {4, 8, 16} (budget 1000, 5 client domains x
3 seeds) the rule's in-domain precision is within 0.015 of the best K of {6, 8, ..., 128, 227} in every
row (the best K is about M / (1.2 sigma): rho * kappa * z = 1.2). On a 5-domain image folder, whose client
domain is a fifth of the pool, it is 0.033 below the best K on average and 0.09 at most. With q = 2 the
best K about doubles; the rule's sqrt(q) raises it 1.4 times, so it stays on the small side (0.038 below
the best K on average over those rows, 0.11 at most). Fewer clusters mix the domains
(digits-lite, M = 600, sigma 8: 0.71 at K = 6, 0.87 at K = 16, 0.94 at K = 64). For M = 100 client images
at sigma 8 (threshold 24, where K = 100 keeps no cluster and precision falls to 0.40) the rule gives
K = 10: a covered cluster expects 100 counts, four times the threshold. A pool where the client is much
rarer than a tenth (rho << 0.1) can afford a larger K: pass it.
"""

from __future__ import annotations

import math

from .validation import non_negative_float, positive_int

CLIENT_SHARE = 0.1  # rho: share of the pool's clusters the client's samples fall in
MARGIN = 4.0  # kappa: the mean count per covered cluster must clear the threshold this many times
DETECTION_Z = 3.0  # z: noise std a count must clear to be told from noise
MIN_COUNT = 4.0  # n0: samples a covered cluster expects without noise
K_MIN = 8
K_MAX = 1000
FAISS_MIN_POINTS_PER_CENTROID = 39


def auto_num_clusters(pool_size: int, client_size: int, noise_multiplier: float, q: int = 1) -> int:
    """K for a pool of ``pool_size`` (N) images and a client of ``client_size`` (M) samples answering with
    noise multiplier ``noise_multiplier`` (sigma) over its ``q`` nearest centroids; see the module docstring."""
    n = positive_int(pool_size, "pool_size")
    m = positive_int(client_size, "client_size")
    sigma = non_negative_float(noise_multiplier, "noise_multiplier")
    q = positive_int(q, "q")
    needed = max(MARGIN * DETECTION_Z * sigma * math.sqrt(q), MIN_COUNT)
    k_noise = math.floor(m * q / (CLIENT_SHARE * needed))
    return max(1, min(max(k_noise, K_MIN), n // FAISS_MIN_POINTS_PER_CENTROID, K_MAX))


def resolve_num_clusters(num_clusters, pool_size: int, client_size: int, noise_multiplier: float,
                         q: int = 1) -> int:
    """``num_clusters`` as an int: itself when it is one, :func:`auto_num_clusters` when it is ``"auto"``."""
    if num_clusters == "auto":
        return auto_num_clusters(pool_size, client_size, noise_multiplier, q)
    if isinstance(num_clusters, str):
        raise ValueError(f"num_clusters must be an integer >= 1 or 'auto', got {num_clusters!r}")
    return positive_int(num_clusters, "num_clusters")


def expected_count_ratio(num_clusters: int, client_size: int, noise_multiplier: float, q: int = 1) -> float:
    """How many times a client-covered cluster's expected count ``M * q / (rho * K)`` clears the noise
    threshold ``z * sigma * sqrt(q)`` (inf without noise): below 1, covered clusters are lost to the noise."""
    threshold = DETECTION_Z * noise_multiplier * math.sqrt(q)
    expected = client_size * q / (CLIENT_SHARE * num_clusters)
    return math.inf if threshold == 0 else expected / threshold
