import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant

from ecos_lightning.protocol.knn_labels import PrivateKnnLabeler
from ecos_lightning.protocol.privacy import releases_epsilon


def _clusters(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8)) * 5
    client = np.concatenate([c + rng.normal(size=(100, 8)) for c in centres]).astype(np.float32)
    labels = np.repeat(np.arange(3), 100)
    queries = np.concatenate([c + rng.normal(size=(30, 8)) for c in centres]).astype(np.float32)
    return queries, np.repeat(np.arange(3), 30), client, labels


def test_noiseless_votes_recover_the_labels():
    queries, truth, client, labels = _clusters()
    got = PrivateKnnLabeler(k=10, noise_multiplier=0.0, sampling_rate=1.0).label(queries, client, labels, 3)
    assert (got == truth).mean() == 1.0


def test_subsampled_noisy_votes_are_mostly_right_and_seeded():
    queries, truth, client, labels = _clusters()
    labeler = PrivateKnnLabeler(k=20, noise_multiplier=1.0, sampling_rate=0.5, seed=3)
    got = labeler.label(queries, client, labels, 3)
    assert (got == truth).mean() >= 0.9
    np.testing.assert_array_equal(got, PrivateKnnLabeler(k=20, noise_multiplier=1.0, sampling_rate=0.5,
                                                         seed=3).label(queries, client, labels, 3))


def test_heavy_noise_destroys_the_labels():
    queries, truth, client, labels = _clusters()
    got = PrivateKnnLabeler(k=5, noise_multiplier=100.0, sampling_rate=1.0, seed=0).label(queries, client, labels, 3)
    assert (got == truth).mean() < 0.6


def test_release_is_a_composed_poisson_subsampled_gaussian():
    release = PrivateKnnLabeler(k=10, noise_multiplier=2.0, sampling_rate=0.3).release(500)
    accountant = PLDAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.3, dp_accounting.GaussianDpEvent(2.0)), 500))
    assert releases_epsilon([release], 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert releases_epsilon([PrivateKnnLabeler(noise_multiplier=0.0).release(5)], 1e-5) == float("inf")


@pytest.mark.parametrize("kwargs, match", [({"k": 0}, "k must be"), ({"sampling_rate": 0.0}, "sampling_rate"),
                                           ({"noise_multiplier": -1.0}, "noise_multiplier")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrivateKnnLabeler(**kwargs)


def test_labels_out_of_range_and_dimension_mismatch():
    queries, _, client, labels = _clusters()
    with pytest.raises(ValueError, match="client_labels must lie"):
        PrivateKnnLabeler().label(queries, client, labels + 5, 3)
    with pytest.raises(ValueError, match="dimension"):
        PrivateKnnLabeler().label(queries[:, :4], client, labels, 3)
