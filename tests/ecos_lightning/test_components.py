"""The contract of every registered sampler and label source: it owns its parameters, reports them in its
config (which rebuilds it and keys its proxy), declares releases the accountant counts, and is named the
same way by a registered name, an import path, ``{class_path, init_args}`` or the object itself."""

import warnings

import numpy as np
import pytest
from torch.utils.data import TensorDataset
import torch

from ecos_lightning.components import Run, build_proxy, planned_releases
from ecos_lightning.datamodules import Datasets, Loaders, ProxyDataModule
from ecos_lightning.encoders import Encoder
from ecos_lightning.files import stable_hash
from ecos_lightning.label_sources import LABEL_SOURCES, ClientKnn, get_label_source
from ecos_lightning.protocol.encoder_spec import EncoderSpec
from ecos_lightning.protocol.privacy import releases_epsilon
from ecos_lightning.samplers import SAMPLERS, Ecos, Inputs, get_sampler

import ecos_lightning.fleet  # noqa: F401  registers fleet_ecos, so the contract runs over it
import train_helpers

REGISTERED = [(get_sampler, name) for name in SAMPLERS] + [(get_label_source, name) for name in LABEL_SOURCES]


@pytest.mark.parametrize(("get", "name"), REGISTERED, ids=[name for _, name in REGISTERED])
def test_every_registered_component_rebuilds_from_its_config_and_declares_countable_releases(get, name):
    component = get(name)
    config = component.config()
    assert config["class_path"].endswith(type(component).__qualname__)
    again = get(config)
    assert type(again) is type(component) and again.config() == config
    assert get(config["class_path"]).config() == config  # the import path of the class: its defaults
    releases = component.releases() if hasattr(component, "source") else component.releases(50)
    assert releases_epsilon(releases, 1e-5) >= 0.0
    for param, value in config["init_args"].items():  # each parameter keys the proxy
        changed = _another(value)
        if changed is not None:
            assert stable_hash(get({**config, "init_args": {**config["init_args"], param: changed}}).config()) \
                != stable_hash(config), param


def _another(value):
    """A valid value other than ``value`` for the parameters the shipped components take, or None."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, float):
        return value / 2 if value else None
    if isinstance(value, int):
        return value + 1
    if value == "auto":
        return 12
    if isinstance(value, list):
        return value[:1]
    return None


def test_one_implementation_builds_the_proxy_for_a_run():
    """build_proxy on arrays gives the proxy the data module's simulation gives, with the planned releases."""
    rng = np.random.default_rng(0)
    inputs = Inputs(open_features=rng.normal(size=(200, 8)).astype(np.float32),
                    open_labels=np.arange(200) % 4, client_features=rng.normal(size=(60, 8)).astype(np.float32),
                    client_labels=np.arange(60) % 4, client_size=60, num_classes=4,
                    encoder=EncoderSpec(input_size=32).to_dict())
    sampler, labels, run = Ecos(num_clusters=4, noise_multiplier=2.0), ClientKnn(k=3), Run(budget=40, seed=1)
    releases = planned_releases(sampler, labels, run, 200, 60)
    proxy = build_proxy(inputs, sampler, labels, run, releases)
    assert len(proxy) == 40 and proxy.releases == releases and len(releases) == 2
    assert proxy.epsilon == pytest.approx(releases_epsilon(releases, 1e-5)) and proxy.release_hash
    again = build_proxy(inputs, sampler, labels, run, releases)
    assert again.replace(open="x").to_dict() == proxy.replace(open="x").to_dict()  # seeded


def test_fp16_centroids_halve_the_bytes_down():
    rng = np.random.default_rng(0)
    inputs = Inputs(open_features=rng.normal(size=(300, 64)).astype(np.float32),
                    client_features=rng.normal(size=(50, 64)).astype(np.float32), client_size=50)
    sizes = {fp16: Ecos(num_clusters=10, fp16=fp16).run(inputs, Run(budget=30)).bytes_down for fp16 in (True, False)}
    assert sizes[True] < 0.55 * sizes[False]


def _module(tmp_path, **kwargs):
    data = TensorDataset(torch.rand(40, 3, 8, 8), torch.arange(40) % 4)
    args = dict(dataset=Datasets(data, data, data, id="toy"), budget=12, loaders=Loaders(image_size=8),
                cache_dir=str(tmp_path / "cache"))
    return ProxyDataModule(**{**args, **kwargs})


def test_a_components_own_parameters_key_the_proxy(tmp_path):
    """Two objects of one class with other parameters never share a proxy, whether given as objects, by
    import path with init_args, or by name."""
    hashes = {stable_hash(_module(tmp_path, sampler=train_helpers.ToySampler(sigma)).config()) for sigma in (3.0, 4.0)}
    assert len(hashes) == 2
    by_path = _module(tmp_path, sampler={"class_path": "train_helpers.ToySampler", "init_args": {"noise_multiplier": 3.0}})
    assert by_path.proxy_hash() == _module(tmp_path, sampler=train_helpers.ToySampler(3.0)).proxy_hash()
    assert _module(tmp_path, sampler=Ecos(within_cluster="nearest")).proxy_hash() != _module(tmp_path).proxy_hash()
    assert _module(tmp_path, label_source=ClientKnn(k=5)).proxy_hash() != \
        _module(tmp_path, label_source="client_knn").proxy_hash()


