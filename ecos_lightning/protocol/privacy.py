"""Privacy accounting for the Gaussian mechanism, through dp-accounting.

The noise multiplier is ``noise_std / l2_sensitivity``. A centroid-coverage release
with ``q`` nearest centroids has sensitivity ``sqrt(q)`` and noise std ``sigma * sqrt(q)``,
so its noise multiplier is ``sigma`` whatever ``q`` is.

Two accountants, both dp-accounting's: ``"pld"`` (privacy loss distributions: the tight epsilon this
project reports first) and ``"rdp"`` (Renyi DP, the moments accountant the ECOS paper reports; dp-accounting
converts RDP to epsilon with the improved bound of Balle et al. 2020, Proposition 12). One Gaussian
release at sigma 8, delta 1e-5 costs 0.434 (PLD) and 0.478 (RDP); the paper's 0.58 is reached by
dp-accounting's RDP at sigma 6.69 (:func:`noise_multiplier_for_epsilon` with ``accountant="rdp"``).
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from collections.abc import Iterable

import dp_accounting
from dp_accounting.pld import PLDAccountant, privacy_loss_distribution
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

from .skellam import skellam_pld, skellam_rdp
from .validation import non_negative_float, probability


def coverage_sensitivity(q: int) -> float:
    """L2 sensitivity of the CC score vector: one sample changes at most ``q`` counts by 1."""
    return math.sqrt(q)


#: The accountants epsilon can be computed with (see the module docstring).
ACCOUNTANTS = {"pld": PLDAccountant, "rdp": RdpAccountant}


def gaussian_epsilon(noise_multiplier: float, delta: float, releases: int = 1, accountant: str = "pld") -> float:
    """Epsilon at ``delta`` of ``releases`` composed Gaussian releases (``accountant``: pld | rdp).

    Returns ``inf`` when ``noise_multiplier == 0`` (no noise: no privacy).
    """
    return composed_epsilon([(noise_multiplier, releases)], delta, accountant)


#: Noise multipliers the accountant takes: 0 (no noise, not private) or this range. Below 0.1 a single
#: release already costs epsilon > 90 and the PLD accountant's cost explodes.
MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER = 0.1, 1e6
#: Most releases one record may count (e.g. Private kNN answers): bounds the accountant's time and memory.
MAX_RELEASE_COUNT = 1 << 20


def check_noise_multiplier(value, name: str = "noise_multiplier") -> float:
    """``value`` as a float: 0 (not private) or in [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER]; else ``ValueError``."""
    sigma = non_negative_float(value, name)
    if sigma != 0.0 and not MIN_NOISE_MULTIPLIER <= sigma <= MAX_NOISE_MULTIPLIER:
        raise ValueError(f"{name} must be 0 (not private) or in [{MIN_NOISE_MULTIPLIER:g}, {MAX_NOISE_MULTIPLIER:g}], "
                         f"got {value!r:.40}")
    return sigma


def composed_epsilon(releases: Iterable[tuple[float, int]], delta: float, accountant: str = "pld") -> float:
    """Epsilon at ``delta`` of several Gaussian releases, each ``(noise_multiplier, count)``."""
    events = []
    for value, count in releases:
        sigma = check_noise_multiplier(value)
        if count > 0:
            events.append(None if sigma == 0.0 else
                          dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), int(count)))
    return events_epsilon(events, delta, accountant)


def events_epsilon(events: Iterable[dp_accounting.DpEvent | None], delta: float, accountant: str = "pld") -> float:
    """Epsilon at ``delta`` of composed dp-accounting events by ``accountant`` (pld | rdp); a ``None`` event
    is non-private (inf)."""
    delta = probability(delta, "delta")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {sorted(ACCOUNTANTS)}, got {accountant!r}")
    events = list(events)
    if any(event is None for event in events):
        return math.inf
    if not events:
        return 0.0
    book = ACCOUNTANTS[accountant]()
    absl, level = logging.getLogger("absl"), logging.getLogger("absl").level
    absl.setLevel(logging.ERROR)  # the RDP accountant logs each fractional order it cannot bound, then skips it
    try:
        book.compose(dp_accounting.ComposedDpEvent(events))
        return float(book.get_epsilon(delta))
    except (OverflowError, MemoryError, FloatingPointError) as exc:
        raise ValueError(f"the privacy accountant cannot compose these releases ({type(exc).__name__}): "
                         "use fewer releases or more noise") from None
    finally:
        absl.setLevel(level)


def noise_multiplier_for_epsilon(epsilon: float, delta: float, releases: int = 1, accountant: str = "pld") -> float:
    """Smallest noise multiplier (to 1e-3 relative) whose ``releases`` releases cost at most ``epsilon``
    by ``accountant`` (pld | rdp)."""
    return calibrated_noise(epsilon, delta, lambda sigma: [gaussian_release(sigma, releases)], accountant)


def calibrated_noise(epsilon: float, delta: float, releases_of, accountant: str = "pld") -> float:
    """Smallest noise multiplier (to 1e-3 relative, at least 0.1) whose releases ``releases_of(sigma)`` (a
    list of release records) cost at most ``epsilon`` at ``delta`` by ``accountant``."""
    if not epsilon > 0 or not math.isfinite(epsilon):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")

    def cost(sigma: float) -> float:
        return releases_epsilon(releases_of(max(sigma, MIN_NOISE_MULTIPLIER)), delta, accountant)

    low, high = 1e-2, 1.0
    while cost(high) > epsilon:
        low, high = high, high * 2
        if high > 1e6:
            raise ValueError(f"epsilon {epsilon} is too small to reach at delta {delta}")
    while (high - low) / high > 1e-3:
        mid = (low + high) / 2
        if cost(mid) > epsilon:
            low = mid
        else:
            high = mid
    return max(high, MIN_NOISE_MULTIPLIER)


def gaussian_release(noise_multiplier: float, count: int = 1, sampling_rate: float = 1.0,
                     what: str = "") -> dict:
    """A JSON-able record of ``count`` (optionally Poisson-subsampled) Gaussian releases.

    ``noise_multiplier == 0`` records a non-private release (epsilon = inf).
    """
    return {"mechanism": "gaussian", "noise_multiplier": float(noise_multiplier), "count": int(count),
            "sampling_rate": float(sampling_rate), "what": what}


def skellam_sum_release(noise_multiplier: float, q: int, shares: int, what: str = "") -> dict:
    """A JSON-able record of one sum of integer answers under secure aggregation, each honest client adding a
    Skellam share (:mod:`.skellam`) so that ``shares`` honest shares carry the noise of a Gaussian release at
    ``noise_multiplier`` (one sample adds 1 to ``q`` coordinates). ``noise_multiplier == 0``: no noise."""
    return {"mechanism": "skellam_sum", "noise_multiplier": float(noise_multiplier), "q": int(q),
            "shares": int(shares), "count": 1, "what": what}


_RELEASE_KEYS = {"gaussian": {"mechanism", "noise_multiplier", "count", "sampling_rate", "what"},
                 "skellam_sum": {"mechanism", "noise_multiplier", "q", "shares", "count", "what"},
                 "non_private": {"mechanism", "count", "what"}}
_OPTIONAL_RELEASE_KEYS = {"q", "k", "delta"}


def check_release(release) -> dict:
    """Return a release record (see :func:`gaussian_release`) unchanged, or raise ``ValueError`` naming the field.

    Strict: a known mechanism, its keys (plus optional ``q``, ``k``, ``delta``) and nothing else,
    ``count`` an integer in [1, MAX_RELEASE_COUNT], ``noise_multiplier`` as :func:`check_noise_multiplier` allows,
    ``sampling_rate`` in (0, 1].
    """
    if not isinstance(release, dict) or release.get("mechanism") not in _RELEASE_KEYS:
        raise ValueError(f"a release record must be an object with mechanism {' or '.join(map(repr, _RELEASE_KEYS))}")
    required = _RELEASE_KEYS[release["mechanism"]]
    if not required <= set(release) <= required | _OPTIONAL_RELEASE_KEYS:
        raise ValueError(f"a {release['mechanism']} release record needs keys {sorted(required)} "
                         f"(optional {sorted(_OPTIONAL_RELEASE_KEYS)}), got {sorted(release)}")
    if not _integer(release["count"], 1, MAX_RELEASE_COUNT):
        raise ValueError(f"release count must be an integer in [1, {MAX_RELEASE_COUNT}], got {release['count']!r:.40}")
    if not isinstance(release["what"], str):
        raise ValueError("release 'what' must be a string")
    for key in ("q", "k"):
        if key in release and not _integer(release[key], 1, MAX_RELEASE_COUNT):
            raise ValueError(f"release {key} must be an integer in [1, {MAX_RELEASE_COUNT}], got {release[key]!r:.40}")
    if "delta" in release:
        probability(release["delta"], "release delta")
    if release["mechanism"] == "skellam_sum":
        check_noise_multiplier(release["noise_multiplier"], "release noise_multiplier")
        if not _integer(release["shares"], 1, MAX_RELEASE_COUNT):
            raise ValueError(f"release shares must be an integer in [1, {MAX_RELEASE_COUNT}], got "
                             f"{release['shares']!r:.40}")
    if release["mechanism"] == "gaussian":
        check_noise_multiplier(release["noise_multiplier"], "release noise_multiplier")
        rate = release["sampling_rate"]
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 < rate <= 1.0:
            raise ValueError(f"release sampling_rate must be in (0, 1], got {rate!r:.40}")
    return release


def release_event(release: dict) -> dp_accounting.DpEvent | None:
    """The dp-accounting event of a Gaussian or non-private release record (None for a non-private one);
    ``ValueError`` if malformed or of another mechanism."""
    check_release(release)
    if release["mechanism"] == "skellam_sum":
        raise ValueError("a skellam_sum release has no dp-accounting event: compose it with releases_epsilon")
    sigma = 0.0 if release["mechanism"] == "non_private" else float(release["noise_multiplier"])
    if sigma == 0.0:
        return None
    return dp_accounting.SelfComposedDpEvent(_subsampled(sigma, float(release["sampling_rate"])), int(release["count"]))


def releases_epsilon(releases: Iterable[dict], delta: float, accountant: str = "pld") -> float:
    """Composed epsilon at ``delta`` of release records (see :func:`gaussian_release`) by ``accountant``.

    The records are checked every call; their accounting (the slow part) is computed once per distinct
    (mechanisms, delta, accountant) in a process: the budget check, the proxy and the ledger ask for the same."""
    key = tuple(_accounted(check_release(r)) for r in releases)
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {sorted(ACCOUNTANTS)}, got {accountant!r}")
    return _composed(key, probability(delta, "delta"), accountant)


def _accounted(release: dict) -> tuple:
    """What of a checked release record its epsilon depends on."""
    if release["mechanism"] == "non_private" or release["noise_multiplier"] == 0:
        return ("non_private",)
    if release["mechanism"] == "skellam_sum":
        return ("skellam_sum", float(release["noise_multiplier"]), release["q"], release["shares"], release["count"])
    return ("gaussian", float(release["noise_multiplier"]), int(release["count"]), float(release["sampling_rate"]))


@functools.lru_cache(maxsize=512)
def _composed(key: tuple, delta: float, accountant: str) -> float:
    if any(item[0] == "non_private" for item in key):
        return math.inf
    gaussian = [dp_accounting.SelfComposedDpEvent(_subsampled(item[1], item[3]), item[2])
                for item in key if item[0] == "gaussian"]
    skellam = [item[1:] for item in key if item[0] == "skellam_sum"]
    if not skellam:
        return events_epsilon(gaussian, delta, accountant)
    if accountant == "rdp":  # dp-accounting's RDP of the Gaussian events, plus the Skellam bound at its orders
        book = RdpAccountant()
        book.compose(dp_accounting.ComposedDpEvent(gaussian))
        rdp = book.rdp + sum(skellam_rdp(*item[:3], book.orders, count=item[3]) for item in skellam)
        return float(compute_epsilon(book.orders, rdp, delta)[0])
    losses = [skellam_pld(*item) for item in skellam]
    losses += [privacy_loss_distribution.from_gaussian_mechanism(
        item[1], sampling_prob=item[3]).self_compose(item[2]) for item in key if item[0] == "gaussian"]
    total = losses[0]
    for loss in losses[1:]:
        total = total.compose(loss)
    return float(total.get_epsilon_for_delta(delta))


def _subsampled(noise_multiplier: float, sampling_rate: float) -> dp_accounting.DpEvent:
    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, event) if sampling_rate < 1.0 else event


def _integer(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def epsilon_to_json(epsilon: float) -> float | None:
    """Epsilon as JSON allows it: ``inf`` (not private) becomes ``null``."""
    return None if math.isinf(epsilon) else float(epsilon)


def epsilon_from_json(value: float | None) -> float:
    """The inverse of :func:`epsilon_to_json`: ``null`` becomes ``inf``; any other value is returned as it is
    (readers of untrusted input validate it afterwards)."""
    return math.inf if value is None else value
