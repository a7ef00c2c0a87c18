"""The class_coverage label source through ProxyDataModule: its release is in the budget check, the proxy
record and the privacy ledger."""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from ecos_lightning.protocol import class_coverage
from ecos_lightning.datamodules import ProxyDataModule
from ecos_lightning.protocol.privacy import gaussian_release, releases_epsilon
from train_helpers import CountingModel


def _images(n, colour, seed, size=16):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 0.3
    images[:, colour] += 0.7
    return images.clamp(0, 1)


def _module(tmp_path, **kwargs):
    # open pool: 2 "domains" (dominant colour: 80 green, 40 red), 2 classes (a dark or a bright top half); the
    # client holds green images
    open_images = torch.cat([_images(80, 1, seed=1), _images(40, 0, seed=0)])
    open_labels = torch.arange(120) % 2
    open_images[open_labels == 1, :, :8] *= 0.2
    client_images, client_labels = _images(40, 1, seed=10), torch.arange(40) % 2
    client_images[client_labels == 1, :, :8] *= 0.2
    args = dict(open_dataset=TensorDataset(open_images, open_labels),
                client_dataset=TensorDataset(client_images, client_labels),
                client_test_dataset=TensorDataset(client_images[:8], client_labels[:8]), encoder_input_size=32,
                num_clusters=6, budget=40, noise_multiplier=8.0, label_source="class_coverage",
                coverage_clusters=[3, 6], coverage_noise_multiplier=0.5, image_size=16, batch_size=8,
                cache_dir=str(tmp_path), dataset_id="toy")
    return ProxyDataModule(**{**args, **kwargs})


def test_its_release_counts_in_the_budget_the_proxy_and_the_ledger(tmp_path):
    from ecos_lightning.callbacks import PrivacyLedger, read_ledger

    releases = [gaussian_release(8.0, what="ecos_coverage_scores"), class_coverage.release(0.5, 2)]
    dm = _module(tmp_path)
    assert dm.planned_releases() == releases
    ledger = tmp_path / "ledger.json"
    pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
               default_root_dir=tmp_path, callbacks=[PrivacyLedger(str(ledger))]).fit(CountingModel(), datamodule=dm)
    assert dm.proxy.releases == releases
    assert dm.epsilon == releases_epsilon(releases, 1e-5) > releases_epsilon(releases[:1], 1e-5)
    assert len(dm.proxy.labels) == 40 and set(dm.proxy.labels) <= {0, 1}
    assert dm.proxy_label_accuracy == dm.summary()["label_accuracy"] > 0.5
    [entry] = read_ledger(ledger)["entries"]
    assert entry["releases"] == releases

    with pytest.raises(ValueError, match="noise_multiplier of sampler 'ecos' or of label source 'class_coverage'") as error:
        _module(tmp_path / "tight", max_epsilon=dm.epsilon * 0.99).prepare_data()
    assert len(str(error.value).splitlines()) == 1 and not (tmp_path / "tight").exists()


def test_answer_only_what_is_clear_leaves_the_rest_unlabelled(tmp_path):
    dm = _module(tmp_path, coverage_label_fraction=0.6)
    dm.prepare_data()
    dm.setup("fit")
    labels = dm.proxy.labels
    assert labels.count(-1) == 16 and dm.summary()["class_histogram"] == [labels.count(0), labels.count(1)]
    assert dm.summary()["labelled"] == dm.proxy_labelled_fraction == 1 - 16 / len(labels)
    assert dm.proxy_label_accuracy <= dm.proxy_labelled_fraction


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, True, "0.5", float("nan")])
def test_a_bad_label_fraction_is_refused_before_any_release(tmp_path, fraction):
    with pytest.raises(ValueError, match=r"^coverage_label_fraction must be a number in \(0, 1\]"):
        _module(tmp_path, coverage_label_fraction=fraction).planned_releases()
    assert not any(tmp_path.iterdir())
