"""Thin helpers over faiss: thread count, GPU detection, k-means, exact nearest neighbours.

faiss indexes are never pickled or sent; only numpy arrays leave this module.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from tqdm.auto import tqdm

# faiss's loader reports at INFO which CPU build it tries and why one failed: noise in an application's
# INFO log; its warnings and errors still show
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

try:
    import faiss
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "ecos_lightning needs faiss: `pip install faiss-gpu==1.15.1` (runs on CPU-only machines too) "
        "or `pip install faiss-cpu`"
    ) from exc


def configure_threads(num_threads: int | None = None) -> int:
    """Set faiss's OpenMP threads explicitly (default: all cores); returns the count used."""
    count = num_threads or os.cpu_count() or 1
    faiss.omp_set_num_threads(count)
    return count


def gpu_available() -> bool:
    return faiss.get_num_gpus() > 0


def kmeans(features: np.ndarray, k: int, *, niter: int, nredo: int, seed: int,
           max_points_per_centroid: int, spherical: bool, use_gpu: bool, verbose: bool = False) -> np.ndarray:
    """Centroids [k, d] float32 of faiss k-means on ``features`` [N, d] (N >= k); ``verbose``: faiss's
    per-iteration progress lines. faiss's own small-pool warning is off: the caller warns with the remedy."""
    km = faiss.Kmeans(
        features.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=verbose,
        max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1, spherical=spherical,
        gpu=use_gpu,
    )
    km.train(features)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def nearest(queries: np.ndarray, base: np.ndarray, k: int = 1, batch_size: int = 65536, desc: str | None = None,
            use_gpu: bool = False):
    """Exact L2 nearest neighbours: (squared distances [M, k] float32, indices [M, k] int64).

    Queries are processed in batches so the distance work space stays bounded; ``desc`` shows a
    progress bar over them. ``use_gpu``: search on every GPU faiss sees (the base is replicated).
    Raises ValueError where a distance is not finite in float32 (faiss then returns index -1, which
    would count a sample in the wrong row).
    """
    index = faiss.IndexFlatL2(base.shape[1])
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(base)
    k = min(k, base.shape[0])
    distances = np.empty((queries.shape[0], k), dtype=np.float32)
    labels = np.empty((queries.shape[0], k), dtype=np.int64)
    starts = range(0, queries.shape[0], batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None):
        stop = start + batch_size
        distances[start:stop], labels[start:stop] = index.search(queries[start:stop], k)
    if labels.size and labels.min() < 0:
        raise ValueError("nearest neighbours: some squared distances overflow float32 (vectors of magnitude "
                         "above ~1e19); the vectors are not features of the declared encoder")
    return distances, labels


def pca(features: np.ndarray, out_dim: int, max_train_points: int, seed: int):
    """PCA map ``y = x @ projection + bias`` to ``out_dim`` dims: (projection [d, d'], bias [d'])."""
    rng = np.random.default_rng(seed)
    train = features
    if features.shape[0] > max_train_points:
        train = features[np.sort(rng.choice(features.shape[0], max_train_points, replace=False))]
    matrix = faiss.PCAMatrix(features.shape[1], out_dim)
    matrix.train(np.ascontiguousarray(train))
    a = faiss.vector_to_array(matrix.A).reshape(out_dim, features.shape[1])
    b = faiss.vector_to_array(matrix.b)
    return np.ascontiguousarray(a.T, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32)
