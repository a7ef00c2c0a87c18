"""The two protocol messages: centroids down (cloud -> client) and noisy scores up (client -> cloud).

Both travel as bytes in the container of :mod:`.container` (versioned, checksummed, safetensors
payload, JSON header). ``from_bytes`` treats its input as untrusted: every field is validated
and any problem raises :class:`MessageError` naming the field.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .container import MAX_CLUSTERS, MAX_FEATURE_DIM, MessageError, pack, unpack
from .message_fields import (check_encoder, check_epsilon, check_finite, check_hex, check_int, check_noise_and_delta,
                             check_real, expect_keys, expect_tensors)
from .privacy import epsilon_from_json, epsilon_to_json
from .validation import as_features

__all__ = ["CentroidsMessage", "ScoresMessage", "MessageError"]

_SCORES_META_KEYS = {"noise_multiplier", "q", "delta", "epsilon", "centroids_digest", "radius"}


@dataclass(frozen=True, eq=False)
class CentroidsMessage:
    """Cluster centroids of the open-source features, as the client sees them.

    centroids: [K, d'] float32 or float16 (fp16 halves the bytes down).
    projection, bias: optional PCA map ``y = x @ projection + bias``, [d, d'] and [d'] float32;
        the client applies it to its own features so they live in the centroids' space.
    encoder: the encoder spec (``EncoderSpec.to_dict()``) both sides use, or None.
    """

    centroids: np.ndarray
    projection: np.ndarray | None = None
    bias: np.ndarray | None = None
    encoder: dict | None = None
    KIND = "centroids"

    def __post_init__(self):
        _check_centroids(self.centroids, self.projection, self.bias)
        if self.encoder is not None:
            check_encoder(self.encoder)

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def feature_dim(self) -> int:
        """Dimension d of the encoder features the client must supply."""
        return int(self.projection.shape[0]) if self.projection is not None else int(self.centroids.shape[1])

    def project(self, features) -> np.ndarray:
        """Map encoder features [M, d] into the centroids' space [M, d'] (float32)."""
        features = as_features(features, "client_features")
        if features.shape[1] != self.feature_dim:
            raise ValueError(
                f"client_features: dimension {features.shape[1]} does not match the centroids' feature "
                f"dimension {self.feature_dim}; extract features with the encoder named in the message"
            )
        if self.projection is None:
            return features
        return features @ self.projection + self.bias

    def centroids_f32(self) -> np.ndarray:
        return np.ascontiguousarray(self.centroids, dtype=np.float32)

    def to_bytes(self) -> bytes:
        tensors = {"centroids": self.centroids}
        if self.projection is not None:
            tensors.update(projection=self.projection, bias=self.bias)
        return pack(self.KIND, tensors, {"encoder": self.encoder})

    @classmethod
    def from_bytes(cls, blob: bytes, max_bytes: int | None = None) -> "CentroidsMessage":
        tensors, meta = unpack(blob, cls.KIND, max_bytes)
        expect_keys(meta, {"encoder"}, "meta")
        if set(tensors) not in ({"centroids"}, {"centroids", "projection", "bias"}):
            raise MessageError(f"tensors: expected centroids [+ projection, bias], got {sorted(tensors)}")
        encoder = meta["encoder"]
        if encoder is not None and not isinstance(encoder, dict):
            raise MessageError("meta.encoder: must be an object or null")
        return cls(tensors["centroids"], tensors.get("projection"), tensors.get("bias"), encoder)

    def digest(self) -> str:
        """SHA-256 (hex) of the serialised message: ties a scores message to these centroids."""
        return hashlib.sha256(self.to_bytes()).hexdigest()


@dataclass(frozen=True, eq=False)
class ScoresMessage:
    """Noisy centroid-coverage scores from the client: K float32 numbers, nothing else private.

    scores: [K] float32, ``s + N(0, (noise_multiplier * sqrt(q))^2)``; may be negative.
    epsilon: privacy cost at ``delta`` of this release (``inf`` when noise_multiplier is 0).
    centroids_digest: :meth:`CentroidsMessage.digest` of the centroids these scores answer (required).
    """

    scores: np.ndarray
    noise_multiplier: float
    q: int
    delta: float
    epsilon: float
    centroids_digest: str
    radius: float | None = None
    KIND = "scores"

    def __post_init__(self):
        if not isinstance(self.scores, np.ndarray) or self.scores.dtype != np.float32 or self.scores.ndim != 1:
            raise MessageError("scores: must be a float32 vector [K]")
        if not 1 <= self.scores.size <= MAX_CLUSTERS:
            raise MessageError(f"scores: must hold 1 to {MAX_CLUSTERS} scores, got {self.scores.size}")
        check_finite(self.scores, "scores")
        check_noise_and_delta(self.noise_multiplier, self.delta)
        check_int(self.q, "q", 1)
        check_epsilon(self.epsilon, "epsilon")
        check_hex(self.centroids_digest, "centroids_digest", 64,
                  "the SHA-256 of the centroids message these scores answer")
        if self.radius is not None:
            check_real(self.radius, "radius", lambda v: 0 <= v < math.inf, "a finite number >= 0")

    @property
    def num_clusters(self) -> int:
        return int(self.scores.shape[0])

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise added to each score."""
        return self.noise_multiplier * math.sqrt(self.q)

    def to_bytes(self) -> bytes:
        meta = {
            "noise_multiplier": float(self.noise_multiplier),
            "q": int(self.q),
            "delta": float(self.delta),
            "epsilon": epsilon_to_json(self.epsilon),
            "centroids_digest": self.centroids_digest,
            "radius": None if self.radius is None else float(self.radius),
        }
        return pack(self.KIND, {"scores": self.scores}, meta)

    @classmethod
    def from_bytes(cls, blob: bytes, max_bytes: int | None = None) -> "ScoresMessage":
        tensors, meta = unpack(blob, cls.KIND, max_bytes)
        expect_keys(meta, _SCORES_META_KEYS, "meta")
        expect_tensors(tensors, {"scores"})
        epsilon = epsilon_from_json(meta["epsilon"])
        return cls(tensors["scores"], meta["noise_multiplier"], meta["q"], meta["delta"], epsilon,
                   meta["centroids_digest"], meta["radius"])

    def check_answers(self, centroids: CentroidsMessage) -> None:
        """Raise ``MessageError`` unless these scores answer ``centroids`` (length K and digest)."""
        if self.num_clusters != centroids.num_clusters:
            raise MessageError(
                f"scores: length {self.num_clusters} != number of centroids K={centroids.num_clusters}"
            )
        if self.centroids_digest != centroids.digest():
            raise MessageError("centroids_digest: these scores answer a different centroids message")


