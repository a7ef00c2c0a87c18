"""Privacy accounting for the Gaussian mechanism, through dp-accounting.

The noise multiplier is ``noise_std / l2_sensitivity``. A centroid-coverage release
with ``q`` nearest centroids has sensitivity ``sqrt(q)`` and noise std ``sigma * sqrt(q)``,
so its noise multiplier is ``sigma`` whatever ``q`` is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import dp_accounting
from dp_accounting.pld import PLDAccountant

from .validation import non_negative_float, probability


def coverage_sensitivity(q: int) -> float:
    """L2 sensitivity of the CC score vector: one sample changes at most ``q`` counts by 1."""
    return math.sqrt(q)


def gaussian_epsilon(noise_multiplier: float, delta: float, releases: int = 1) -> float:
    """Epsilon at ``delta`` of ``releases`` composed Gaussian releases (PLD accountant).

    Returns ``inf`` when ``noise_multiplier == 0`` (no noise: no privacy).
    """
    return composed_epsilon([(noise_multiplier, releases)], delta)


def composed_epsilon(releases: Iterable[tuple[float, int]], delta: float) -> float:
    """Epsilon at ``delta`` of several Gaussian releases, each ``(noise_multiplier, count)`` (PLD)."""
    delta = probability(delta, "delta")
    accountant = PLDAccountant()
    any_release = False
    for noise_multiplier, count in releases:
        sigma = non_negative_float(noise_multiplier, "noise_multiplier")
        if count <= 0:
            continue
        if sigma == 0.0:
            return math.inf
        accountant.compose(dp_accounting.GaussianDpEvent(sigma), int(count))
        any_release = True
    if not any_release:
        return 0.0
    return float(accountant.get_epsilon(delta))


def noise_multiplier_for_epsilon(epsilon: float, delta: float, releases: int = 1) -> float:
    """Smallest noise multiplier (to 1e-3 relative) whose ``releases`` releases cost at most ``epsilon``."""
    if not epsilon > 0 or not math.isfinite(epsilon):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    low, high = 1e-2, 1.0
    while gaussian_epsilon(high, delta, releases) > epsilon:
        low, high = high, high * 2
        if high > 1e6:
            raise ValueError(f"epsilon {epsilon} is too small to reach at delta {delta}")
    while (high - low) / high > 1e-3:
        mid = (low + high) / 2
        if gaussian_epsilon(mid, delta, releases) > epsilon:
            low = mid
        else:
            high = mid
    return high
