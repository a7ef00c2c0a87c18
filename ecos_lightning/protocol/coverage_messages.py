"""The class-coverage labelling messages: proxy centroids down (cloud -> client), noisy class histograms up.

Both travel in the container of :mod:`.container`; ``from_bytes`` treats its input as untrusted and
raises :class:`MessageError` naming the field. A query names its proxy set (``proxy``); a histogram
names the query it answers (``query_digest``). The maths is :mod:`ecos_lightning.protocol.class_coverage`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .container import MAX_CLUSTERS, MAX_FEATURE_DIM, MessageError, pack, unpack
from .message_fields import (check_class_names, check_encoder, check_epsilon, check_finite, check_hex, check_int,
                             check_noise_and_delta, expect_keys, expect_tensors)
from .privacy import epsilon_from_json, epsilon_to_json

__all__ = ["ClassHistogramMessage", "CoverageQueryMessage"]

#: Most resolutions (histograms) a query may ask for; most classes a histogram may hold.
MAX_RESOLUTIONS, MAX_CLASSES = 8, 10_000
#: Most cells (centroids x classes) a histogram may hold: bounds the client's work and the message.
MAX_CELLS = 1 << 22
#: Largest L2 norm of a centroid: the clustering space holds unit vectors, so k-means centroids lie in the
#: unit ball (faiss's split of an empty cluster may scale one by 1 + 1/1024).
MAX_CENTROID_NORM = 2.0


@dataclass(frozen=True, eq=False)
class CoverageQueryMessage:
    """Centroids of the proxy set in a whitened feature space, for the client's class histograms.

    projection: float32 [d, d'], bias: float32 [d']: the client maps its features to
        ``normalise(x @ projection + bias)`` (d' <= d).
    centroids: float32 [sum C_r, d'], resolution after resolution; clusters: int64 [R], the C_r.
    encoder: the encoder spec (``EncoderSpec.to_dict()``) of the features x.
    proxy: 16 hex characters, ``stable_hash`` of the proxy indices the centroids were fitted on.
    features: 64 hex characters, SHA-256 of the proxy's feature rows [B, d] the query was made from
        (``features.store.matrix_digest``): the cloud attaches the answer only to those features.
    """

    projection: np.ndarray
    bias: np.ndarray
    centroids: np.ndarray
    clusters: np.ndarray
    encoder: dict
    proxy: str
    features: str
    KIND = "coverage_query"

    def __post_init__(self):
        p, b, c, k = self.projection, self.bias, self.centroids, self.clusters
        if (not isinstance(p, np.ndarray) or p.dtype != np.float32 or p.ndim != 2
                or not 1 <= p.shape[1] <= p.shape[0] <= MAX_FEATURE_DIM):
            raise MessageError(f"projection: must be a float32 array [d, d'] with 1 <= d' <= d <= {MAX_FEATURE_DIM}")
        if not isinstance(b, np.ndarray) or b.dtype != np.float32 or b.shape != (p.shape[1],):
            raise MessageError(f"bias: must be a float32 vector [{p.shape[1]}]")
        if (not isinstance(k, np.ndarray) or k.dtype != np.int64 or k.ndim != 1
                or not 1 <= k.size <= MAX_RESOLUTIONS or k.min() < 1 or k.max() > MAX_CLUSTERS):
            raise MessageError(f"clusters: must be an int64 vector of 1 to {MAX_RESOLUTIONS} counts in "
                               f"[1, {MAX_CLUSTERS}]")
        if (not isinstance(c, np.ndarray) or c.dtype != np.float32 or c.ndim != 2
                or c.shape != (int(k.sum()), p.shape[1])):
            raise MessageError(f"centroids: must be a float32 array [{int(k.sum())}, {p.shape[1]}] (sum of clusters, "
                               "d')")
        if c.shape[0] > MAX_CLUSTERS:
            raise MessageError(f"centroids: {c.shape[0]} rows exceed the limit of {MAX_CLUSTERS}")
        for name, array in (("projection", p), ("bias", b), ("centroids", c)):
            check_finite(array, name)
        if float(np.linalg.norm(c.astype(np.float64), axis=1).max()) > MAX_CENTROID_NORM:
            raise MessageError(f"centroids: a row has L2 norm above {MAX_CENTROID_NORM}; centroids of the unit "
                               "vectors the client maps its features to lie in the unit ball")
        check_encoder(self.encoder)
        check_hex(self.proxy, "proxy", 16, "the stable hash of the proxy indices")
        check_hex(self.features, "features", 64, "the SHA-256 of the proxy's features")

    @property
    def feature_dim(self) -> int:
        """Dimension d of the encoder features the client must supply."""
        return int(self.projection.shape[0])

    def to_bytes(self) -> bytes:
        tensors = {"projection": self.projection, "bias": self.bias, "centroids": self.centroids,
                   "clusters": self.clusters}
        return pack(self.KIND, tensors, {"encoder": self.encoder, "proxy": self.proxy, "features": self.features})

    @classmethod
    def from_bytes(cls, blob: bytes, max_bytes: int | None = None) -> "CoverageQueryMessage":
        tensors, meta = unpack(blob, cls.KIND, max_bytes)
        expect_keys(meta, {"encoder", "proxy", "features"}, "meta")
        expect_tensors(tensors, {"projection", "bias", "centroids", "clusters"})
        return cls(tensors["projection"], tensors["bias"], tensors["centroids"], tensors["clusters"],
                   meta["encoder"], meta["proxy"], meta["features"])


@dataclass(frozen=True, eq=False)
class ClassHistogramMessage:
    """The client's noisy class histograms over the query's centroids, and what they cost.

    counts: float32 [sum C_r, L]: per centroid and class, the client samples whose nearest centroid of that
        resolution it is, plus Gaussian noise of std ``noise_multiplier`` (sensitivity 1 per histogram).
    class_names: the client's class names, in column order.
    query_digest: SHA-256 (hex) of the query message these histograms answer.
    resolutions: R, the number of histograms (each one Gaussian release).
    epsilon: cost of this release at ``delta``; total_epsilon: the client's ledger total after it (both
        ``inf`` when not private).
    """

    counts: np.ndarray
    class_names: tuple[str, ...]
    query_digest: str
    noise_multiplier: float
    resolutions: int
    delta: float
    epsilon: float
    total_epsilon: float
    KIND = "class_histogram"

    def __post_init__(self):
        names = check_class_names(self.class_names, MAX_CLASSES)
        object.__setattr__(self, "class_names", names)
        c = self.counts
        if (not isinstance(c, np.ndarray) or c.dtype != np.float32 or c.ndim != 2
                or not 1 <= c.shape[0] <= MAX_CLUSTERS or c.shape[1] != len(names) or c.size > MAX_CELLS):
            raise MessageError(f"counts: must be a float32 array [1 <= rows <= {MAX_CLUSTERS}, {len(names)} classes] "
                               f"of at most {MAX_CELLS} cells")
        check_finite(c, "counts")
        check_hex(self.query_digest, "query_digest", 64, "the SHA-256 of the query message these histograms answer")
        check_int(self.resolutions, "resolutions", 1, MAX_RESOLUTIONS)
        check_noise_and_delta(self.noise_multiplier, self.delta)
        check_epsilon(self.epsilon, "epsilon")
        check_epsilon(self.total_epsilon, "total_epsilon")

    def to_bytes(self) -> bytes:
        meta = {"class_names": list(self.class_names), "query_digest": self.query_digest,
                "noise_multiplier": float(self.noise_multiplier), "resolutions": int(self.resolutions),
                "delta": float(self.delta), "epsilon": epsilon_to_json(self.epsilon),
                "total_epsilon": epsilon_to_json(self.total_epsilon)}
        return pack(self.KIND, {"counts": self.counts}, meta)

    @classmethod
    def from_bytes(cls, blob: bytes, max_bytes: int | None = None) -> "ClassHistogramMessage":
        tensors, meta = unpack(blob, cls.KIND, max_bytes)
        expect_keys(meta, {"class_names", "query_digest", "noise_multiplier", "resolutions", "delta", "epsilon",
                           "total_epsilon"}, "meta")
        expect_tensors(tensors, {"counts"})
        epsilons = [epsilon_from_json(meta[n]) for n in ("epsilon", "total_epsilon")]
        return cls(tensors["counts"], meta["class_names"], meta["query_digest"], meta["noise_multiplier"],
                   meta["resolutions"], meta["delta"], *epsilons)

    def answers(self, query_blob: bytes, query: CoverageQueryMessage) -> bool:
        """Whether these histograms answer ``query`` (serialised as ``query_blob``): digest, rows, resolutions."""
        return (hashlib.sha256(query_blob).hexdigest() == self.query_digest
                and self.counts.shape[0] == query.centroids.shape[0] and self.resolutions == query.clusters.size)
