import numpy as np
import pytest

from ecos_lightning.protocol import CentroidsMessage, ClientResponder, gaussian_epsilon


def _grid_centroids():
    return CentroidsMessage(np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32))


def test_coverage_counts_nearest_centroids():
    client = np.array([[1, 1], [0.5, 0], [9, 1], [11, 11]], dtype=np.float32)
    counts = ClientResponder(q=1).coverage(_grid_centroids(), client)
    np.testing.assert_array_equal(counts, [2, 1, 0, 1])
    counts_q2 = ClientResponder(q=2).coverage(_grid_centroids(), client)
    assert counts_q2.sum() == 8 and counts_q2.max() <= 4


def test_radius_drops_far_samples():
    client = np.array([[1, 1], [5, 5], [100, 100]], dtype=np.float32)
    counts = ClientResponder(radius=3.0).coverage(_grid_centroids(), client)
    np.testing.assert_array_equal(counts, [1, 0, 0, 0])


def test_respond_without_noise_releases_exact_counts_at_infinite_epsilon():
    client = np.array([[1, 1], [9, 9]], dtype=np.float32)
    down = _grid_centroids()
    up = ClientResponder(noise_multiplier=0.0).respond(down, client)
    np.testing.assert_array_equal(up.scores, [1, 0, 0, 1])
    assert up.epsilon == float("inf") and up.scores.dtype == np.float32
    assert up.centroids_digest == down.digest()
    assert len(up.to_bytes()) < 4 * down.num_clusters + 1024


@pytest.mark.parametrize(("centroids", "q"), [([[1e20, 0], [0, 1e20]], 1), ([[0, 0], [1e20, 0], [0, 1e20]], 3)])
def test_centroids_whose_distances_overflow_are_refused_not_miscounted(centroids, q):
    """Centroids finite in float32 but too large for their squared distances make faiss answer index -1 where
    fewer than q are finite; the client refuses rather than count a sample in another centroid's score."""
    hostile = CentroidsMessage(np.array(centroids, dtype=np.float32))
    with pytest.raises(ValueError, match="overflow"):
        ClientResponder(q=q).coverage(hostile, np.ones((4, 2), np.float32))


@pytest.mark.parametrize("q", [1, 2, 4])
def test_noise_std_scales_with_sqrt_q_and_epsilon_does_not(q):
    rng = np.random.default_rng(0)
    centroids = CentroidsMessage(rng.normal(size=(2000, 4)).astype(np.float32))
    client = rng.normal(size=(50, 4)).astype(np.float32)
    responder = ClientResponder(noise_multiplier=3.0, q=q, seed=1)
    noise = responder.respond(centroids, client).scores - responder.coverage(centroids, client)
    assert abs(noise.std() - 3.0 * np.sqrt(q)) < 0.1 * 3.0 * np.sqrt(q)
    assert responder.respond(centroids, client).epsilon == pytest.approx(gaussian_epsilon(3.0, 1e-5))


def test_noise_is_seeded_for_simulations_and_fresh_otherwise():
    down, client = _grid_centroids(), np.zeros((3, 2), np.float32)
    a = ClientResponder(noise_multiplier=1.0, seed=5).respond(down, client).scores
    b = ClientResponder(noise_multiplier=1.0, seed=5).respond(down, client).scores
    c = ClientResponder(noise_multiplier=1.0).respond(down, client).scores
    d = ClientResponder(noise_multiplier=1.0).respond(down, client).scores
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(c, d)


def test_pca_message_projects_client_features():
    projection = np.eye(3, 2, dtype=np.float32)
    down = CentroidsMessage(np.array([[0, 0], [5, 5]], np.float32), projection, np.zeros(2, np.float32))
    client = np.array([[5, 5, 100.0], [0, 0, -100.0]], np.float32)
    np.testing.assert_array_equal(ClientResponder().coverage(down, client), [1, 1])


@pytest.mark.parametrize("features, match", [
    (np.zeros((0, 2), np.float32), "client_features is empty"),
    (np.zeros((3, 5), np.float32), "dimension 5 does not match"),
    (np.full((3, 2), np.inf, np.float32), "NaN or Inf"),
    (np.zeros((2, 2, 2), np.float32), "2-D"),
])
def test_respond_rejects_bad_client_features(features, match):
    with pytest.raises(ValueError, match=match):
        ClientResponder().respond(_grid_centroids(), features)


@pytest.mark.parametrize("kwargs, match", [
    ({"noise_multiplier": -1.0}, "noise_multiplier"),
    ({"q": 0}, "q must be"),
    ({"delta": 0.0}, "delta"),
    ({"delta": 1.5}, "delta"),
    ({"radius": -2.0}, "radius"),
])
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClientResponder(**kwargs)
