"""The ECOS sampler's rule switches and num_clusters="auto" through select_proxy and the sampler registry."""

import math

import numpy as np
import pytest

from ecos_lightning.protocol.num_clusters import auto_num_clusters
from ecos_lightning.samplers import ECOS_RULES, Ecos, Inputs, select_proxy


def _pool(mixture):
    open_features, component, client = mixture
    return open_features, component, client[:200]


def test_auto_num_clusters_follows_the_rule(mixture):
    open_features, component, client = _pool(mixture)
    proxy = select_proxy("ecos", open_features, 300, client_features=client, num_clusters="auto",
                         noise_multiplier=4.0, seed=0)
    assert len(proxy.cluster_scores) == auto_num_clusters(len(open_features), len(client), 4.0)
    assert (component[proxy.indices] == 2).mean() >= 0.9


def test_rules_override_the_samplers_defaults(mixture):
    open_features, _, client = _pool(mixture)

    def indices(**rules):
        return select_proxy("ecos", open_features, 300, client_features=client, num_clusters=40,
                            noise_multiplier=0.0, seed=0, **rules).indices

    default = indices()
    assert indices(**ECOS_RULES) == default
    assert indices(within_cluster="nearest") != default
    assert indices(within_cluster="random", candidate_factor=math.inf) != default
    with pytest.raises(ValueError, match="unknown ECOS rules"):
        indices(kcenter=False)


def test_an_ecos_sampler_with_its_own_rules(mixture):
    """A sampler object with other rules (as a config would name by import path) selects as select_proxy does."""
    open_features, _, client = _pool(mixture)
    settings = dict(num_clusters=40, q=1, noise_multiplier=0.0, delta=1e-5, budget=300, seed=0)
    nearest = Ecos("ecos_nearest", within_cluster="nearest")
    proxy = nearest.run(Inputs(open_features=open_features, client_features=client, client_size=len(client)),
                        settings)
    same = select_proxy("ecos", open_features, 300, client_features=client, num_clusters=40, noise_multiplier=0.0,
                        seed=0, within_cluster="nearest")
    np.testing.assert_array_equal(proxy.indices, same.indices)
    with pytest.raises(ValueError, match="unknown ECOS rules"):
        Ecos("bad", threshold=2)
