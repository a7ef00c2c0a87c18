"""Tests for ProxyReport and plot_proxy_report (CPU, a fake proxy datamodule, tiny model)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from ecos_lightning.callbacks.proxy_report import ProxyReport, describe, plot_proxy_report, report_metrics
from ecos_lightning.proxy import Proxy

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's num_workers / logging hints

SUMMARY = {"sampler": "ecos", "size": 12, "epsilon": 2.5, "epsilon_rdp": 2.9, "delta": 1e-5, "bytes_down": 4096, "bytes_up": 512,
           "class_histogram": [3, 5, 0, 4], "label_accuracy": 0.75, "labelled": 0.8, "domains": {"handwritten": 9, "printed": 3}}


class FakeProxyData(pl.LightningDataModule):
    """A datamodule with the ProxyDataModule reporting API: ``summary()`` and ``proxy``."""

    def __init__(self, summary: dict, cluster_scores=None):
        super().__init__()
        self._summary = summary
        self.proxy = Proxy(list(range(12)), clusters=[0, 0, 2, 3] * 3, cluster_scores=cluster_scores, open="fake")

    def summary(self) -> dict:
        return dict(self._summary)

    def train_dataloader(self):
        data = TensorDataset(torch.rand(8, 3, 8, 8), torch.randint(0, 4, (8,)))
        return DataLoader(data, batch_size=4)


def test_report_writes_json_png_and_logs_metrics(tmp_path, fit_tiny):
    logger = fit_tiny(FakeProxyData(SUMMARY, cluster_scores=[0.0, 3.5, 7.0, 1.2, 0.4]), ProxyReport()).logger
    folder = tmp_path / "lightning_logs" / "version_0"
    assert logger.log_dir == str(folder)
    report = json.loads((folder / "proxy_report.json").read_text())
    assert report["size"] == 12 and report["domains"] == SUMMARY["domains"]
    assert report["cluster_scores"] == [0.0, 3.5, 7.0, 1.2, 0.4]
    with Image.open(folder / "proxy_report.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > image.size[1]
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    logged = {k: float(v) for row in rows for k, v in row.items() if k.startswith("proxy/") and v}
    assert report["epsilon"] == 2.5 and report["epsilon_rdp"] == 2.9
    assert "epsilon=2.5 at delta=1e-05 (PLD; RDP 2.9)" in describe(SUMMARY)
    assert "label accuracy 75.0% (80% of images labelled)" in describe(SUMMARY)
    assert logged == pytest.approx({"proxy/size": 12, "proxy/epsilon": 2.5, "proxy/epsilon_rdp": 2.9, "proxy/bytes_down": 4096,
                                    "proxy/bytes_up": 512, "proxy/label_accuracy": 0.75, "proxy/labelled": 0.8,
                                    "proxy/domain/handwritten": 0.75, "proxy/domain/printed": 0.25})
    assert not list(folder.glob("*.tmp"))  # atomic writes leave no temporary files


def test_report_without_privacy_or_domains(tmp_path, fit_tiny):
    summary = {**SUMMARY, "sampler": "upload", "epsilon": math.inf, "label_accuracy": None}
    del summary["domains"]
    metrics = report_metrics(summary)
    assert "proxy/epsilon" not in metrics and "proxy/label_accuracy" not in metrics
    assert not any(k.startswith("proxy/domain/") for k in metrics)
    assert "not private" in describe(summary)
    fit_tiny(FakeProxyData(summary), ProxyReport())
    report = json.loads((tmp_path / "lightning_logs" / "version_0" / "proxy_report.json").read_text())
    assert report["epsilon"] is None and report["cluster_scores"] is None  # strict JSON: no Infinity


def test_report_skips_a_datamodule_without_summary(tmp_path, fit_tiny):
    class Plain(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)), batch_size=2)

    with pytest.warns(UserWarning, match="no summary"):
        fit_tiny(Plain(), ProxyReport())
    assert not list(tmp_path.rglob("proxy_report.*"))


@pytest.mark.parametrize("scores", [None, [1.0, 0.0, 4.0]])
def test_plot_proxy_report_is_a_pure_function(tmp_path, scores):
    path = plot_proxy_report(SUMMARY, scores, tmp_path / "sub" / "report.png", selected_clusters=[2])
    with Image.open(path) as image:
        image.verify()
    unlabelled = {**SUMMARY, "class_histogram": [0, 0, 0, 0]}
    unlabelled.pop("domains")
    with Image.open(plot_proxy_report(unlabelled, scores, tmp_path / "plain.png")) as image:
        image.verify()
