"""Tests for FineTuneModule (supervised + FixMatch), CPU."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ecos_lightning.modules import FineTuneModule

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:.*LeafSpec.*")

SMALL = dict(model_name="resnet10t", weights="none", num_classes=3, input_size=32)


class FixedLogits(nn.Module):
    """Stands in for the timm model: returns preset logits [N, C] (+ a trainable bias)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits
        self.bias = nn.Parameter(torch.zeros(logits.shape[1]))

    def forward(self, pixels):
        assert pixels.shape[0] == self.logits.shape[0]
        return self.logits + self.bias


def capture_logs(module, monkeypatch) -> dict:
    logged: dict = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    return logged


def test_fixmatch_loss_mask_on_crafted_logits(monkeypatch):
    m = FineTuneModule(**SMALL, fixmatch=True, fixmatch_threshold=0.9, fixmatch_weight=0.5)
    labelled = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    weak = torch.tensor([[5.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 4.0], [0.0, 0.3, 0.0]])
    strong = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    m.model = FixedLogits(torch.cat([labelled, weak, strong]))
    logged = capture_logs(m, monkeypatch)
    y = torch.tensor([0, -1])
    img = lambda n: torch.rand(n, 3, 8, 8)  # noqa: E731
    loss = m.training_step({"proxy": (img(2), y), "unlabelled": (img(4), img(4))}, 0)

    # By hand: softmax max of weak rows 0 and 2 is >= 0.9 (pseudo-labels 0 and 2), rows 1, 3 are not.
    sup = F.cross_entropy(labelled[:1], torch.tensor([0]))
    unsup = (F.cross_entropy(strong[0:1], torch.tensor([0])) + F.cross_entropy(strong[2:3], torch.tensor([2]))) / 4
    assert loss.item() == pytest.approx((sup + 0.5 * unsup).item(), abs=1e-6)
    assert logged["train_mask_rate"].item() == pytest.approx(0.5)
    assert logged["train_unsup_loss"].item() == pytest.approx(unsup.item(), abs=1e-6)
    assert logged["train_sup_loss"].item() == pytest.approx(sup.item(), abs=1e-6)
    loss.backward()
    assert m.model.bias.grad is not None and torch.isfinite(m.model.bias.grad).all()


def test_fixmatch_threshold_one_masks_everything(monkeypatch):
    m = FineTuneModule(**SMALL, fixmatch=True, fixmatch_threshold=1.0)
    logits = torch.tensor([[0.0, 3.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    m.model = FixedLogits(logits)
    logged = capture_logs(m, monkeypatch)
    x = torch.rand(1, 3, 8, 8)
    loss = m.training_step({"proxy": (x, torch.tensor([1])), "unlabelled": (x, x)}, 0)
    assert logged["train_mask_rate"].item() == 0.0
    assert loss.item() == pytest.approx(F.cross_entropy(logits[:1], torch.tensor([1])).item(), abs=1e-6)


def test_fixmatch_with_tuple_batch_raises_clear_error():
    m = FineTuneModule(**SMALL, fixmatch=True)
    with pytest.raises(RuntimeError, match=r"unlabelled_batch_size > 0"):
        m.training_step((torch.rand(2, 3, 8, 8), torch.tensor([0, 1])), 0)


def test_dict_batch_without_fixmatch_uses_proxy_only(monkeypatch):
    m = FineTuneModule(**SMALL, fixmatch=False)
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    m.model = FixedLogits(logits)
    capture_logs(m, monkeypatch)
    x = torch.rand(2, 3, 8, 8)
    y = torch.tensor([0, 1])
    loss = m.training_step({"proxy": (x, y), "unlabelled": (torch.rand(5, 3, 8, 8),) * 2}, 0)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-6)


def test_fit_with_labelled_and_unlabelled_streams(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(16, 3, 16, 16)
    y = torch.arange(16) % 3
    y[::4] = -1
    proxy = DataLoader(TensorDataset(x, y), batch_size=4)
    unlabelled = DataLoader(TensorDataset(torch.rand(12, 3, 20, 20), torch.rand(12, 3, 20, 20)), batch_size=6)
    m = FineTuneModule(**SMALL, fixmatch=True, fixmatch_threshold=0.0)
    t = pl.Trainer(
        accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    t.fit(m, {"proxy": proxy, "unlabelled": unlabelled})  # CombinedLoader -> dict batches
    metrics = t.callback_metrics
    assert metrics["train_mask_rate"].item() == 1.0  # threshold 0 keeps every pseudo-label
    assert torch.isfinite(metrics["train_loss"]) and "train_unsup_loss" in metrics
    assert m.hparams.fixmatch is True and m.hparams.fixmatch_threshold == 0.0



def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 20, 20)
    plain = FineTuneModule(**SMALL)
    nhwc = FineTuneModule(**SMALL)
    nhwc.load_state_dict(plain.state_dict())
    nhwc.use_channels_last()
    conv = next(m for m in nhwc.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain.eval(), nhwc.eval()
    torch.testing.assert_close(nhwc(images), plain(images), rtol=1e-4, atol=1e-5)