def test_the_former_flat_keys_configure_the_components_with_a_deprecation_warning(tmp_path):
    with pytest.warns(DeprecationWarning, match="noise_multiplier is deprecated: set noise_multiplier on the sampler"):
        old = _module(tmp_path, noise_multiplier=4.0, num_clusters=5)
    assert old.proxy_hash() == _module(tmp_path, sampler=Ecos(num_clusters=5, noise_multiplier=4.0)).proxy_hash()
    with pytest.warns(DeprecationWarning, match="knn_k is deprecated"):
        knn = _module(tmp_path, label_source="client_knn", knn_k=7, knn_sampling_rate=0.5)
    assert (knn.label_source.k, knn.label_source.sampling_rate) == (7, 0.5)
    with pytest.warns(DeprecationWarning, match="knn_k is deprecated: it does not apply to the label_source 'manual'"):
        manual = _module(tmp_path, knn_k=7)  # a key of another component's class is left out, as before
    assert manual.proxy_hash() == _module(tmp_path).proxy_hash()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _module(tmp_path, sampler=Ecos(noise_multiplier=4.0))  # the new form warns of nothing


@pytest.mark.parametrize(("spec", "message"), [
    ("nope", "sampler must be one of"),
    ("train_helpers.NOPE", "cannot be imported"),
    ("train_helpers.CountingModel", "neither a Sampler class nor a Sampler object"),
    ({"class_path": "ecos", "init_args": {"threshold": 2}}, r"Ecos: .*threshold.*its parameters are \['num_clusters'"),
    (3, "sampler must be one of"),
    ({"class_path": "ecos", "init_args": [1]}, "init_args must be a mapping"),
    ({"class_path": "ecos", "init_args": {}, "extra": 1}, r"holds a class_path .* got the keys \['class_path', 'extra'"),
])
def test_a_sampler_that_cannot_be_built_is_one_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        get_sampler(spec)


def test_a_label_source_that_asks_the_client_runs_in_the_data_module_with_its_releases_in_the_ledger(tmp_path):
    import pytorch_lightning as pl

    from ecos_lightning.callbacks import PrivacyLedger, read_ledger

    dm = _module(tmp_path, sampler="random", label_source=train_helpers.ToyVotes(noise_multiplier=1.0),
                 encoder=Encoder(input_size=32), loaders=Loaders(batch_size=4, image_size=8))
    ledger = tmp_path / "ledger.json"
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               default_root_dir=tmp_path, callbacks=[PrivacyLedger(str(ledger))]).fit(
        train_helpers.CountingModel(size=8), datamodule=dm)
    declared = train_helpers.ToyVotes(1.0).releases(12)
    assert dm.proxy.releases == declared and dm.epsilon == pytest.approx(releases_epsilon(declared, 1e-5))
    assert len(dm.proxy.labels) == 12 and dm.proxy.bytes_down > 12 * 4 and dm.proxy.release_hash
    entry, = read_ledger(ledger)["entries"]
    assert entry["hash"] == dm.proxy.release_hash and entry["releases"] == declared


def test_a_coverage_sampler_from_a_test_file_runs_in_the_data_module_with_its_releases_in_the_ledger(tmp_path):
    """One class and no registry line: named by import path, its releases counted, the same proxy as its own run."""
    import pytorch_lightning as pl

    from ecos_lightning.callbacks import PrivacyLedger, read_ledger

    dm = _module(tmp_path, sampler="train_helpers.TopClusters", label_source=train_helpers.ToyVotes(1.0),
                 encoder=Encoder(input_size=32), loaders=Loaders(batch_size=4, image_size=8))
    ledger = tmp_path / "ledger.json"
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               default_root_dir=tmp_path, callbacks=[PrivacyLedger(str(ledger))]).fit(
        train_helpers.CountingModel(size=8), datamodule=dm)
    declared = [*train_helpers.TopClusters().releases(), *train_helpers.ToyVotes(1.0).releases(12)]
    assert dm.proxy.releases == declared and dm.epsilon == pytest.approx(releases_epsilon(declared, 1e-5))
    entry, = read_ledger(ledger)["entries"]
    assert entry["hash"] == dm.proxy.release_hash and entry["releases"] == declared
    alone = train_helpers.TopClusters().run(dm._inputs(), Run(budget=12))
    assert dm.proxy.indices == alone.indices and dm.proxy.bytes_down > alone.bytes_down  # + the label queries
