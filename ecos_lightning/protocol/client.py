"""The client side of ECOS: count centroid coverage on private features and release it with noise."""

from __future__ import annotations

import logging

import numpy as np

from . import faiss_ops
from .messages import CentroidsMessage, ScoresMessage
from .privacy import check_noise_multiplier, coverage_sensitivity, gaussian_epsilon
from .validation import non_negative_float, positive_int, probability

log = logging.getLogger(__name__)


class ClientResponder:
    """Answers a centroids message with K differentially private centroid-coverage scores.

    Args:
        noise_multiplier: sigma; the noise std is ``sigma * sqrt(q)`` (sensitivity ``sqrt(q)``).
            0 releases exact counts (epsilon = inf).
        q: each client sample covers its ``q`` nearest centroids.
        delta: the delta at which epsilon is reported.
        radius: optional L2 radius in the centroids' space; a centroid farther than this from a
            sample is not covered by it.
        seed: seeds the noise (None: fresh OS entropy; use a seed only for simulations).
    """

    def __init__(self, noise_multiplier: float = 8.0, q: int = 1, delta: float = 1e-5,
                 radius: float | None = None, seed: int | None = None):
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        self.q = positive_int(q, "q")
        self.delta = probability(delta, "delta")
        self.radius = None if radius is None else non_negative_float(radius, "radius")
        self.seed = seed

    def coverage(self, centroids: CentroidsMessage, client_features) -> np.ndarray:
        """Exact CC scores [K] float64: how many samples have each centroid among their q nearest.

        Private: this never leaves the client; :meth:`respond` releases a noisy copy.
        """
        if not isinstance(centroids, CentroidsMessage):
            raise ValueError(f"centroids must be a CentroidsMessage, got {type(centroids).__name__}")
        features = centroids.project(client_features)
        k = centroids.num_clusters
        q = min(self.q, k)
        sq_dist, labels = faiss_ops.nearest(features, centroids.centroids_f32(), k=q)
        covered = labels if self.radius is None else labels[sq_dist <= self.radius ** 2]
        return np.bincount(covered.ravel(), minlength=k).astype(np.float64)

    def respond(self, centroids: CentroidsMessage, client_features) -> ScoresMessage:
        """The message up: K noisy scores ``s + N(0, (sigma*sqrt(q))^2)`` and the epsilon they cost."""
        counts = self.coverage(centroids, client_features)
        noise_std = self.noise_multiplier * coverage_sensitivity(self.q)
        rng = np.random.default_rng(self.seed)
        noisy = counts + rng.normal(0.0, noise_std, size=counts.shape) if noise_std > 0 else counts
        epsilon = gaussian_epsilon(self.noise_multiplier, self.delta)
        message = ScoresMessage(noisy.astype(np.float32), self.noise_multiplier, self.q, self.delta,
                                epsilon, centroids.digest(), self.radius)
        log.info("client: %d samples -> %d noisy scores (sigma=%.3g, q=%d): epsilon=%.3f at delta=%g; "
                 "%d bytes up", int(counts.sum() // max(self.q, 1)), len(counts), self.noise_multiplier,
                 self.q, epsilon, self.delta, len(message.to_bytes()))
        return message
