"""Class-conditional coverage labels: one noisy (centroid, class) histogram from the client labels a whole proxy.

Cloud (public data only)::

    query = coverage_query(proxy_features [B, d], clusters=(10, 20, 50), whiten_dim=d', seed=s)
        # a whitening map fitted on the proxy (y = normalise(x @ projection + bias)) and, for each
        # resolution r, C_r k-means centroids of the mapped proxy: centroids [sum C_r, d']

Client (private)::

    counts = class_histogram(query, client_features [M, d], client_labels [M], num_classes=L)   # [sum C_r, L]
    noisy = release_histogram(counts, noise_multiplier=sigma, rng=rng)

In each resolution's histogram a client sample adds 1 to one cell (its nearest centroid of that
resolution, its label): adding or removing one sample changes each histogram by 1 in one cell, an
L2 sensitivity of 1 (:data:`SENSITIVITY`). The release is R Gaussian mechanisms of noise multiplier
``sigma`` (:func:`release`), composed by the accountant, whatever the proxy size: its cost does not
grow with the number of images labelled.

Cloud (post-processing, no further privacy cost)::

    labels = propagate_labels(query, proxy_features, noisy, neighbours=5, alpha=0.9)   # int64 [B], -1: no label

Each proxy image takes the class distribution of its nearest centroid at every resolution (the noisy
counts clipped at 0 and normalised, so each resolution has one vote whatever its clusters' sizes), summed,
as evidence; the evidence spreads along the proxy's own k-nearest-neighbour graph (normalised-graph
diffusion, ``F = alpha S F + (1 - alpha) E``) and each image takes the class of highest diffused
evidence. ``label_fraction < 1`` labels only that share of the proxy, the images whose evidence is
the clearest (the rest -1: unlabelled).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from . import faiss_ops
from .coverage_messages import MAX_RESOLUTIONS, CoverageQueryMessage
from .privacy import check_noise_multiplier, gaussian_release
from .validation import as_features, positive_int

#: L2 sensitivity of the class histogram (add/remove-one adjacency: one sample changes one cell by 1).
SENSITIVITY = 1.0
#: Proxy images per whitened dimension, at least.
MIN_IMAGES_PER_DIM = 10
#: Diffusion steps: alpha ** steps is below 1e-4 for alpha <= 0.95.
DIFFUSION_STEPS = 200
#: Most (image, class) scores held at once when picking each image's best class (32 MB of float64).
SCORE_BLOCK_CELLS = 1 << 22


@dataclass(frozen=True, eq=False)
class CoverageQuery:
    """What the cloud sends: the map of encoder features into the clustering space and its centroids.

    projection: float32 [d, d'], bias: float32 [d']: ``y = normalise(x @ projection + bias)``.
    centroids: float32 [sum C_r, d'] in that space, resolution after resolution.
    clusters: (C_1, ..., C_R), the number of centroids of each resolution.
    """

    projection: np.ndarray
    bias: np.ndarray
    centroids: np.ndarray
    clusters: tuple[int, ...]

    @classmethod
    def from_message(cls, message: CoverageQueryMessage) -> "CoverageQuery":
        """The query a (validated) coverage query message carries."""
        return cls(message.projection, message.bias, message.centroids, tuple(int(c) for c in message.clusters))

    def to_message(self, encoder: dict, proxy: str, features: str) -> CoverageQueryMessage:
        """The message of this query for features of ``encoder`` (a spec dict) of the proxy ``proxy``
        (``stable_hash`` of its indices), fitted on proxy features [B, d] of SHA-256 ``features``."""
        return CoverageQueryMessage(self.projection, self.bias, self.centroids, np.asarray(self.clusters, np.int64),
                                    encoder, proxy, features)

    def map(self, features) -> np.ndarray:
        """Encoder features [N, d] -> unit vectors [N, d'] float32 in the clustering space."""
        features = as_features(features, "features")
        if features.shape[1] != self.projection.shape[0]:
            raise ValueError(f"features: dimension {features.shape[1]} != the query's feature dimension "
                             f"{self.projection.shape[0]}; extract them with the encoder the query names")
        mapped = features.astype(np.float64) @ self.projection + self.bias
        norms = np.linalg.norm(mapped, axis=1, keepdims=True)
        return np.ascontiguousarray(mapped / np.maximum(norms, 1e-12), dtype=np.float32)

    def assign(self, features) -> np.ndarray:
        """Row of the nearest centroid of each resolution, int64 [N, R], for encoder features [N, d]."""
        mapped = self.map(features)
        columns, start = [], 0
        for size in self.clusters:
            _, nearest = faiss_ops.nearest(mapped, self.centroids[start:start + size], k=1)
            columns.append(nearest[:, 0].astype(np.int64) + start)
            start += size
        return np.stack(columns, axis=1)


def coverage_query(proxy_features, clusters=(10, 20, 50), whiten_dim: int = 48, seed: int = 0) -> CoverageQuery:
    """Fit the whitening map on ``proxy_features`` [B, d] (PCA to ``whiten_dim`` dimensions, each scaled to
    unit variance) and cluster the mapped proxy at each resolution of ``clusters`` (faiss k-means).

    ``whiten_dim`` is capped at min(d, (B - 1) // MIN_IMAGES_PER_DIM) and each number of clusters at B."""
    features = as_features(proxy_features, "proxy_features").astype(np.float64)
    clusters = check_clusters(clusters)
    whiten_dim = positive_int(whiten_dim, "whiten_dim")
    size, dim = features.shape
    if size < 2:
        raise ValueError(f"proxy_features: need at least 2 proxy images to fit the whitening map, got {size}")
    mean = features.mean(axis=0)
    _, singular, vt = np.linalg.svd(features - mean, full_matrices=False)
    if not singular[0] > 1e-9 * np.sqrt(size) * float(np.abs(features).max()):  # all rows equal, up to rounding
        raise ValueError(f"proxy_features: all {size} proxy images have the same features, so there is nothing "
                         "to cluster; sample a proxy of distinct images")
    # a whitened direction needs about ten images to estimate its variance
    keep = max(1, min(whiten_dim, dim, (size - 1) // MIN_IMAGES_PER_DIM, int((singular > singular[0] * 1e-6).sum())))
    projection = np.ascontiguousarray(vt[:keep].T / singular[:keep] * np.sqrt(size - 1), dtype=np.float32)
    bias = np.ascontiguousarray(-mean @ projection, dtype=np.float32)
    mapped = CoverageQuery(projection, bias, np.zeros((1, keep), np.float32), (1,)).map(features)
    sizes, blocks = [], []
    for r, wanted in enumerate(clusters):
        k = min(wanted, size)
        blocks.append(mapped.copy() if k == size else faiss_ops.kmeans(
            mapped, k, niter=25, nredo=1, seed=seed + r, max_points_per_centroid=size, spherical=False,
            use_gpu=False))
        sizes.append(k)
    return CoverageQuery(projection, bias, np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32),
                         tuple(sizes))


def check_clusters(clusters) -> tuple[int, ...]:
    """``clusters`` as a tuple of 1 to MAX_RESOLUTIONS integers >= 2 (an integer is one resolution)."""
    if isinstance(clusters, numbers.Integral) and not isinstance(clusters, bool):
        clusters = (clusters,)
    if (not isinstance(clusters, (list, tuple)) or not 1 <= len(clusters) <= MAX_RESOLUTIONS
            or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 2 for c in clusters)):
        raise ValueError(f"clusters must be 1 to {MAX_RESOLUTIONS} integers >= 2 (numbers of centroids), "
                         f"got {clusters!r:.60}")
    return tuple(int(c) for c in clusters)


def class_histogram(query: CoverageQuery, client_features, client_labels, num_classes: int) -> np.ndarray:
    """Exact counts float64 [sum C_r, L]: client samples per (nearest centroid of each resolution, label).
    Private: never released as is."""
    num_classes = positive_int(num_classes, "num_classes")
    labels = np.asarray(client_labels)
    features = as_features(client_features, "client_features")
    if labels.shape != (features.shape[0],) or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(f"client_labels must be integers of shape [{features.shape[0]}], got "
                         f"{labels.dtype}{list(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"client_labels must lie in [0, {num_classes - 1}]")
    counts = np.zeros((len(query.centroids), num_classes), dtype=np.float64)
    rows = query.assign(features)
    for column in rows.T:
        np.add.at(counts, (column, labels.astype(np.int64)), 1.0)
    return counts


def release_histogram(counts, noise_multiplier: float, rng: np.random.Generator) -> np.ndarray:
    """``counts + N(0, (noise_multiplier * SENSITIVITY)^2)`` per cell, float32 (noise_multiplier 0: exact)."""
    sigma = check_noise_multiplier(noise_multiplier) * SENSITIVITY
    counts = np.asarray(counts, dtype=np.float64)
    noisy = counts + rng.normal(0.0, sigma, size=counts.shape) if sigma > 0 else counts
    return noisy.astype(np.float32)


def release(noise_multiplier: float, resolutions: int, what: str = "class coverage histograms") -> dict:
    """The privacy record of the release: ``resolutions`` Gaussian mechanisms of sensitivity 1 and noise
    multiplier ``noise_multiplier``, one per histogram."""
    return gaussian_release(noise_multiplier, count=positive_int(resolutions, "resolutions"), what=what)


def propagate_labels(query: CoverageQuery, proxy_features, noisy_counts, neighbours: int = 5,
                     alpha: float = 0.9, label_fraction: float = 1.0) -> np.ndarray:
    """Labels int64 [B] of the proxy from the released histograms [sum C_r, L] (see the module docstring).

    neighbours: k of the proxy's kNN graph. alpha: in [0, 1), how far evidence spreads (0: each image
    keeps its centroid's argmax). label_fraction: in (0, 1], the share of the proxy labelled, clearest
    evidence first (margin of the best class's diffused evidence over the second's); -1 elsewhere, and
    for any image that no positive count reaches.
    """
    mapped = query.map(proxy_features)
    counts = np.asarray(noisy_counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != len(query.centroids) or not np.isfinite(counts).all():
        raise ValueError(f"noisy_counts must be finite [{len(query.centroids)}, L], got {list(counts.shape)}")
    _fraction(alpha, "alpha", low_open=False, high_open=True)
    check_label_fraction(label_fraction)
    graph = _knn_graph(mapped, positive_int(neighbours, "neighbours"))
    labels, best, second = _best_classes(graph, query.assign(proxy_features), class_distributions(counts),
                                         float(alpha))
    labels[best <= 0] = -1  # no positive count reached the image: no label
    if label_fraction < 1.0:
        keep = int(round(label_fraction * len(labels)))
        labels[np.argsort(-(best - second), kind="stable")[keep:]] = -1
    return labels


def _best_classes(graph, rows, distributions, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each proxy image's class of highest diffused evidence, int64 [B], and its best and second-best
    scores, float64 [B] (a class without any positive count scores 0 everywhere).

    rows: int64 [B, R], each image's centroid row per resolution; distributions: [sum C_r, L].
    Diffusion is linear, so diffuse(membership @ D) = diffuse(membership) @ D: it runs on whichever of the
    membership [B, sum C_r] or the evidence [B, S] (S classes with a positive count) has fewer columns,
    and the product is taken in blocks of images, so many classes cost neither steps nor a [B, L] matrix.
    """
    supported = np.flatnonzero(distributions.max(axis=0) > 0)
    table = distributions[:, supported]
    if supported.size < distributions.shape[1]:  # one zero column stands for the classes without evidence
        table = np.concatenate([table, np.zeros((len(table), 1))], axis=1)
        supported = np.append(supported, -1)
    membership = np.zeros((len(rows), len(distributions)))
    np.add.at(membership, (np.arange(len(rows))[:, None], rows), 1.0)
    evidence_first = table.shape[1] <= table.shape[0]
    diffused = _diffuse(graph, membership @ table if evidence_first else membership, alpha)
    labels, best, second = np.empty(len(rows), np.int64), np.empty(len(rows)), np.zeros(len(rows))
    step = max(1, SCORE_BLOCK_CELLS // table.shape[1])
    for start in range(0, len(rows), step):
        block = slice(start, start + step)
        scores = diffused[block] if evidence_first else diffused[block] @ table
        top = scores.argmax(axis=1)
        labels[block], best[block] = supported[top], scores[np.arange(len(scores)), top]
        if scores.shape[1] > 1:
            second[block] = np.partition(scores, -2, axis=1)[:, -2]
    return labels, best, second


def class_distributions(counts: np.ndarray) -> np.ndarray:
    """Noisy counts [rows, L] -> each row's class distribution [rows, L]: negative counts (noise) clipped at 0,
    rows normalised to sum 1 (a row with no positive count stays 0)."""
    positive = np.clip(counts, 0.0, None)
    return positive / np.maximum(positive.sum(axis=1, keepdims=True), 1e-12)


def _knn_graph(points: np.ndarray, k: int) -> sparse.csr_matrix:
    """Symmetric normalised affinity ``D^-1/2 W D^-1/2`` [B, B] of the k-nearest-neighbour graph, heat-kernel
    weights ``exp(-d^2 / median d^2)``."""
    size = len(points)
    k = min(k, size - 1)
    if k < 1:
        return sparse.csr_matrix((size, size))
    sq_dist, nearest = faiss_ops.nearest(points, points, k=k + 1)
    sq_dist, nearest = sq_dist[:, 1:].astype(np.float64), nearest[:, 1:]  # drop each point itself
    scale = max(float(np.median(sq_dist)), 1e-12)
    rows = np.repeat(np.arange(size), k)
    weights = sparse.csr_matrix((np.exp(-sq_dist / scale).ravel(), (rows, nearest.ravel())), shape=(size, size))
    weights = weights.maximum(weights.T)
    inv_sqrt = sparse.diags(1.0 / np.sqrt(np.maximum(np.asarray(weights.sum(axis=1)).ravel(), 1e-12)))
    return (inv_sqrt @ weights @ inv_sqrt).tocsr()


def _diffuse(graph: sparse.csr_matrix, evidence: np.ndarray, alpha: float) -> np.ndarray:
    scores = evidence.copy()
    for _ in range(DIFFUSION_STEPS if alpha > 0 else 0):
        scores = alpha * (graph @ scores) + (1.0 - alpha) * evidence
    return scores


def check_label_fraction(value, name: str = "label_fraction") -> float:
    """``value``, the share of the proxy to label, as a float in (0, 1]."""
    return _fraction(value, name, low_open=True, high_open=False)


def _fraction(value, name: str, low_open: bool, high_open: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (0 < v if low_open else 0 <= v) and (v < 1 if high_open else v <= 1)
    if not ok:
        bounds = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"{name} must be a number in {bounds}, got {value!r:.40}")
    return float(value)
