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
