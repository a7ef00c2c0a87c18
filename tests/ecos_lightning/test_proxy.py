import math

import numpy as np
import pytest

from ecos_lightning.protocol import gaussian_epsilon
from ecos_lightning.samplers import select_proxy


def test_ecos_goes_through_messages_and_reports_its_cost(mixture):
    open_features, component, client = mixture
    result = select_proxy("ecos", open_features, 300, client_features=client, num_clusters=20,
                          noise_multiplier=8.0)
    assert len(np.unique(result.indices)) == 300 and (component[result.indices] == 2).mean() >= 0.9
    assert result.epsilon == pytest.approx(gaussian_epsilon(8.0, 1e-5))
    assert result.bytes_up > 4 * 20 and result.bytes_down > 20 * 32 * 4
    assert np.shape(result.cluster_scores) == (20,)


def test_baselines_release_nothing_but_upload_is_not_private(mixture):
    open_features, _, client = mixture
    assert select_proxy("random", open_features, 10).epsilon == 0.0
    upload = select_proxy("upload", open_features, 10, client_features=client)
    assert math.isinf(upload.epsilon) and upload.bytes_up == client.nbytes
    assert np.all(np.asarray(upload.clusters) == -1)


def test_unknown_sampler_and_missing_client_features():
    with pytest.raises(ValueError, match="sampler must be one of"):
        select_proxy("best", np.zeros((3, 2), np.float32), 1)
    with pytest.raises(ValueError, match="client_features is required"):
        select_proxy("ecos", np.zeros((3, 2), np.float32), 1)


def duplicate_pools() -> dict[str, np.ndarray]:
    """Pools full of exact duplicates: every row identical; 10 groups of 30 identical rows; one group of
    38 identical rows among 162 distinct ones."""
    rng = np.random.default_rng(0)
    return {"identical": np.ones((200, 8), np.float32),
            "groups": np.repeat(rng.normal(size=(10, 8)), 30, axis=0).astype(np.float32),
            "one group": np.concatenate([np.repeat(rng.normal(size=(1, 8)), 38, axis=0),
                                         rng.normal(size=(162, 8))]).astype(np.float32)}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("pool", ["identical", "groups", "one group"])
@pytest.mark.parametrize("sampler", ["ecos", "random", "kcenter", "full", "upload"])
def test_the_proxy_is_budget_unique_indices_on_duplicate_pools(sampler, pool):
    features = duplicate_pools()[pool]
    for budget in (1, 10, 100, len(features) - 1):
        indices = np.asarray(select_proxy(sampler, features, budget, client_features=features[:40], num_clusters=20,
                                          noise_multiplier=1.0).indices)
        expected = len(features) if sampler == "full" else budget
        assert len(indices) == len(np.unique(indices)) == expected and 0 <= indices.min()
        assert indices.max() < len(features)
