import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from ecos_lightning.protocol import composed_epsilon, gaussian_epsilon, noise_multiplier_for_epsilon


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact epsilon of the Gaussian mechanism (Balle & Wang 2018, Theorem 8), sensitivity 1."""

    def delta_of(eps):
        return norm.cdf(-eps * sigma + 1 / (2 * sigma)) - math.exp(eps) * norm.cdf(-eps * sigma - 1 / (2 * sigma))

    return brentq(lambda e: delta_of(e) - delta, 0.0, 100.0)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 4.0, 8.0])
def test_epsilon_is_dp_accountings_pld_value(sigma):
    accountant = PLDAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(sigma))
    assert gaussian_epsilon(sigma, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 4.0, 8.0])
def test_epsilon_agrees_with_the_analytic_gaussian_mechanism(sigma):
    assert gaussian_epsilon(sigma, 1e-5) == pytest.approx(analytic_gaussian_epsilon(sigma, 1e-5), rel=0.02)


def test_known_values_and_monotonicity():
    assert gaussian_epsilon(4.0, 1e-5) == pytest.approx(0.926, abs=1e-3)
    assert gaussian_epsilon(8.0, 1e-5) == pytest.approx(0.434, abs=1e-3)
    values = [gaussian_epsilon(s, 1e-5) for s in (0.5, 1, 2, 4, 8, 16)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert gaussian_epsilon(0.0, 1e-5) == math.inf


def test_composition_costs_more_than_one_release_and_matches_pld():
    accountant = PLDAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(6.0), 3)
    accountant.compose(dp_accounting.GaussianDpEvent(10.0), 2)
    eps = composed_epsilon([(6.0, 3), (10.0, 2)], 1e-5)
    assert eps == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    assert eps > gaussian_epsilon(6.0, 1e-5)
    assert composed_epsilon([], 1e-5) == 0.0


def test_noise_multiplier_for_epsilon_inverts_the_accountant():
    sigma = noise_multiplier_for_epsilon(0.5, 1e-5)
    assert gaussian_epsilon(sigma, 1e-5) <= 0.5 < gaussian_epsilon(sigma * 0.99, 1e-5)


@pytest.mark.parametrize("args, match", [((1.0, 0.0), "delta"), ((-1.0, 1e-5), "noise_multiplier")])
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        gaussian_epsilon(*args)


def _dp_accounting_epsilon(accountant, events, delta=1e-5):
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return accountant.get_epsilon(delta)


def test_both_accountants_agree_with_dp_accounting_for_the_same_releases():
    from dp_accounting.rdp import RdpAccountant

    from ecos_lightning.protocol.privacy import gaussian_release, releases_epsilon

    releases = [gaussian_release(8.0, what="ecos"), gaussian_release(2.0, count=50, sampling_rate=0.3, what="knn")]
    events = [dp_accounting.GaussianDpEvent(8.0),
              dp_accounting.SelfComposedDpEvent(
                  dp_accounting.PoissonSampledDpEvent(0.3, dp_accounting.GaussianDpEvent(2.0)), 50)]
    assert releases_epsilon(releases, 1e-5) == pytest.approx(_dp_accounting_epsilon(PLDAccountant(), events), rel=1e-12)
    assert releases_epsilon(releases, 1e-5, "rdp") == pytest.approx(
        _dp_accounting_epsilon(RdpAccountant(), events), rel=1e-12)


def test_rdp_is_looser_than_pld_and_the_papers_epsilon_has_its_sigma():
    assert gaussian_epsilon(8.0, 1e-5, accountant="rdp") == pytest.approx(0.478, abs=1e-3)
    assert gaussian_epsilon(8.0, 1e-5, accountant="rdp") > gaussian_epsilon(8.0, 1e-5)
    sigma = noise_multiplier_for_epsilon(0.58, 1e-5, accountant="rdp")
    assert gaussian_epsilon(sigma, 1e-5, accountant="rdp") <= 0.58 < gaussian_epsilon(sigma * 0.99, 1e-5,
                                                                                      accountant="rdp")
    with pytest.raises(ValueError, match="accountant must be one of"):
        gaussian_epsilon(8.0, 1e-5, accountant="moments")
