"""The auto-labelling messages: proxy features down (cloud -> client), private kNN labels up.

Both travel in the container of :mod:`.container`; ``from_bytes`` treats its input as untrusted and
raises :class:`MessageError` naming the field. The chain is tied by hashes: a queries message names
its proxy set (``proxy``), a labels message names the queries it answers (``queries_digest``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .container import MAX_FEATURE_DIM, MAX_QUERIES, MessageError, pack, unpack
from .message_fields import (check_class_names, check_encoder, check_epsilon, check_finite, check_hex, check_int,
                             check_noise_and_delta, check_real, expect_keys, expect_tensors)
from .privacy import epsilon_from_json, epsilon_to_json

__all__ = ["LabelsMessage", "QueriesMessage"]

_MAX_CLASSES = 10_000


@dataclass(frozen=True, eq=False)
class QueriesMessage:
    """Features of the proxy set, to be labelled by the client.

    features: float32 [Q, d], the open-pool features of the proxy images (public data).
    encoder: the encoder spec (``EncoderSpec.to_dict()``) that produced them.
    proxy: 16 hex characters, ``stable_hash`` of the proxy indices these rows follow.
    """

    features: np.ndarray
    encoder: dict
    proxy: str
    KIND = "queries"

    def __post_init__(self):
        f = self.features
        if (not isinstance(f, np.ndarray) or f.dtype != np.float32 or f.ndim != 2
                or not 1 <= f.shape[0] <= MAX_QUERIES or not 1 <= f.shape[1] <= MAX_FEATURE_DIM):
            raise MessageError(f"features: must be a float32 array [1 <= Q <= {MAX_QUERIES}, "
                               f"1 <= d <= {MAX_FEATURE_DIM}]")
        check_finite(f, "features")
        check_encoder(self.encoder)
        check_hex(self.proxy, "proxy", 16, "the stable hash of the proxy indices")

    @property
    def feature_dim(self) -> int:
        """Dimension d of the encoder features the client must supply."""
        return int(self.features.shape[1])

    def to_bytes(self) -> bytes:
        return pack(self.KIND, {"features": self.features}, {"encoder": self.encoder, "proxy": self.proxy})

    @classmethod
    def from_bytes(cls, blob: bytes, max_bytes: int | None = None) -> "QueriesMessage":
        tensors, meta = unpack(blob, cls.KIND, max_bytes)
        expect_keys(meta, {"encoder", "proxy"}, "meta")
        expect_tensors(tensors, {"features"})
        return cls(tensors["features"], meta["encoder"], meta["proxy"])


@dataclass(frozen=True, eq=False)
class LabelsMessage:
    """Private kNN labels of the queries, and what they cost.

    labels: int64 [Q] in ``[0, len(class_names))``, the noisy-argmax label of each query row.
    class_names: the client's class names, in label order.
    queries_digest: SHA-256 (hex) of the queries message these labels answer.
    noise_multiplier, k, sampling_rate: the Private kNN parameters.
    epsilon: cost of this release at ``delta``; total_epsilon: the client's ledger total after it
        (both ``inf`` when not private).
    """

    labels: np.ndarray
    class_names: tuple[str, ...]
    queries_digest: str
    noise_multiplier: float
    k: int
    sampling_rate: float
    delta: float
    epsilon: float
    total_epsilon: float
    KIND = "labels"

    def __post_init__(self):
        names = check_class_names(self.class_names, _MAX_CLASSES)
        object.__setattr__(self, "class_names", names)
        y = self.labels
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1 or not 1 <= y.size <= MAX_QUERIES:
            raise MessageError(f"labels: must be an int64 vector [1 <= Q <= {MAX_QUERIES}]")
        if y.min() < 0 or y.max() >= len(names):
            raise MessageError(f"labels: must lie in [0, {len(names) - 1}]")
        check_hex(self.queries_digest, "queries_digest", 64, "the SHA-256 of the queries message these labels answer")
        check_int(self.k, "k", 1)
        check_real(self.sampling_rate, "sampling_rate", lambda v: 0 < v <= 1, "a number in (0, 1]")
        check_noise_and_delta(self.noise_multiplier, self.delta)
        check_epsilon(self.epsilon, "epsilon")
        check_epsilon(self.total_epsilon, "total_epsilon")

    def to_bytes(self) -> bytes:
        meta = {"class_names": list(self.class_names), "queries_digest": self.queries_digest,
                "noise_multiplier": float(self.noise_multiplier), "k": int(self.k),
                "sampling_rate": float(self.sampling_rate), "delta": float(self.delta),
                "epsilon": epsilon_to_json(self.epsilon), "total_epsilon": epsilon_to_json(self.total_epsilon)}
        return pack(self.KIND, {"labels": self.labels}, meta)

    @classmethod
    def from_bytes(cls, blob: bytes, max_bytes: int | None = None) -> "LabelsMessage":
        tensors, meta = unpack(blob, cls.KIND, max_bytes)
        expect_keys(meta, {"class_names", "queries_digest", "noise_multiplier", "k", "sampling_rate", "delta",
                           "epsilon", "total_epsilon"}, "meta")
        expect_tensors(tensors, {"labels"})
        epsilons = [epsilon_from_json(meta[n]) for n in ("epsilon", "total_epsilon")]
        return cls(tensors["labels"], meta["class_names"], meta["queries_digest"], meta["noise_multiplier"],
                   meta["k"], meta["sampling_rate"], meta["delta"], *epsilons)

    def answers(self, queries_blob: bytes) -> bool:
        """Whether these labels answer the queries message serialised as ``queries_blob``."""
        return hashlib.sha256(queries_blob).hexdigest() == self.queries_digest
