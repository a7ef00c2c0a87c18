"""Private kNN labelling, run by the client: noisy nearest-neighbour votes for the cloud's queries.

For every query feature the client Poisson-samples its labelled set at ``sampling_rate``, takes the
``k`` nearest sampled neighbours, adds ``N(0, (noise_multiplier * sqrt(2))^2)`` to each bin of the
vote histogram and releases only the argmax. Adding or removing one client sample changes one
histogram in at most two bins by 1 (L2 sensitivity sqrt(2)); the privacy cost is a Poisson-subsampled
Gaussian composed over the queries, accounted by dp-accounting.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import faiss_ops
from .privacy import check_noise_multiplier, gaussian_release
from .validation import as_features, positive_int

VOTE_SENSITIVITY = math.sqrt(2.0)


class PrivateKnnLabeler:
    """Client-side noisy kNN labeller.

    Args:
        k: neighbours voting per query.
        noise_multiplier: noise std / sensitivity for each vote histogram (0 = no noise, eps = inf).
        sampling_rate: Poisson sampling rate of the client set per query (1.0 = no subsampling).
        seed: seeds the sampling and the noise (an int or a SeedSequence; None: fresh OS entropy).
    """

    def __init__(self, k: int = 20, noise_multiplier: float = 2.0, sampling_rate: float = 0.3,
                 seed: int | np.random.SeedSequence | None = None):
        self.k = positive_int(k, "k")
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, numbers.Real) or not 0 < sampling_rate <= 1:
            raise ValueError(f"sampling_rate must be a number in (0, 1], got {sampling_rate!r}")
        self.sampling_rate = float(sampling_rate)
        self.seed = seed

    def release(self, num_queries: int) -> dict:
        """The privacy record of answering ``num_queries`` queries (see ``privacy.gaussian_release``)."""
        return gaussian_release(self.noise_multiplier, num_queries, self.sampling_rate, what="private_knn_labels")

    def label(self, queries, client_features, client_labels, num_classes: int) -> np.ndarray:
        """Noisy-argmax labels int64 [Q] for ``queries`` [Q, d] from labelled client data [M, d], [M]."""
        queries = as_features(queries, "queries")
        client = as_features(client_features, "client_features")
        labels = np.asarray(client_labels)
        num_classes = positive_int(num_classes, "num_classes")
        if labels.shape != (client.shape[0],):
            raise ValueError(f"client_labels must have shape [{client.shape[0]}], got {list(labels.shape)}")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"client_labels must lie in [0, {num_classes - 1}]")
        if queries.shape[1] != client.shape[1]:
            raise ValueError(f"queries: dimension {queries.shape[1]} != client_features dimension {client.shape[1]}")
        rng = np.random.default_rng(self.seed)
        # the k nearest *sampled* neighbours lie, all but surely, within the 4k/rate nearest
        depth = min(client.shape[0], math.ceil(4 * self.k / self.sampling_rate))
        _, neighbours = faiss_ops.nearest(queries, client, k=depth)
        votes = np.zeros((queries.shape[0], num_classes), dtype=np.float64)
        for row, ranked in enumerate(neighbours):
            if self.sampling_rate < 1.0:
                ranked = ranked[rng.random(len(ranked)) < self.sampling_rate]
            np.add.at(votes[row], labels[ranked[: self.k]], 1.0)
        votes += rng.normal(0.0, self.noise_multiplier * VOTE_SENSITIVITY, size=votes.shape)
        return votes.argmax(axis=1).astype(np.int64)
