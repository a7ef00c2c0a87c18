"""ProxyDataModule(num_clusters="auto"): K from the pool, the client and sigma; accepted by the config parser."""

import pytest
import torch
from jsonargparse import ArgumentParser
from torch.utils.data import TensorDataset

from ecos_lightning.datamodules import ProxyDataModule
from ecos_lightning.protocol.num_clusters import auto_num_clusters


def _images(n, colour, seed):
    images = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 0.3
    images[:, colour] += 0.7
    return images.clamp(0, 1)


def test_auto_num_clusters_through_the_data_module(tmp_path):
    open_ds = TensorDataset(torch.cat([_images(100, c, seed=c) for c in range(3)]), torch.arange(300) % 4)
    client_ds = TensorDataset(_images(40, 1, seed=10), torch.arange(40) % 4)
    dm = ProxyDataModule(open_dataset=open_ds, client_dataset=client_ds, encoder_input_size=32, num_clusters="auto",
                         budget=30, noise_multiplier=1.0, image_size=16, batch_size=8, cache_dir=str(tmp_path),
                         dataset_id="toy-auto")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.proxy.cluster_scores) == auto_num_clusters(300, 40, 1.0) == 300 // 39
    assert (dm.proxy_indices() // 100 == 1).mean() >= 0.9  # the client's (green) part of the pool


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("20", 20)])
def test_config_parser_accepts_auto_or_an_integer(value, expected):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ProxyDataModule, "data")
    assert parser.parse_args(["--data.num_clusters", value]).data.num_clusters == expected


def test_config_parser_refuses_another_word():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ProxyDataModule, "data")
    with pytest.raises(Exception, match="num_clusters"):
        parser.parse_args(["--data.num_clusters", "many"])
