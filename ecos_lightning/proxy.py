"""Run one sampler (ECOS or a baseline) end to end on features and record what it cost.

The ECOS path goes through serialised messages exactly as two machines would: the centroids
are sent as bytes, the client answers from those bytes, the cloud samples from the answer's bytes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .protocol import CentroidsMessage, ClientResponder, CloudSampler, ScoresMessage
from .protocol.baselines import run_baseline
from .protocol.privacy import gaussian_release, releases_epsilon

log = logging.getLogger(__name__)

OPEN_SAMPLERS = ("ecos", "random", "kcenter", "full", "upload")
SAMPLERS = OPEN_SAMPLERS + ("local",)


@dataclass
class ProxyResult:
    """A selected proxy set and its cost.

    indices: int64 [B] into the open pool. clusters: int64 [B] (-1 without clustering).
    scores: float32 [B] cluster score of each index (NaN without clustering).
    releases: privacy records of what the client released (``privacy.gaussian_release``).
    release_digest: SHA-256 (hex) of the bytes the client released ("" when it released nothing): the
        key of the release in a privacy ledger, so a new release is never taken for an old one.
    """

    indices: np.ndarray
    clusters: np.ndarray
    scores: np.ndarray
    releases: list = field(default_factory=list)
    bytes_down: int = 0
    bytes_up: int = 0
    cluster_scores: np.ndarray | None = None
    release_digest: str = ""
    wall_s: float = 0.0

    def epsilon(self, delta: float) -> float:
        return releases_epsilon(self.releases, delta)


def select_proxy(sampler: str, open_features: np.ndarray, budget: int, *, client_features=None,
                 num_clusters: int = 100, q: int = 1, noise_multiplier: float = 8.0, delta: float = 1e-5,
                 seed: int = 0, fp16: bool = False, pca_dim: int | None = None,
                 encoder: dict | None = None, progress: bool = False) -> ProxyResult:
    """Select a proxy of ``budget`` open samples with ``sampler`` (one of ``OPEN_SAMPLERS``)."""
    if sampler not in OPEN_SAMPLERS:
        raise ValueError(f"sampler must be one of {OPEN_SAMPLERS}, got {sampler!r}")
    start = time.perf_counter()
    if sampler == "ecos":
        if client_features is None:
            raise ValueError("client_features is required by the 'ecos' sampler")
        cloud = CloudSampler(num_clusters=num_clusters, seed=seed, fp16=fp16, pca_dim=pca_dim, encoder=encoder,
                             progress=progress)
        down = cloud.fit(open_features).to_bytes()
        responder = ClientResponder(noise_multiplier=noise_multiplier, q=q, delta=delta, seed=seed)
        up = responder.respond(CentroidsMessage.from_bytes(down), client_features).to_bytes()
        scores = ScoresMessage.from_bytes(up)
        selection = cloud.select(scores, budget)
        result = ProxyResult(selection.indices, selection.clusters, selection.scores,
                             [gaussian_release(noise_multiplier, what="ecos_coverage_scores")],
                             len(down), len(up), np.clip(scores.scores, 0, None), hashlib.sha256(up).hexdigest())
    else:
        indices = run_baseline(sampler, open_features, budget, client_features=client_features, seed=seed)
        releases, bytes_up, digest = [], 0, ""
        if sampler == "upload":
            features = np.ascontiguousarray(client_features, dtype=np.float32)
            releases = [{"mechanism": "non_private", "count": 1, "what": "uploaded client features"}]
            bytes_up = features.nbytes
            digest = hashlib.sha256(features.tobytes()).hexdigest()
        result = ProxyResult(indices, np.full(len(indices), -1, np.int64),
                             np.full(len(indices), np.nan, np.float32), releases, 0, bytes_up,
                             release_digest=digest)
    result.wall_s = time.perf_counter() - start
    log.info("%s: %d proxy samples, epsilon %.3f at delta %g, %d bytes down, %d bytes up, %.2f s",
             sampler, len(result.indices), result.epsilon(delta), delta, result.bytes_down,
             result.bytes_up, result.wall_s)
    return result
