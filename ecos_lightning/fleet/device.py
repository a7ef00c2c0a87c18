"""What one device of a fleet does with a centroids message, and what the cloud makes of the fleet's sum:
the one implementation behind the simulated fleet (:class:`~ecos_lightning.fleet.DeviceAnswers`) and the
deployed one (:mod:`ecos_lightning.fleet.app`). No Flower here."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from ..client.ledger import record_releases
from ..protocol import CentroidsMessage, ClientResponder, ScoresMessage
from ..protocol.fleet import FleetPrivacy
from ..protocol.privacy import releases_epsilon


def device_release(privacy: FleetPrivacy, q: int, delta: float, centroids: CentroidsMessage) -> dict:
    """The release record one device's answer to ``centroids`` costs (its ledger's entry)."""
    return {**privacy.release(q, f"fleet coverage, centroids {centroids.digest()[:16]}"), "delta": delta}


def device_answer(centroids: CentroidsMessage, features: np.ndarray, privacy: FleetPrivacy, q: int, delta: float,
                  rng: np.random.Generator, ledger: str | Path | None = None,
                  max_epsilon: float | None = None) -> np.ndarray:
    """One device's answer float64 [K] for its features [M, d]: its exact coverage counts (each image covers
    its ``q`` nearest centroids) plus the noise of ``privacy`` drawn from ``rng``. With ``ledger``, the
    release is checked against the budget and recorded there under the ledger's lock before the answer is
    returned (``ValueError``, nothing recorded, past the budget)."""
    counts = ClientResponder(noise_multiplier=0.0, q=q).coverage(centroids, features)
    answer = privacy.answer(counts.astype(np.int64), q, rng)
    if ledger is not None:
        record_releases(ledger, hashlib.sha256(answer.tobytes()).hexdigest(),
                        [device_release(privacy, q, delta, centroids)], delta, max_epsilon)
    return answer


def sum_scores(total: np.ndarray, answered: int, privacy: FleetPrivacy, q: int, delta: float,
               centroids: CentroidsMessage) -> ScoresMessage:
    """The scores message of a fleet's sum ``total`` [K] of ``answered`` answers: its noise multiplier is the
    sum's noise std over sqrt(q), its epsilon the per-device one."""
    noise = privacy.sum_noise_std(answered, q) / math.sqrt(q)
    epsilon = releases_epsilon([privacy.release(q)], delta)
    return ScoresMessage(np.asarray(total, np.float32), noise, q, delta, epsilon, centroids.digest())


__all__ = ["device_answer", "device_release", "sum_scores"]
