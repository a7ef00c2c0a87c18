"""Tests for PrivacyLedger (CPU, a fake proxy datamodule, tiny model)."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ecos_lightning.callbacks.privacy_ledger import PrivacyLedger, ledger_epsilon, read_ledger
from ecos_lightning.protocol.privacy import gaussian_release, releases_epsilon
from ecos_lightning.proxy import Proxy

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's num_workers / logging hints

DELTA = 1e-5
ECOS = [gaussian_release(4.0, what="ecos_coverage_scores")]
ECOS_KNN = [gaussian_release(6.0, what="ecos_coverage_scores"),
            gaussian_release(2.0, count=50, sampling_rate=0.3, what="private_knn_labels")]


class FakeProxyData(pl.LightningDataModule):
    """A datamodule carrying a Proxy with a ``hash`` and ``releases``, like ProxyDataModule."""

    def __init__(self, artifact_hash: str, releases: list[dict], delta: float = DELTA,
                 max_epsilon: float | None = None):
        super().__init__()
        self.save_hyperparameters("max_epsilon")
        self.proxy = Proxy([0], releases=releases, hash=artifact_hash, open="fake", delta=delta)

    def train_dataloader(self):
        data = TensorDataset(torch.rand(8, 3, 8, 8), torch.randint(0, 4, (8,)))
        return DataLoader(data, batch_size=4)


def test_ledger_composes_distinct_artifacts_and_counts_a_rerun_once(tmp_path, fit_tiny):
    path = tmp_path / "ledger.json"
    fit_tiny(FakeProxyData("a" * 16, ECOS), PrivacyLedger(str(path), delta=DELTA))
    assert ledger_epsilon(path, DELTA) == pytest.approx(releases_epsilon(ECOS, DELTA))
    fit_tiny(FakeProxyData("b" * 16, ECOS_KNN), PrivacyLedger(str(path), delta=DELTA))
    union = releases_epsilon(ECOS + ECOS_KNN, DELTA)
    assert ledger_epsilon(path, DELTA) == pytest.approx(union)
    assert union > releases_epsilon(ECOS_KNN, DELTA)

    before = path.read_bytes()
    fit_tiny(FakeProxyData("a" * 16, ECOS), PrivacyLedger(str(path), max_epsilon=union * 1.01, delta=DELTA))
    assert path.read_bytes() == before  # the same artifact again costs nothing and is not re-recorded
    ledger = read_ledger(path)
    assert [e["hash"] for e in ledger["entries"]] == ["a" * 16, "b" * 16]
    assert ledger["entries"][1]["what"] == ["ecos_coverage_scores", "private_knn_labels"]
    assert ledger["entries"][0]["time"] and ledger["epsilon"] == pytest.approx(union)
    assert not list(tmp_path.glob("*.tmp"))


def test_ledger_default_path_is_in_the_log_dir(tmp_path, fit_tiny):
    trainer = fit_tiny(FakeProxyData("c" * 16, ECOS), PrivacyLedger())
    path = tmp_path / "lightning_logs" / "version_0" / "privacy_ledger.json"
    assert trainer.log_dir == str(path.parent)
    assert ledger_epsilon(path) == pytest.approx(releases_epsilon(ECOS, 1e-5))


def test_ledger_refuses_over_budget_and_writes_nothing(tmp_path, fit_tiny):
    path = tmp_path / "ledger.json"
    first = releases_epsilon(ECOS, DELTA)
    with pytest.raises(ValueError, match=r"composed epsilon from 0.000 to .* > budget .*raise the noise multiplier"):
        fit_tiny(FakeProxyData("a" * 16, ECOS), PrivacyLedger(str(path), max_epsilon=first / 2, delta=DELTA))
    assert not path.exists()

    fit_tiny(FakeProxyData("a" * 16, ECOS), PrivacyLedger(str(path), max_epsilon=first * 1.01, delta=DELTA))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="refused"):
        fit_tiny(FakeProxyData("b" * 16, ECOS_KNN),
            PrivacyLedger(str(path), max_epsilon=first * 1.01, delta=DELTA))
    assert path.read_bytes() == before


def test_non_private_release_is_infinite_and_refused_by_any_budget(tmp_path, fit_tiny):
    path = tmp_path / "ledger.json"
    upload = [{"mechanism": "non_private", "count": 1, "what": "upload: client data"}]
    fit_tiny(FakeProxyData("u" * 16, upload), PrivacyLedger(str(path)))
    assert math.isinf(ledger_epsilon(path)) and read_ledger(path)["epsilon"] is None
    with pytest.raises(ValueError, match="inf"):
        PrivacyLedger(max_epsilon=100.0).record(path, "u" * 16, upload)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"version": 1}', '{"version": 99, "entries": []}',
                                     '{"version": 1, "entries": [{"hash": "a", "releases": [{"mechanism": "?"}]}]}'])
def test_a_corrupt_ledger_is_an_error_naming_the_file(tmp_path, content, fit_tiny):
    path = tmp_path / "ledger.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="ledger.json"):
        ledger_epsilon(path)
    with pytest.raises(ValueError, match="never reset"):
        fit_tiny(FakeProxyData("a" * 16, ECOS), PrivacyLedger(str(path)))
    assert path.read_text() == content


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="max_epsilon"):
        PrivacyLedger(max_epsilon=0)
    with pytest.raises(ValueError, match="delta"):
        PrivacyLedger(delta=1.5)


def test_delta_and_budget_are_set_once_in_the_data_module(tmp_path, fit_tiny):
    path = tmp_path / "ledger.json"
    first = releases_epsilon(ECOS, DELTA)
    with pytest.raises(ValueError, match="refused"):  # the data module's max_epsilon is the ledger's budget
        fit_tiny(FakeProxyData("a" * 16, ECOS, max_epsilon=first / 2), PrivacyLedger(str(path)))
    with pytest.raises(ValueError, match=r"PrivacyLedger\(delta=0.001\) disagrees with the data module's delta=1e-05"):
        fit_tiny(FakeProxyData("a" * 16, ECOS), PrivacyLedger(str(path), delta=1e-3))
    with pytest.raises(ValueError, match=r"PrivacyLedger\(max_epsilon=2\) disagrees .* max_epsilon=1"):
        fit_tiny(FakeProxyData("a" * 16, ECOS, max_epsilon=1.0), PrivacyLedger(str(path), max_epsilon=2.0))
    assert not path.exists()
    fit_tiny(FakeProxyData("a" * 16, ECOS, delta=1e-6, max_epsilon=5.0), PrivacyLedger(str(path)))
    ledger = read_ledger(path)
    assert ledger["delta"] == 1e-6 and ledger["max_epsilon"] == 5.0


def test_a_run_without_releases_is_worded_for_what_it_is(tmp_path, caplog):
    """A sampler that queries no client (random) is not told about proxy files."""
    import torch
    import pytorch_lightning as pl
    from torch.utils.data import TensorDataset

    from ecos_lightning.callbacks import PrivacyLedger
    from ecos_lightning.datamodules import ProxyDataModule
    from train_helpers import CountingModel

    images = torch.rand(30, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    dm = ProxyDataModule(open_dataset=TensorDataset(images, torch.arange(30) % 4),
                         client_dataset=TensorDataset(images[:10], torch.arange(10) % 4), sampler="random",
                         budget=8, image_size=16, batch_size=4, num_workers=0, cache_dir=str(tmp_path))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         default_root_dir=tmp_path, callbacks=[PrivacyLedger(str(tmp_path / "ledger.json"))])
    with caplog.at_level("INFO"):
        trainer.fit(CountingModel(), datamodule=dm)
    assert "release nothing of the client's data" in caplog.text and "proxy file" not in caplog.text
    assert not (tmp_path / "ledger.json").exists()
