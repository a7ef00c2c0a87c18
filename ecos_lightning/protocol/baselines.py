"""Baseline samplers, all with one signature::

    fn(open_features [N, d], budget, *, client_features=None [M, d], seed=0) -> int64 indices [<= budget]

``random`` and ``kcenter`` see no client information; ``full`` returns the whole pool;
``upload`` is the non-private upper bound where the client uploads its features.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np

from . import faiss_ops
from .selection import kcenter_greedy
from .validation import as_features, positive_int


def _checked_budget(open_features, budget: int) -> tuple[np.ndarray, int]:
    features = as_features(open_features, "open_features")
    budget = positive_int(budget, "budget")
    if budget > features.shape[0]:
        warnings.warn(f"budget={budget} exceeds the open pool ({features.shape[0]}): returning the whole pool; "
                      f"pass budget <= {features.shape[0]}", stacklevel=3)
        budget = features.shape[0]
    return features, budget


def random_baseline(open_features, budget: int, *, client_features=None, seed: int = 0) -> np.ndarray:
    """Uniform sample without replacement (sorted indices)."""
    features, budget = _checked_budget(open_features, budget)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(features.shape[0], budget, replace=False)).astype(np.int64)


def kcenter_baseline(open_features, budget: int, *, client_features=None, seed: int = 0) -> np.ndarray:
    """k-center greedy over the whole pool from a seeded random start: diversity, no client signal."""
    features, budget = _checked_budget(open_features, budget)
    start = int(np.random.default_rng(seed).integers(features.shape[0]))
    return kcenter_greedy(features, budget, initial=(start,))


def full_baseline(open_features, budget: int | None = None, *, client_features=None, seed: int = 0) -> np.ndarray:
    """Every open sample; the budget is ignored."""
    features = as_features(open_features, "open_features")
    return np.arange(features.shape[0], dtype=np.int64)


def upload_baseline(open_features, budget: int, *, client_features=None, seed: int = 0) -> np.ndarray:
    """Non-private upper bound: nearest open neighbours of the uploaded client features.

    Takes every client sample's 1st neighbour, then every 2nd, ... (within a rank, nearest
    first), skipping duplicates, until ``budget`` unique indices.
    """
    features, budget = _checked_budget(open_features, budget)
    if client_features is None:
        raise ValueError("client_features is required by the 'upload' baseline")
    client = as_features(client_features, "client_features")
    if client.shape[1] != features.shape[1]:
        raise ValueError(f"client_features: dimension {client.shape[1]} != open_features dimension "
                         f"{features.shape[1]}")
    depth = min(features.shape[0], 2 * math.ceil(budget / client.shape[0]) + 1)
    while True:
        sq_dist, labels = faiss_ops.nearest(client, features, k=depth)
        order = np.lexsort((sq_dist.T.ravel(), np.repeat(np.arange(depth), client.shape[0])))
        ranked = labels.T.ravel()[order]
        _, first = np.unique(ranked, return_index=True)
        if len(first) >= budget or depth == features.shape[0]:
            return ranked[np.sort(first)][:budget].astype(np.int64)
        depth = min(features.shape[0], depth * 2)


BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "random": random_baseline,
    "kcenter": kcenter_baseline,
    "full": full_baseline,
    "upload": upload_baseline,
}


def run_baseline(name: str, open_features, budget: int, *, client_features=None, seed: int = 0) -> np.ndarray:
    """Dispatch to a baseline by name; unknown names raise ``ValueError`` listing the valid ones."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: choose one of {sorted(BASELINES)}")
    return BASELINES[name](open_features, budget, client_features=client_features, seed=seed)
