"""Fine-tuning on the labelled proxy set, optionally semi-supervised with FixMatch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ecos_lightning.modules.classifier import ClassifierModule, split_batch
from ecos_lightning.modules.losses import fixmatch_loss, masked_cross_entropy

__all__ = ["FineTuneModule"]


class FineTuneModule(ClassifierModule):
    """:class:`ClassifierModule` + FixMatch on an unlabelled stream.

    With ``fixmatch=True`` every train batch must be a dict
    ``{"proxy": (x [B,3,H,W], y [B]), "unlabelled": (weak [U,3,H,W], strong [U,3,H,W])}``
    and the loss is::

        CE(x, y) + fixmatch_weight * mean_U(mask * CE(strong, argmax softmax(weak / T)))

    with ``mask = max softmax(weak / T) >= fixmatch_threshold``; the three
    views go through the model in one forward pass (shared BatchNorm
    statistics).  Also logs ``train_sup_loss``, ``train_unsup_loss`` and
    ``train_mask_rate``.  With ``fixmatch=False`` a dict batch trains on its
    ``proxy`` part only.
    """

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
        fixmatch: bool = False,
        fixmatch_threshold: float = 0.95,
        fixmatch_weight: float = 1.0,
        fixmatch_temperature: float = 1.0,
    ):
        super().__init__(
            model_name, weights, num_classes, input_size, lr, weight_decay,
            backbone_lr_scale, freeze_backbone, warmup_fraction, label_smoothing,
        )
        if not 0.0 <= fixmatch_threshold <= 1.0 or fixmatch_weight < 0 or fixmatch_temperature <= 0:
            raise ValueError(
                "Need 0 <= fixmatch_threshold <= 1, fixmatch_weight >= 0, fixmatch_temperature > 0; got "
                f"{fixmatch_threshold}, {fixmatch_weight}, {fixmatch_temperature}"
            )
        self.save_hyperparameters()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        (x, y), unlabelled = split_batch(batch)
        if not self.hparams.fixmatch:
            return super().training_step((x, y), batch_idx)
        if unlabelled is None:
            raise RuntimeError(
                "FineTuneModule(fixmatch=True) needs dict batches with an 'unlabelled' (weak, strong) stream, "
                "but got a plain (images, labels) batch: enable the data module's unlabelled stream "
                "(data.loaders.unlabelled_batch_size > 0) or set model.fixmatch=false."
            )
        weak, strong = unlabelled
        n, u = x.shape[0], weak.shape[0]
        pixels = torch.cat([self.preprocess(x), self.preprocess(weak), self.preprocess(strong)])
        logits = self.model(pixels)
        logits_x, logits_weak, logits_strong = logits[:n], logits[n:n + u], logits[n + u:]

        hp = self.hparams
        sup = masked_cross_entropy(logits_x, y, hp.label_smoothing)
        unsup, mask = fixmatch_loss(logits_weak, logits_strong, hp.fixmatch_threshold, hp.fixmatch_temperature)
        loss = sup + hp.fixmatch_weight * unsup

        self._log_loss("train_loss", loss, n, prog_bar=True)
        self._log_loss("train_sup_loss", sup, n)
        self._log_loss("train_unsup_loss", unsup, max(u, 1))
        self._log_loss("train_mask_rate", mask.float().mean() if u else logits.new_zeros(()), max(u, 1))
        self._log_acc("train", logits_x, y)
        return loss
