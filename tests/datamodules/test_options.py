"""The data module's grouped arguments (Datasets, Encoder, Loaders) and the former flat arguments they replace."""

import inspect
import warnings

import pytest
import torch
from jsonargparse import ArgumentParser
from torch.utils.data import TensorDataset

from ecos_lightning.datamodules import Datasets, Loaders, ProxyDataModule
from ecos_lightning.encoders import Encoder
from ecos_lightning.samplers import Ecos

DATA = TensorDataset(torch.rand(40, 3, 8, 8), torch.arange(40) % 4)


def test_the_data_module_has_at_most_15_arguments_of_its_own():
    named = [p for p in inspect.signature(ProxyDataModule.__init__).parameters.values()
             if p.name != "self" and p.kind is not p.VAR_KEYWORD]
    assert len(named) <= 15


def test_the_former_flat_arguments_give_the_same_module_with_a_warning_each(tmp_path):
    new = ProxyDataModule(dataset=Datasets(DATA, DATA, DATA, id="toy"), budget=12, cache_dir=str(tmp_path),
                          encoder=Encoder(input_size=32, pooling="avg"), sampler=Ecos(num_clusters=5),
                          loaders=Loaders(batch_size=8, image_size=8, val_fraction=0.2))
    with pytest.warns(DeprecationWarning) as caught:
        old = ProxyDataModule(open_dataset=DATA, client_dataset=DATA, client_test_dataset=DATA, dataset_id="toy",
                              budget=12, cache_dir=str(tmp_path), encoder_input_size=32, encoder_pooling="avg",
                              num_clusters=5, batch_size=8, image_size=8, val_fraction=0.2)
    warned = sorted(str(w.message).split(" ")[0] for w in caught)
    assert warned == sorted(["open_dataset", "client_dataset", "client_test_dataset", "dataset_id",
                             "encoder_input_size", "encoder_pooling", "num_clusters", "batch_size", "image_size",
                             "val_fraction"])
    assert old.proxy_hash() == new.proxy_hash() and old.hparams == new.hparams
    assert (old.loaders, old.encoder, old.datasets) == (new.loaders, new.encoder, new.datasets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ProxyDataModule(dataset=Datasets(DATA, DATA), encoder={"name": "resnet10t", "weights": "none"},
                        loaders={"batch_size": 4})


def test_a_saved_hyperparameter_set_builds_the_same_module(tmp_path):
    dm = ProxyDataModule(dataset="digits-lite:printed:1", encoder=Encoder(input_size=32), budget=20,
                         loaders=Loaders(batch_size=8), cache_dir=str(tmp_path))
    again = ProxyDataModule(**dm.hparams)
    assert again.hparams == dm.hparams and again.proxy_hash() == dm.proxy_hash()
    assert (again.encoder, again.loaders, again.source) == (dm.encoder, dm.loaders, dm.source)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"batchsize": 8}, TypeError, "unexpected keyword argument 'batchsize'"),
    ({"loaders": {"batchsize": 8}}, ValueError, "loaders: unknown field 'batchsize'; Loaders takes augment, batch_size"),
    ({"loaders": 8}, ValueError, "loaders must be a Loaders or a mapping of its fields, got int"),
    ({"loaders": {"num_workers": -1}}, ValueError, "num_workers must be 'auto' or an integer >= 0"),
    ({"encoder": {"name": "resnet10t", "size": 3}}, ValueError, "encoder: unknown field 'size'"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
])
def test_bad_grouped_arguments_are_one_clear_error(kwargs, error, message, tmp_path):
    with pytest.raises(error, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ProxyDataModule(cache_dir=str(tmp_path), **kwargs)


def test_a_config_parser_reads_the_grouped_keys_and_the_former_ones():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ProxyDataModule, "data")
    new = parser.instantiate(parser.parse_args(["--data.encoder.input_size", "32", "--data.loaders.batch_size", "8",
                                                "--data.dataset", "digits-lite:street"])).data
    assert (new.encoder, new.loaders.batch_size, new.source.domain) == (Encoder(input_size=32), 8, "street")
    with pytest.warns(DeprecationWarning, match="batch_size is deprecated: set loaders.batch_size"):
        old = parser.instantiate(parser.parse_args(["--data.encoder_input_size", "32", "--data.batch_size", "8",
                                                    "--data.client_domain", "street"])).data
    assert old.hparams["encoder"] == new.hparams["encoder"] and old.proxy_hash() == new.proxy_hash()
    with pytest.raises(Exception, match="data.batch_size"):
        parser.parse_args(["--data.batch_size", "many"])
