"""A fleet of client devices answering one probe: how each device noises its coverage counts, what the sum
of their answers carries, and the checks of the answers the cloud sees.

Two paths (``FleetPrivacy.secure``):

* secure aggregation: each device adds an integer Skellam share (:mod:`.skellam`) to its integer counts and
  the cloud learns only the sum (Flower's SecAgg+, ``ecos_lightning.fleet``). The shares are sized so that
  ``threshold - colluding`` honest shares carry the noise of a Gaussian release at ``noise_multiplier``: a
  round with fewer than ``threshold`` answers is aborted before the sum is revealed, and the cloud together
  with ``colluding`` devices (who know their own shares) still faces that much noise.
* local noise: each device adds the full Gaussian noise, sends its answer as a scores message, and the cloud
  sums the answers it accepts (each one checked: length, finite, this round's centroids, no replay).

Every device pays the epsilon of its own release (:meth:`FleetPrivacy.release`), whatever the others do.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .messages import ScoresMessage
from .privacy import check_noise_multiplier, gaussian_release, skellam_sum_release
from .skellam import skellam_share
from .validation import positive_int

#: Under secure aggregation every coordinate of an answer lies in [-SECAGG_CLIP, SECAGG_CLIP] (SecAgg+'s
#: clipping range; its quantization is then exact on integers).
SECAGG_CLIP = 1 << 16


class RoundAborted(RuntimeError):
    """Fewer devices answered than the threshold: nothing was revealed."""


@dataclass(frozen=True)
class FleetPrivacy:
    """How a fleet's coverage answers are noised and summed (see the module docstring).

    noise_multiplier: sigma of the Gaussian release the sum's noise matches (per coordinate, std
    ``noise_multiplier * sqrt(q)``; sensitivity ``sqrt(q)``). secure: secure aggregation with Skellam shares,
    else local Gaussian noise. threshold: fewest answers a sum is made of. colluding: devices that may collude
    with the cloud (secure only; the guarantee counts ``threshold - colluding`` honest shares).
    """

    noise_multiplier: float = 8.0
    secure: bool = True
    threshold: int = 2
    colluding: int = 0

    def __post_init__(self):
        check_noise_multiplier(self.noise_multiplier)
        positive_int(self.threshold, "threshold")
        if isinstance(self.colluding, bool) or not isinstance(self.colluding, int) or \
                not 0 <= self.colluding < self.threshold:
            raise ValueError(f"colluding must be an integer in [0, threshold={self.threshold}), got {self.colluding!r}")

    @property
    def honest_shares(self) -> int:
        return self.threshold - self.colluding

    def release(self, q: int, what: str = "fleet coverage") -> dict:
        """What one device releases for one probe (its ledger's record)."""
        if self.secure:
            return skellam_sum_release(self.noise_multiplier, q, self.honest_shares, what)
        return {**gaussian_release(self.noise_multiplier, what=what), "q": int(q)}

    def answer(self, counts: np.ndarray, q: int, rng: np.random.Generator) -> np.ndarray:
        """One device's answer float64 [K] for its exact coverage counts [K]: integer counts plus a Skellam
        share (secure; ``ValueError`` beyond ``SECAGG_CLIP``), else counts plus Gaussian noise."""
        counts = np.asarray(counts)
        if not self.secure:
            return counts.astype(np.float64) + rng.normal(0.0, self.noise_multiplier * math.sqrt(q), counts.shape)
        answer = skellam_share(counts, self.noise_multiplier, q, self.honest_shares, rng)
        if np.abs(answer).max(initial=0) > SECAGG_CLIP:
            raise ValueError(f"a coverage count plus its noise exceeds {SECAGG_CLIP}, the secure aggregation range: "
                             "use more clusters or split the device's images")
        return answer.astype(np.float64)

    def sum_noise_std(self, answers: int, q: int) -> float:
        """Standard deviation of the noise in each coordinate of a sum of ``answers`` answers."""
        per_answer = self.noise_multiplier ** 2 * q / (self.honest_shares if self.secure else 1)
        return math.sqrt(answers * per_answer)


def sum_answers(blobs: dict[str, bytes], centroids_digest: str, num_clusters: int) -> tuple[np.ndarray, dict]:
    """Local-noise path: the sum float64 [K] of the scores messages the cloud accepts, and why each refused
    device was refused (device -> one line). A message is refused that does not parse (non-finite scores
    included), answers other centroids (another round), holds another number of scores, or repeats the
    bytes of an answer already taken (a replay)."""
    total, refused, seen = np.zeros(num_clusters), {}, set()
    for device, blob in blobs.items():
        digest = hashlib.sha256(blob).hexdigest()
        try:
            answer = ScoresMessage.from_bytes(blob)
        except ValueError as exc:  # a MessageError is a ValueError
            refused[device] = f"device {device}: not a scores message ({exc})"
            continue
        if answer.centroids_digest != centroids_digest:
            refused[device] = f"device {device}: answers other centroids (another round)"
        elif answer.num_clusters != num_clusters:
            refused[device] = f"device {device}: {answer.num_clusters} scores for {num_clusters} centroids"
        elif digest in seen:
            refused[device] = f"device {device}: replays an answer already taken"
        else:
            seen.add(digest)
            total += answer.scores.astype(np.float64)
    return total, refused


__all__ = ["SECAGG_CLIP", "FleetPrivacy", "RoundAborted", "sum_answers"]
