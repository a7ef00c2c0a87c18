"""Supervised image classifier on the proxy set: a timm model behind its own preprocessing.

Batches (from the project's ProxyDataModule):

* train: ``(images, labels)`` or ``{"proxy": (images, labels), "unlabelled": (weak, strong)}``;
  images float [B,3,H,W] in [0,1], labels int64 [B] with ``-1`` = no label.
* val / test: ``(images, labels)`` with every label valid.
* predict: ``(images, ...)`` or ``images``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ecos_lightning.encoders import create_timm_model, resize_normalise, spec_for_model
from ecos_lightning.modules.losses import IGNORE_INDEX, masked_cross_entropy

__all__ = ["ClassifierModule", "Preprocess", "split_batch"]


class Preprocess(nn.Module):
    """Images [B,3,H,W] in [0,1] (any H, W; uint8 0-255 and 1 channel accepted)
    -> resized to ``input_size`` squared (no crop) and normalised [B,3,S,S].

    ``mean`` / ``std`` are (persistent) buffers, so they travel with checkpoints.
    """

    def __init__(self, input_size: int, mean, std, interpolation: str = "bilinear"):
        super().__init__()
        self.input_size = int(input_size)
        self.interpolation = interpolation
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @classmethod
    def for_model(cls, model_name: str, input_size: int) -> "Preprocess":
        """Mean / std / interpolation of timm model ``model_name`` (see ``spec_for_model``)."""
        spec = spec_for_model(model_name, weights="none", input_size=input_size)
        return cls(spec.input_size, spec.mean, spec.std, spec.interpolation)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"Preprocess expects images [B,3,H,W] in [0,1], got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return resize_normalise(x, self.input_size, self.interpolation, self.mean, self.std)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, interpolation={self.interpolation!r}"


def split_batch(batch: Any) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
    """Train batch -> ``((images, labels), (weak, strong) or None)``.

    Accepts ``(images, labels)`` or ``{"proxy": (images, labels), "unlabelled": (weak, strong)}``.
    """
    if isinstance(batch, Mapping):
        if "proxy" not in batch:
            raise ValueError(f"A dict batch needs a 'proxy' entry, got keys {sorted(map(str, batch))}")
        unl = batch.get("unlabelled")
        x, y = batch["proxy"]
        return (x, y), (None if unl is None else (unl[0], unl[1]))
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return (batch[0], batch[1]), None
    raise TypeError(
        "Expected a batch (images, labels) or {'proxy': (images, labels), 'unlabelled': (weak, strong)}, "
        f"got {type(batch).__name__}"
    )


def _warmup_cosine(warmup: int, total: int):
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class ClassifierModule(pl.LightningModule):
    """timm classifier trained with (masked) cross-entropy on the proxy set.

    ``forward``: images [B,3,H,W] in [0,1] -> logits [B, num_classes]
    (``self.preprocess`` resizes to ``input_size`` and normalises with the
    model's mean / std, then ``self.model`` runs).

    Optimiser: AdamW with two parameter groups, ``backbone`` (lr *
    ``backbone_lr_scale``) and ``head`` (the timm classifier, lr); linear
    warm-up for ``warmup_fraction`` of ``trainer.estimated_stepping_batches``
    then cosine decay, stepped every optimiser step.  ``freeze_backbone`` or
    ``backbone_lr_scale=0`` freezes the backbone: no gradients, not in the
    optimiser, and kept in eval mode (its BatchNorm statistics do not move).

    Logs ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``,
    ``test_loss``, ``test_acc`` (epoch means, synced across processes).
    """

    #: Batches may hold unlabelled images (label -1): the losses and metrics leave them out, so
    #: ``ProxyDataModule`` keeps them in this module's batches (see its ``keep_unlabelled``).
    accepts_unlabelled = True

    def __init__(
        self,
        model_name: str = "efficientnet_lite0",
        weights: str = "offline",
        num_classes: int = 10,
        input_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        backbone_lr_scale: float = 1.0,
        freeze_backbone: bool = False,
        warmup_fraction: float = 0.05,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if lr <= 0 or backbone_lr_scale < 0 or weight_decay < 0:
            raise ValueError(
                f"Need lr > 0, backbone_lr_scale >= 0, weight_decay >= 0; got {lr}, {backbone_lr_scale}, {weight_decay}"
            )
        if not 0.0 <= warmup_fraction < 1.0 or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"warmup_fraction and label_smoothing must be in [0, 1), got {warmup_fraction}, {label_smoothing}")
        self.save_hyperparameters()
        self.num_classes = int(num_classes)
        self.preprocess = Preprocess.for_model(model_name, input_size)
        self.model = create_timm_model(model_name, num_classes=self.num_classes, weights=weights)
        self.channels_last = False  # see use_channels_last
        self.backbone_frozen = bool(freeze_backbone) or backbone_lr_scale == 0
        if self.backbone_frozen:
            for p in self.backbone_parameters():
                p.requires_grad_(False)
            self.train()  # puts the backbone in eval mode
        # One metric object per stage (their states never mix).
        self.train_acc = MulticlassAccuracy(self.num_classes, average="micro", ignore_index=IGNORE_INDEX)
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro", ignore_index=IGNORE_INDEX)
        self.test_acc = MulticlassAccuracy(self.num_classes, average="micro", ignore_index=IGNORE_INDEX)

    # ------------------------------------------------------------------ model
    def head(self) -> nn.Module:
        """The timm classifier head of ``self.model``."""
        return self.model.get_classifier()

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Every parameter of ``self.model`` outside the classifier head."""
        head_ids = {id(p) for p in self.head().parameters()}
        return [p for p in self.model.parameters() if id(p) not in head_ids]

    def forward(self, images: Tensor) -> Tensor:
        """images [B,3,H,W] in [0,1] -> logits [B, num_classes]."""
        pixels = self.preprocess(images)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self.model(pixels)

    def use_channels_last(self) -> None:
        """Store the network's weights and feed it inputs channels-last (NHWC), the layout GPU convolutions
        with tensor cores run fastest in; ``setup`` calls it when training on a CUDA device."""
        self.model.to(memory_format=torch.channels_last)
        self.channels_last = True

    def train(self, mode: bool = True) -> "ClassifierModule":
        """As ``nn.Module.train``, but a frozen backbone stays in eval mode."""
        super().train(mode)
        if self.backbone_frozen:
            self.model.eval()
            self.head().train(mode)
        return self

    # ------------------------------------------------------------------ steps
    def setup(self, stage: str) -> None:
        """Checks that the data module's ``num_classes`` (when it has one) matches the model's; on a CUDA
        device, switches to channels-last before the strategy moves and wraps the model."""
        if self.trainer.strategy.root_device.type == "cuda":
            self.use_channels_last()
        n = getattr(getattr(self.trainer, "datamodule", None), "num_classes", None)
        if isinstance(n, int) and not isinstance(n, bool) and n != self.num_classes:
            raise ValueError(
                f"The data module has {n} classes but the model was built with num_classes={self.num_classes}; "
                f"set model.num_classes={n}"
            )

    def _log_loss(self, name: str, value: Tensor, batch_size: int, prog_bar: bool = False) -> None:
        on_step = name.startswith("train")
        self.log(name, value, on_step=on_step, on_epoch=True, prog_bar=prog_bar, sync_dist=True, batch_size=batch_size)

    def _log_acc(self, stage: str, logits: Tensor, labels: Tensor) -> None:
        metric = getattr(self, f"{stage}_acc")
        metric.update(logits.detach(), labels)
        self.log(f"{stage}_acc", metric, on_step=False, on_epoch=True, prog_bar=stage != "train", sync_dist=True)

    def supervised_step(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(images [B,3,H,W], labels [B]) -> (masked CE loss, logits [B, C])."""
        logits = self(images)
        return masked_cross_entropy(logits, labels, self.hparams.label_smoothing), logits

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        (x, y), _ = split_batch(batch)
        loss, logits = self.supervised_step(x, y)
        self._log_loss("train_loss", loss, x.shape[0], prog_bar=True)
        self._log_acc("train", logits, y)
        return loss

    def _eval_step(self, stage: str, batch: Any) -> Tensor:
        x, y = batch[0], batch[1]
        loss, logits = self.supervised_step(x, y)
        self._log_loss(f"{stage}_loss", loss, x.shape[0], prog_bar=stage == "val")
        self._log_acc(stage, logits, y)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step("test", batch)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """-> class probabilities [B, num_classes] (softmax of the logits)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.softmax(self(x).float(), dim=1)

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = [{"params": [p for p in self.head().parameters() if p.requires_grad], "lr": hp.lr, "name": "head"}]
        if not self.backbone_frozen:
            backbone = [p for p in self.backbone_parameters() if p.requires_grad]
            groups.insert(0, {"params": backbone, "lr": hp.lr * hp.backbone_lr_scale, "name": "backbone"})
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:  # unbounded training: constant lr
            return optimizer
        total = int(total)
        warmup = int(hp.warmup_fraction * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
