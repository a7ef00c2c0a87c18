"""The ECOS sampler's rule switches and num_clusters="auto" through select_proxy and the sampler registry."""

import math

import numpy as np
import pytest

from ecos_lightning.protocol.num_clusters import auto_num_clusters
from ecos_lightning.samplers import ECOS_RULES, Ecos, Inputs, Run, select_proxy


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
    nearest = Ecos(num_clusters=40, noise_multiplier=0.0, fp16=False, within_cluster="nearest")
    proxy = nearest.run(Inputs(open_features=open_features, client_features=client, client_size=len(client)),
                        Run(budget=300, seed=0))
    same = select_proxy("ecos", open_features, 300, client_features=client, num_clusters=40, noise_multiplier=0.0,
                        seed=0, within_cluster="nearest")
    np.testing.assert_array_equal(proxy.indices, same.indices)
    with pytest.raises(TypeError, match="threshold"):
        Ecos(threshold=2)


def test_neighbour_z_is_forwarded_to_the_cloud():
    """A client region A, B, C in a row (C thin: 5 client samples, its score between 1.5 and 3 noise std) and a
    far group D, E, F: ``neighbour_z`` given to select_proxy or to an Ecos sampler keeps C; the default drops it."""
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [4, 0], [8, 0], [40, 0], [40, 4], [44, 0]], dtype=np.float32)
    blob = np.repeat(np.arange(6), 200)  # [1200]: the blob of each pool point
    open_features = (centres[blob] + 0.3 * rng.normal(size=(len(blob), 2))).astype(np.float32)
    client_blob = np.repeat(np.arange(3), [200, 200, 5])
    client = (centres[client_blob] + 0.3 * rng.normal(size=(len(client_blob), 2))).astype(np.float32)
    common = dict(client_features=client, num_clusters=6, noise_multiplier=2.0, seed=1)  # threshold 6, bar 3

    default = select_proxy("ecos", open_features, 300, **common)
    scores = np.asarray(default.cluster_scores)
    assert ((scores > 3.0) & (scores <= 6.0)).sum() == 1  # C's cluster, in the band; the others far from it
    assert set(blob[np.asarray(default.indices)].tolist()) == {0, 1}
    second = select_proxy("ecos", open_features, 300, neighbour_z=1.5, **common)
    assert set(blob[np.asarray(second.indices)].tolist()) == {0, 1, 2}  # C kept, the far group still out

    proxy = Ecos(num_clusters=6, noise_multiplier=2.0, fp16=False, neighbour_z=1.5).run(
        Inputs(open_features=open_features, client_features=client, client_size=len(client)), Run(budget=300, seed=1))
    np.testing.assert_array_equal(proxy.indices, second.indices)
