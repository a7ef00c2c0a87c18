"""num_clusters="auto": bounds, monotonicity, the 100-client-image case, and the rule on a mixture."""

import math
import warnings

import pytest

from ecos_lightning.protocol import ClientResponder, CloudSampler
from ecos_lightning.protocol.num_clusters import (CLIENT_SHARE, DETECTION_Z, FAISS_MIN_POINTS_PER_CENTROID, K_MAX,
                                                  K_MIN, auto_num_clusters, expected_count_ratio,
                                                  resolve_num_clusters)


@pytest.mark.parametrize("pool", [1, 10, 100, 700, 10_000, 10**7])
@pytest.mark.parametrize("client", [1, 100, 600, 10**6])
@pytest.mark.parametrize("sigma", [0.0, 1.0, 8.0, 100.0])
def test_bounds(pool, client, sigma):
    k = auto_num_clusters(pool, client, sigma)
    assert 1 <= k <= K_MAX
    assert k <= max(1, pool // FAISS_MIN_POINTS_PER_CENTROID)  # faiss's 39 points per centroid
    if pool >= FAISS_MIN_POINTS_PER_CENTROID * K_MIN:
        assert k >= K_MIN


def test_monotonic_in_client_size_sigma_and_q():
    clients = [10, 50, 100, 300, 600, 2000, 10_000]
    sigmas = [0.0, 0.5, 2.0, 4.0, 8.0, 16.0, 64.0]
    for sigma in sigmas:
        ks = [auto_num_clusters(100_000, m, sigma) for m in clients]
        assert ks == sorted(ks), (sigma, ks)  # more client images: more clusters stay distinguishable
    for m in clients:
        ks = [auto_num_clusters(100_000, m, s) for s in sigmas]
        assert ks == sorted(ks, reverse=True), (m, ks)  # more noise: fewer, larger clusters
        ks = [auto_num_clusters(100_000, m, 4.0, q) for q in (1, 2, 4)]
        assert ks == sorted(ks), (m, ks)  # q counts per sample grow faster than the noise (sqrt q)
    assert auto_num_clusters(100_000, 600, 8.0) < auto_num_clusters(100_000, 6000, 8.0)  # strictly, off the bounds


def test_hundred_client_images_at_sigma_8_clear_the_threshold():
    """The README's failing case: 100 client images, sigma 8 (threshold 3 x 8 = 24): K=100 expects 10 counts
    per covered cluster, under the threshold; auto picks a K whose covered clusters expect more than it."""
    assert expected_count_ratio(100, 100, 8.0) < 1
    k = auto_num_clusters(10_000, 100, 8.0)
    assert K_MIN <= k < 100
    assert 100 / (CLIENT_SHARE * k) > DETECTION_Z * 8.0
    assert expected_count_ratio(k, 100, 8.0) > 1


def test_noise_free_and_large_clients_hit_the_pool_and_the_cap():
    assert auto_num_clusters(10_000, 10_000, 0.0) == 10_000 // FAISS_MIN_POINTS_PER_CENTROID
    assert auto_num_clusters(10**8, 10**8, 0.0) == K_MAX
    assert auto_num_clusters(10**8, 40, 0.0) == 100  # 40 samples / (0.1 x 4 per covered cluster)
    assert expected_count_ratio(50, 100, 0.0) == math.inf


def test_resolve_and_bad_values():
    assert resolve_num_clusters(37, 10, 10, 8.0) == 37  # an integer is used as given
    assert resolve_num_clusters("auto", 100_000, 600, 8.0) == auto_num_clusters(100_000, 600, 8.0)
    with pytest.raises(ValueError, match="'auto'"):
        resolve_num_clusters("many", 100, 10, 8.0)
    with pytest.raises(ValueError, match="num_clusters"):
        resolve_num_clusters(0, 100, 10, 8.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        auto_num_clusters(100, 10, -1.0)
    with pytest.raises(ValueError, match="client_size"):
        auto_num_clusters(100, 0, 1.0)


def test_auto_keeps_the_client_clusters_where_k100_keeps_none(mixture):
    """100 client points at sigma 8 on a 5-component pool: K=100 spreads them under the noise (the warning
    names the remedy) and the proxy is near random; the auto K keeps the client's clusters."""
    open_features, component, client = mixture
    client = client[:100]
    shares = {}
    for k in (100, auto_num_clusters(len(open_features), 100, 8.0)):
        cloud = CloudSampler(num_clusters=k, seed=0)
        up = ClientResponder(noise_multiplier=8.0, seed=1).respond(cloud.fit(open_features), client)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            selection = cloud.select(up, budget=500)
        messages = [str(w.message) for w in caught]
        shares[k] = ((component[selection.indices] == 2).mean(), messages)
    (low, low_warnings), (high, high_warnings) = shares[100], list(shares.values())[1]
    assert any("noise threshold" in m and "num_clusters='auto'" in m for m in low_warnings)
    assert high >= 0.9 > low and not high_warnings


def test_a_warning_for_an_automatic_k_does_not_suggest_auto(mixture):
    """With K from num_clusters='auto', the remedy named is fewer clusters than that K, not 'auto' again."""
    open_features, _, client = mixture
    cloud = CloudSampler(num_clusters=100, seed=0, auto_k=True)
    up = ClientResponder(noise_multiplier=8.0, seed=1).respond(cloud.fit(open_features), client[:100])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cloud.select(up, budget=500)
    messages = [str(w.message) for w in caught]
    assert messages and all("num_clusters='auto'" not in m for m in messages)
    assert any("a num_clusters below the automatic K=100" in m for m in messages)
