"""ProxyDataModule with a fleet: a list of client datasets (one per device) or a digits-lite-fleet source."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from ecos_lightning.datamodules import Datasets, ProxyDataModule
from ecos_lightning.encoders import Encoder
from ecos_lightning.fleet import FleetEcos


def _fleet(devices=6, images=12):
    """An open pool of two kinds of images (dark, light) and devices holding dark ones."""
    g = torch.Generator().manual_seed(0)
    dark, light = torch.rand(60, 3, 16, 16, generator=g) * 0.3, 0.7 + torch.rand(60, 3, 16, 16, generator=g) * 0.3
    pool = TensorDataset(torch.cat([dark, light]), torch.arange(120) % 2)
    fleet = [TensorDataset(torch.rand(images, 3, 16, 16, generator=g) * 0.3, torch.arange(images) % 2)
             for _ in range(devices)]
    return pool, fleet


def _module(tmp_path, client, sampler, **kwargs):
    pool, _ = _fleet()
    return ProxyDataModule(dataset=Datasets(open=pool, client=client, client_test=client[0] if client else None),
                           encoder=Encoder(input_size=32), sampler=sampler, budget=30,
                           cache_dir=str(tmp_path / "cache"), **kwargs)


def test_a_list_of_client_datasets_is_a_fleet_answered_device_by_device(tmp_path):
    _, fleet = _fleet()
    sampler = FleetEcos(num_clusters=4, noise_multiplier=2.0, threshold=4, ledger_dir=str(tmp_path / "ledgers"))
    dm = _module(tmp_path, fleet, sampler)
    assert dm.devices() == (12,) * 6
    inputs = dm._inputs()
    assert [len(f) for f in inputs.fleet_features] == [12] * 6 and len(inputs.client_features) == 72
    assert np.array_equal(np.concatenate(inputs.fleet_features), np.concatenate(
        [dm_one.fleet_features[0] for dm_one in [_module(tmp_path, [d], FleetEcos(num_clusters=4, threshold=1))._inputs()
                                               for d in fleet]]))
    proxy = dm.proxy
    assert len(proxy) == 30 and (np.asarray(proxy.indices) < 60).mean() > 0.9  # the dark half of the pool
    assert len(list((tmp_path / "ledgers").glob("device-*.json"))) == 6
    # the same images cut into other devices are another proxy artifact
    regrouped = [TensorDataset(*[torch.cat([d.tensors[i] for d in fleet[:2]]) for i in (0, 1)]), *fleet[2:]]
    assert _module(tmp_path, regrouped, sampler).devices() == (24,) + (12,) * 4
    assert _module(tmp_path, regrouped, sampler).proxy_hash() != dm.proxy_hash()


def test_a_fleet_needs_a_fleet_and_its_devices_must_hold_images(tmp_path):
    _, fleet = _fleet()
    one = ProxyDataModule(dataset=Datasets(open=_fleet()[0], client=fleet[0]), encoder=Encoder(input_size=32),
                          sampler=FleetEcos(num_clusters=4, threshold=2), budget=30, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="the sampler reads a fleet of devices, and the dataset is one client"):
        one._inputs()
    with pytest.raises(ValueError, match=r"dataset.client\[1\] is empty"):
        _module(tmp_path, [fleet[0], TensorDataset(torch.zeros(0, 3, 16, 16), torch.zeros(0))], "ecos")
    with pytest.raises(ValueError, match="dataset.client is an empty list"):
        _module(tmp_path, [], "ecos")
    # any other sampler reads the fleet as one client: the union of the devices' images
    union = _module(tmp_path, fleet, {"class_path": "ecos", "init_args": {"num_clusters": 4}})
    assert len(union._inputs().client_features) == 72


def test_a_digits_lite_fleet_of_two_domains(tmp_path):
    dm = ProxyDataModule(dataset="digits-lite-fleet:handwritten=4,printed=2:10", encoder=Encoder(input_size=32),
                         cache_dir=str(tmp_path))
    open_ds, client, test, data_id = dm.sources()
    assert dm.devices() == (10,) * 6 and len(client) == 60 and len(test) == 17 + 9  # round(40 * 3 / 7), round(20 * 3 / 7)
    assert "fleet/handwritten=4,printed=2/10" in data_id and len(open_ds) == 9740 - 60 - len(test)
