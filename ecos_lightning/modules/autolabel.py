"""Training on a proxy set labelled by the client (Private kNN auto-labels)."""

from __future__ import annotations

import math

from ecos_lightning.modules.classifier import ClassifierModule

__all__ = ["AutoLabelModule"]


class AutoLabelModule(ClassifierModule):
    """Plain supervised training on auto-labelled proxy data.

    At fit start, a data module attribute ``proxy_label_accuracy`` (float in
    [0, 1]: accuracy of the auto-labels against the true labels, known only in
    a simulation) is kept in ``self.label_accuracy`` and logged as
    ``autolabel_label_acc`` every training epoch.  ``label_accuracy`` is None
    when the data module has no such attribute (or it is None).
    """

    label_accuracy: float | None = None

    def on_fit_start(self) -> None:
        acc = getattr(getattr(self.trainer, "datamodule", None), "proxy_label_accuracy", None)
        self.label_accuracy = None if acc is None else float(acc)
        if self.label_accuracy is not None and not math.isfinite(self.label_accuracy):
            raise ValueError(f"datamodule.proxy_label_accuracy must be finite, got {acc!r}")

    def on_train_epoch_start(self) -> None:
        # self.log is not allowed in on_fit_start; the value is the same on every rank.
        if self.label_accuracy is not None:
            self.log("autolabel_label_acc", self.label_accuracy, on_step=False, on_epoch=True, batch_size=1)