def _check_centroids(centroids, projection, bias) -> None:
    if not isinstance(centroids, np.ndarray) or centroids.dtype.name not in ("float16", "float32"):
        raise MessageError("centroids: must be a float16 or float32 array")
    if (centroids.ndim != 2 or not 1 <= centroids.shape[0] <= MAX_CLUSTERS
            or not 1 <= centroids.shape[1] <= MAX_FEATURE_DIM):
        raise MessageError(f"centroids: must have shape [1 <= K <= {MAX_CLUSTERS}, 1 <= d <= {MAX_FEATURE_DIM}], "
                           f"got {list(centroids.shape)}")
    check_finite(centroids, "centroids")
    if (projection is None) != (bias is None):
        raise MessageError("projection/bias: both or neither must be given")
    if projection is None:
        return
    for name, array, ndim in (("projection", projection, 2), ("bias", bias, 1)):
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != ndim:
            raise MessageError(f"{name}: must be a float32 array with {ndim} dimension(s)")
        check_finite(array, name)
    if projection.shape[1] != centroids.shape[1] or not 1 <= projection.shape[0] <= MAX_FEATURE_DIM:
        raise MessageError(f"projection: shape {list(projection.shape)} must be [d <= {MAX_FEATURE_DIM}, "
                           f"{centroids.shape[1]}] to match the centroids")
    if projection.shape[1] > projection.shape[0]:
        raise MessageError(f"projection: maps d={projection.shape[0]} to d'={projection.shape[1]} > d dimensions; "
                           "a PCA projection never adds dimensions")
    if bias.shape != (centroids.shape[1],):
        raise MessageError(f"bias: shape {list(bias.shape)} must be [{centroids.shape[1]}]")
