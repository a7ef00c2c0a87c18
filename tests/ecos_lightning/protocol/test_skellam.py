"""The distributed Skellam mechanism: its noise, and its epsilon from dp-accounting's PLD of the exact PMFs."""

import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution

from ecos_lightning.protocol.privacy import (check_release, gaussian_epsilon, releases_epsilon, skellam_sum_release,
                                             gaussian_release)
from ecos_lightning.protocol.skellam import share_mu, skellam_pld, skellam_share


@pytest.mark.parametrize("shares", [1, 5, 30])
def test_honest_shares_sum_to_the_noise_of_the_gaussian_release(shares):
    rng = np.random.default_rng(0)
    noise = sum(skellam_share(np.zeros(20_000, np.int64), 4.0, 2, shares, rng) for _ in range(shares))
    assert noise.dtype == np.int64 and abs(noise.mean()) < 0.2
    assert noise.var() == pytest.approx(4.0 ** 2 * 2, rel=0.03)
    assert share_mu(4.0, 2, shares) == pytest.approx(16.0 / shares)


@pytest.mark.parametrize(("sigma", "q"), [(8.0, 1), (4.0, 2), (2.0, 1)])
def test_epsilon_is_dp_accountings_pld_of_the_exact_pmfs_and_does_not_depend_on_how_the_noise_is_shared(sigma, q):
    release = skellam_sum_release(sigma, q, shares=7)
    epsilon = releases_epsilon([release], 1e-5)
    assert epsilon == pytest.approx(skellam_pld(sigma, q, 7).get_epsilon_for_delta(1e-5))
    assert releases_epsilon([skellam_sum_release(sigma, q, shares=1)], 1e-5) == pytest.approx(epsilon, rel=1e-6)
    # Skellam noise of a Gaussian's variance: no worse than the Gaussian (its loss grows slower in the tails)
    assert 0.5 * gaussian_epsilon(sigma, 1e-5) < epsilon <= gaussian_epsilon(sigma, 1e-5) * 1.001
    assert releases_epsilon([release], 1e-5, "rdp") >= epsilon  # the RDP bound is the looser cross-check


def test_it_composes_with_gaussian_releases_through_privacy_loss_distributions():
    knn = gaussian_release(4.0, count=100, sampling_rate=0.1)
    both = releases_epsilon([skellam_sum_release(8.0, 1, 3), knn], 1e-5)
    expected = skellam_pld(8.0, 1, 3).compose(
        privacy_loss_distribution.from_gaussian_mechanism(4.0, sampling_prob=0.1).self_compose(100))
    assert both == pytest.approx(expected.get_epsilon_for_delta(1e-5))
    assert both > max(releases_epsilon([knn], 1e-5), releases_epsilon([skellam_sum_release(8.0, 1, 3)], 1e-5))
    assert releases_epsilon([skellam_sum_release(0.0, 1, 3)], 1e-5) == float("inf")


@pytest.mark.parametrize(("change", "message"), [
    ({"shares": 0}, "shares must be an integer"), ({"shares": True}, "shares must be an integer"),
    ({"q": None}, "q must be an integer"), ({"noise_multiplier": -1.0}, "noise_multiplier"),
])
def test_a_malformed_skellam_record_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        check_release({**skellam_sum_release(8.0, 1, 3), **change})
