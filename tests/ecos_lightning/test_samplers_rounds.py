"""Rounds of the ECOS samplers: later rounds split what the last answer kept; the rounds together cost what
one answer at the sampler's noise_multiplier does."""

import numpy as np
import pytest

from ecos_lightning.components import Inputs, Run
from ecos_lightning.protocol.privacy import releases_epsilon
from ecos_lightning.samplers import Ecos, get_sampler


@pytest.mark.parametrize("rounds, share", [(2, 0.5), (2, 0.3), (2, 0.8)])
def test_the_rounds_cost_the_epsilon_of_one_answer_at_the_samplers_sigma(rounds, share):
    one, several = Ecos(noise_multiplier=6.0), Ecos(noise_multiplier=6.0, rounds=rounds, first_round_share=share)
    sigmas = several.round_noise()
    assert len(sigmas) == len(several.releases()) == rounds and sigmas[0] == pytest.approx(6.0 / share ** 0.5)
    assert sum(s ** -2 for s in sigmas) == pytest.approx(6.0 ** -2)
    assert releases_epsilon(several.releases(), 1e-5) == pytest.approx(releases_epsilon(one.releases(), 1e-5), rel=2e-3)


def test_two_rounds_give_a_proxy_of_the_clients_component_deterministically(mixture):
    pool, component, client = mixture
    inputs = Inputs(open_features=pool, client_features=client)
    one = Ecos(num_clusters=20, noise_multiplier=2.0).run(inputs, Run(budget=300, seed=0))
    sampler = get_sampler({"class_path": "ecos", "init_args": {"num_clusters": 20, "noise_multiplier": 2.0,
                                                                "rounds": 2, "sub_clusters": 3}})
    two = sampler.run(inputs, Run(budget=300, seed=0))
    assert len(set(two.indices)) == 300 and (component[two.indices] == 2).mean() > 0.9
    assert two.bytes_down > one.bytes_down and two.bytes_up > one.bytes_up and two.release_hash != one.release_hash
    assert len(two.cluster_scores) > 20  # selected over the refined clusters
    again = sampler.run(inputs, Run(budget=300, seed=0))
    assert again.indices == two.indices and again.release_hash == two.release_hash


@pytest.mark.parametrize("settings, message", [
    ({"rounds": 0}, "rounds"), ({"rounds": 3}, "rounds must be 1 or 2"),
    ({"rounds": 2, "first_round_share": 1.0}, "first_round_share"),
    ({"first_round_share": 0.0}, "first_round_share"), ({"sub_clusters": 1}, "sub_clusters"),
    ({"rounds": True}, "rounds")])
def test_bad_round_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        Ecos(**settings)
