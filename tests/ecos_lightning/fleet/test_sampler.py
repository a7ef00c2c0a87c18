"""FleetEcos: one probe, many devices, one proxy from their summed answers; on Flower's SecAgg+ and in numpy."""

import os

import numpy as np
import pytest

from ecos_lightning.client.ledger import read_ledger
from ecos_lightning.components import Inputs, Run
from ecos_lightning.fleet import FleetEcos
from ecos_lightning.protocol.fleet import FleetPrivacy, RoundAborted
from ecos_lightning.protocol.privacy import releases_epsilon, skellam_sum_release
from ecos_lightning.samplers import get_sampler


def _fleet(devices=12, seed=0):
    """A pool of five well-separated groups of 200; every device holds 20 images of group 0."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 16)) * 5
    pool = np.concatenate([c + rng.normal(size=(200, 16)) for c in centres]).astype(np.float32)
    fleet = tuple((centres[0] + rng.normal(size=(20, 16))).astype(np.float32) for _ in range(devices))
    return Inputs(open_features=pool, fleet_features=fleet)


def test_the_fleet_proxy_comes_from_the_devices_domain_and_is_the_same_for_the_same_seeds():
    inputs = _fleet()
    sampler = FleetEcos(num_clusters=10, noise_multiplier=4.0, threshold=6)
    proxy = sampler.run(inputs, Run(budget=100, seed=1))
    assert (np.asarray(proxy.indices) < 200).mean() > 0.95 and len(set(proxy.indices)) == 100
    again = FleetEcos(num_clusters=10, noise_multiplier=4.0, threshold=6).run(inputs, Run(budget=100, seed=1))
    assert again.replace(open="x").to_dict() == proxy.replace(open="x").to_dict()
    other = sampler.run(inputs, Run(budget=100, seed=2))
    assert other.release_hash != proxy.release_hash  # other noise
    assert sampler.releases() == [skellam_sum_release(4.0, 1, 6, "fleet coverage")]


def test_local_noise_needs_far_more_noise_in_the_sum_at_the_same_per_device_epsilon():
    secure, local = FleetEcos(noise_multiplier=4.0, threshold=12), FleetEcos(noise_multiplier=4.0, secure=False)
    epsilons = [releases_epsilon(s.releases(), 1e-5) for s in (secure, local)]
    assert epsilons[0] <= epsilons[1] * 1.001
    assert local.privacy.sum_noise_std(12, 1) == pytest.approx(secure.privacy.sum_noise_std(12, 1) * 12 ** 0.5)
    proxy = local.run(_fleet(), Run(budget=100, seed=1))
    assert len(proxy) == 100


def test_each_device_records_exactly_its_release_in_its_own_ledger_before_answering(tmp_path):
    inputs = _fleet(devices=4)
    sampler = FleetEcos(num_clusters=10, noise_multiplier=4.0, threshold=3, ledger_dir=str(tmp_path))
    sampler.run(inputs, Run(budget=50, seed=0))
    ledgers = sorted(tmp_path.glob("device-*.json"))
    assert [p.name for p in ledgers] == [f"device-{i}.json" for i in range(4)]
    for path in ledgers:
        [entry] = read_ledger(path)["entries"]
        [release] = entry["releases"]
        assert {k: v for k, v in release.items() if k not in ("what", "delta")} == \
            {k: v for k, v in sampler.releases()[0].items() if k != "what"}


def test_a_fleet_smaller_than_the_threshold_is_not_asked(tmp_path):
    with pytest.raises(RoundAborted, match="fewer than the threshold 5: nothing is asked"):
        FleetEcos(num_clusters=10, threshold=5, ledger_dir=str(tmp_path)).run(_fleet(devices=4), Run(budget=10))
    assert not list(tmp_path.iterdir())


def test_fleet_ecos_is_a_registered_sampler_configured_like_the_others():
    sampler = get_sampler({"class_path": "fleet_ecos", "init_args": {"threshold": 8, "secure": False}})
    assert isinstance(sampler, FleetEcos) and sampler.privacy == FleetPrivacy(8.0, False, 8, 0)
    with pytest.raises(ValueError, match="engine='flower' runs secure aggregation"):
        FleetEcos(secure=False, engine="flower")


def test_flowers_secure_aggregation_gives_the_numpy_sum_and_drops_or_aborts_as_the_threshold_says():
    from ecos_lightning.fleet.flower import secure_sum

    inputs = _fleet(devices=5)
    on_numpy = FleetEcos(num_clusters=10, noise_multiplier=4.0, threshold=3).run(inputs, Run(budget=60, seed=3))
    on_flower = FleetEcos(num_clusters=10, noise_multiplier=4.0, threshold=3, engine="flower").run(
        inputs, Run(budget=60, seed=3))
    assert on_flower.replace(open="x").to_dict() == on_numpy.replace(open="x").to_dict()

    answers = [np.arange(6.0) * i for i in range(5)]
    environment = dict(os.environ)
    total, answered = secure_sum(_Dropping(answers, drop={0}), 5, 6, threshold=3)
    assert dict(os.environ) == environment  # Ray's variables do not stay in the caller's process
    assert answered == 4 and total.tolist() == sum(answers[1:]).tolist()
    with pytest.raises(RoundAborted, match="fewer than 4 of 5 devices answered; the round was aborted"):
        secure_sum(_Dropping(answers, drop={0, 1}), 5, 6, threshold=4)


class _Dropping:
    """Device answers, some of which fail (a dropped device)."""

    def __init__(self, answers, drop):
        self.answers, self.drop = answers, drop

    def __call__(self, index):
        if index in self.drop:
            raise ConnectionError(f"device {index} dropped")
        return self.answers[index]


def test_a_fleet_simulated_from_one_clients_images_is_that_fleet_given_device_by_device():
    base = _fleet(devices=1)
    client = np.concatenate([base.fleet_features[0], _fleet(devices=1, seed=1).fleet_features[0][:7]])
    dealt = FleetEcos(num_clusters=10, noise_multiplier=4.0, threshold=3, devices=4)
    run = Run(budget=50, seed=5)
    fleet = dealt.fleet(Inputs(client_features=client), run)
    assert [len(f) for f in fleet] == [7, 7, 7, 6]
    assert sorted(map(tuple, np.concatenate(fleet).tolist())) == sorted(map(tuple, client.tolist()))
    proxy = dealt.run(Inputs(open_features=base.open_features, client_features=client), run)
    given = FleetEcos(num_clusters=10, noise_multiplier=4.0, threshold=3).run(
        Inputs(open_features=base.open_features, fleet_features=fleet), run)
    assert proxy.indices == given.indices and proxy.release_hash == given.release_hash
    with pytest.raises(ValueError, match="devices=40 is more than the client's 27 images"):
        FleetEcos(devices=40).fleet(Inputs(client_features=client), run)


def test_two_fleet_rounds_charge_each_device_for_both_answers_and_cost_about_one_round(tmp_path):
    inputs = _fleet(devices=6)
    sampler = FleetEcos(num_clusters=10, noise_multiplier=4.0, threshold=4, rounds=2, sub_clusters=3,
                        ledger_dir=str(tmp_path))
    proxy = sampler.run(inputs, Run(budget=100, seed=1))
    assert (np.asarray(proxy.indices) < 200).mean() > 0.95 and len(proxy.cluster_scores) > 10
    for path in sorted(tmp_path.glob("device-*.json")):
        entries = read_ledger(path)["entries"]
        assert [entry["releases"][0]["noise_multiplier"] for entry in entries] == \
            pytest.approx([r["noise_multiplier"] for r in sampler.releases()])
    # the split follows the Gaussian rule; Skellam shares of small variance compose a little worse (the ledger
    # records exactly what they cost)
    one = FleetEcos(noise_multiplier=4.0, threshold=4)
    assert 1 <= releases_epsilon(sampler.releases(), 1e-5) / releases_epsilon(one.releases(), 1e-5) < 1.1
    again = FleetEcos(num_clusters=10, noise_multiplier=4.0, threshold=4, rounds=2, sub_clusters=3)
    assert again.run(inputs, Run(budget=100, seed=1)).indices == proxy.indices


def test_a_devices_own_proxy_comes_from_its_own_answer_among_the_same_answers(tmp_path):
    inputs = _fleet(devices=5)
    common = dict(num_clusters=10, noise_multiplier=1.0, secure=False, threshold=3)
    ledgers = tmp_path / "ledgers"
    own = FleetEcos(**common, proxy_for=2, ledger_dir=str(ledgers)).run(inputs, Run(budget=40, seed=0))
    assert len(list(ledgers.glob("device-*.json"))) == 5  # every device answered and paid
    others = _fleet(devices=5, seed=1).fleet_features  # other images on every other device
    mixed = (*others[:2], inputs.fleet_features[2], *others[3:])
    alone = FleetEcos(**common, proxy_for=2).run(Inputs(open_features=inputs.open_features, fleet_features=mixed),
                                                 Run(budget=40, seed=0))
    assert own.indices == alone.indices  # selected from device 2's answer only
    fleet = FleetEcos(**common).run(inputs, Run(budget=40, seed=0))
    assert own.release_hash != fleet.release_hash
    with pytest.raises(ValueError, match="the fleet holds devices 0 to 4"):
        FleetEcos(**common, proxy_for=9).run(inputs, Run(budget=40))
    with pytest.raises(ValueError, match="under secure aggregation the cloud sees only the sum"):
        FleetEcos(proxy_for=1)
