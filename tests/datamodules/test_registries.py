"""Samplers and label sources declare their releases once: a toy sampler and a toy label source registered
from a test file are counted in epsilon by ProxyDataModule's budget check, its proxy and the PrivacyLedger."""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from ecos_lightning.datamodules import ProxyDataModule
from ecos_lightning import label_sources, samplers
from ecos_lightning.protocol.privacy import releases_epsilon

import train_helpers
from train_helpers import CountingModel


@pytest.fixture
def toys(monkeypatch):
    """Registers ToySampler as "toy" and ToyLabels as "toy_labels" for one test."""
    monkeypatch.setattr(samplers, "SAMPLERS", dict(samplers.SAMPLERS))
    monkeypatch.setattr(label_sources, "LABEL_SOURCES", dict(label_sources.LABEL_SOURCES))
    samplers.register_sampler(train_helpers.ToySampler)
    label_sources.register_label_source(train_helpers.ToyLabels)


def _module(tmp_path, **kwargs):
    images = torch.rand(40, 3, 8, 8)
    data = TensorDataset(images, torch.arange(40) % 4)
    args = dict(open_dataset=data, client_dataset=data, client_test_dataset=data,
                sampler=train_helpers.ToySampler(noise_multiplier=3.0), label_source="toy_labels", budget=12,
                image_size=8, batch_size=4,
                cache_dir=str(tmp_path / "cache"), dataset_id="toy")
    return ProxyDataModule(**{**args, **kwargs})


def test_declared_releases_are_counted_by_the_data_module_and_the_ledger(tmp_path, toys):
    from ecos_lightning.callbacks import PrivacyLedger, read_ledger

    dm = _module(tmp_path)
    declared = [*train_helpers.ToySampler(3.0).releases(), *train_helpers.ToyLabels().releases(12)]
    assert dm.planned_releases() == declared and [r["count"] for r in declared] == [2, 12]
    ledger = tmp_path / "ledger.json"
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               default_root_dir=tmp_path, callbacks=[PrivacyLedger(str(ledger))]).fit(CountingModel(size=8), datamodule=dm)
    epsilon = releases_epsilon(declared, 1e-5)
    assert dm.proxy.releases == declared and dm.epsilon == pytest.approx(epsilon)
    assert dm.proxy.labels == [0] * 12 and dm.proxy.indices == list(range(12))
    entry, = read_ledger(ledger)["entries"]
    assert entry["hash"] == dm.proxy.release_hash and entry["what"] == ["toy_scores", "toy_labels"]
    assert read_ledger(ledger)["epsilon"] == pytest.approx(epsilon)


def test_declared_releases_are_checked_against_max_epsilon_before_anything_runs(tmp_path, toys):
    dm = _module(tmp_path)
    epsilon = releases_epsilon(dm.planned_releases(), 1e-5)
    with pytest.raises(ValueError, match=f"would spend epsilon={epsilon:.3g}"):
        _module(tmp_path, max_epsilon=epsilon * 0.99).prepare_data()
    assert not (tmp_path / "cache").exists()


def test_a_sampler_or_label_source_by_import_path(tmp_path):
    dm = _module(tmp_path, sampler="train_helpers.TOY_SAMPLER", label_source="train_helpers.TOY_LABELS")
    assert dm.sampler is train_helpers.TOY_SAMPLER and dm.label_source is train_helpers.TOY_LABELS
    with pytest.raises(ValueError, match="sampler 'train_helpers.NOPE' cannot be imported"):
        _module(tmp_path, sampler="train_helpers.NOPE")


def test_a_name_is_registered_once(toys):
    with pytest.raises(ValueError, match="new name"):
        samplers.register_sampler(train_helpers.ToySampler)
    with pytest.raises(ValueError, match="new name"):
        label_sources.register_label_source(type("Open", (label_sources.LabelSource,), {"name": "open"}))


def test_open_is_a_deprecated_name_of_manual(tmp_path):
    with pytest.warns(DeprecationWarning, match="'open' is deprecated"):
        old = _module(tmp_path, sampler="random", label_source="open")
    new = _module(tmp_path, sampler="random", label_source="manual")
    assert type(old.label_source) is type(new.label_source) is label_sources.Manual
    assert old.hparams.label_source == new.hparams.label_source
    assert old.proxy_hash() == new.proxy_hash()


def test_local_needs_a_label_source_that_labels_client_data(tmp_path):
    with pytest.raises(ValueError, match=r"sampler='local' trains on the client's own labels: use label_source=\['manual'\]"):
        _module(tmp_path, sampler="local", label_source="client_knn")
