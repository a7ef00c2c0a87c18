"""The distributed Skellam mechanism: integer noise that many clients add in shares, summed by secure aggregation.

Each honest client adds, to each coordinate of its integer answer, ``Poisson(mu) - Poisson(mu)`` (a Skellam
share of variance ``2 mu``). Skellam shares sum to a Skellam: ``h`` honest shares give ``Skellam(h mu)`` exactly,
whatever the data, and more shares only add noise (post-processing). So a sum that holds at least ``h`` honest
shares is at least as private as ``Skellam(h mu)`` with the data's sensitivity (Agarwal, Kairouz and Liu, "The
Skellam Mechanism for Differentially Private Federated Learning", NeurIPS 2021).

Accounting, through dp-accounting: the privacy loss distribution is built from the exact probability mass
functions (``scipy.stats.skellam``) of the noise and of the noise shifted by one, one coordinate, composed
over the ``q`` coordinates one sample changes (:func:`skellam_pld`); the RDP cross-check uses the paper's
Theorem 3.5 bound at integer orders (:func:`skellam_rdp`).
"""

from __future__ import annotations

import math

import numpy as np
from dp_accounting.pld import privacy_loss_distribution
from scipy import stats

#: Noise tails beyond this many standard deviations (mass < 1e-40) are left out of the distributions.
TAIL_STDS = 14.0


def share_mu(noise_multiplier: float, q: int, shares: int) -> float:
    """The Poisson mean ``mu`` of one share, so that ``shares`` honest shares sum to the noise of a Gaussian
    release at ``noise_multiplier`` (per-coordinate variance ``noise_multiplier**2 * q``)."""
    return noise_multiplier ** 2 * q / (2.0 * shares)


def skellam_pld(noise_multiplier: float, q: int, shares: int, count: int = 1,
                value_discretization_interval: float = 1e-4) -> privacy_loss_distribution.PrivacyLossDistribution:
    """The PLD of ``count`` releases of a sum of ``shares`` Skellam shares (:func:`share_mu`), sensitivity: one
    sample adds 1 to ``q`` coordinates."""
    mu = shares * share_mu(noise_multiplier, q, shares)
    reach = int(math.ceil(TAIL_STDS * math.sqrt(2.0 * mu))) + 2
    support = np.arange(-reach, reach + 1)
    log_pmf = stats.skellam.logpmf(support, mu, mu)
    lower = {int(k): float(p) for k, p in zip(support, log_pmf)}
    upper = {int(k) + 1: float(p) for k, p in zip(support, log_pmf)}  # the same noise around a count one higher
    one = privacy_loss_distribution.from_two_probability_mass_functions(
        lower, upper, value_discretization_interval=value_discretization_interval)
    return one.self_compose(q * count)


def skellam_rdp(noise_multiplier: float, q: int, shares: int, orders, count: int = 1) -> np.ndarray:
    """RDP epsilon at each of ``orders`` (inf at a non-integer order, where the bound is not stated) of ``count``
    releases of the Skellam sum: Theorem 3.5 with L2 sensitivity ``sqrt(q)``, L1 ``q``, variance ``2 mu``."""
    mu = shares * share_mu(noise_multiplier, q, shares)
    out = []
    for alpha in orders:
        if alpha <= 1 or alpha != int(alpha):
            out.append(math.inf)
            continue
        l2, l1 = float(q), float(q)  # squared L2 norm, L1 norm
        bound = alpha * l2 / (4 * mu) + min(((2 * alpha - 1) * l2 + 6 * l1) / (16 * mu ** 2), 3 * l1 / (4 * mu))
        out.append(count * bound)
    return np.asarray(out)


def skellam_share(counts: np.ndarray, noise_multiplier: float, q: int, shares: int,
                  rng: np.random.Generator) -> np.ndarray:
    """One client's integer answer int64 [K]: its counts plus a Skellam share drawn from ``rng``."""
    mu = share_mu(noise_multiplier, q, shares)
    counts = np.asarray(counts, dtype=np.int64)
    if mu == 0:
        return counts.copy()
    return counts + rng.poisson(mu, counts.shape) - rng.poisson(mu, counts.shape)


__all__ = ["TAIL_STDS", "share_mu", "skellam_pld", "skellam_rdp", "skellam_share"]
