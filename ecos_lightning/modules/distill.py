"""Knowledge distillation of a frozen teacher into the proxy-set student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ecos_lightning.encoders import create_timm_model
from ecos_lightning.modules.classifier import ClassifierModule, Preprocess, split_batch
from ecos_lightning.modules.losses import kd_loss, masked_cross_entropy

__all__ = ["DistillModule", "FrozenTeacher", "read_teacher_checkpoint"]

#: How to produce a teacher checkpoint with this project.
TEACHER_COMMAND = "python train.py fit --config configs/teacher_digits.yaml"


class FrozenTeacher(nn.Module):
    """Frozen teacher: images [B,3,H,W] in [0,1] -> logits [B, C], computed without gradients.

    Its parameters never require gradients and it stays in eval mode whatever
    ``train()`` is called with (BatchNorm statistics and dropout are fixed).
    Submodules are named like :class:`ClassifierModule`'s (``preprocess``,
    ``model``), so a ClassifierModule state dict loads into it directly.
    """

    def __init__(self, model: nn.Module, preprocess: Preprocess):
        super().__init__()
        self.preprocess = preprocess
        self.model = model
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Always eval mode: the teacher is frozen."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model(self.preprocess(images))


def read_teacher_checkpoint(path: str) -> tuple[dict[str, Tensor], dict]:
    """Lightning checkpoint of a ClassifierModule (or subclass) ->
    (its ``model.*`` / ``preprocess.*`` state-dict entries, its ``hyper_parameters``).

    Loaded with ``torch.load(map_location="cpu", weights_only=True)``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"Teacher checkpoint not found: {str(p)!r}; train a teacher first with `{TEACHER_COMMAND}`")
    ckpt = torch.load(str(p), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{str(p)!r} is not a Lightning checkpoint (no 'state_dict'); expected one written by `{TEACHER_COMMAND}`")
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(("model.", "preprocess."))}
    if not any(k.startswith("model.") for k in state):
        raise ValueError(f"Checkpoint {str(p)!r} has no 'model.*' weights; expected a ClassifierModule checkpoint")
    return state, dict(ckpt.get("hyper_parameters") or {})


class DistillModule(ClassifierModule):
    """Distils a frozen teacher into the student ``self.model`` on the proxy set.

    Loss (see :func:`~ecos_lightning.modules.losses.distillation_loss`)::

        alpha * CE(student, y) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

    CE over labelled entries only (0 when a batch has none), KL over all.
    Logs ``train_ce_loss`` and ``train_kd_loss`` besides the base metrics.

    Teacher: from ``teacher_checkpoint`` (a Lightning ``.ckpt`` of a
    ClassifierModule / FineTuneModule; its ``model_name``, ``input_size`` and
    ``num_classes`` hyperparameters win over ``teacher_name`` and the default
    input size) or, without one, ``create_timm_model(teacher_name, num_classes,
    teacher_weights)`` (whose head is freshly initialised unless the weights
    file holds a ``num_classes`` head).  ``teacher_input_size`` None = the
    checkpoint's, else ``input_size``.  The resolved ``teacher_name`` and
    ``teacher_input_size`` are written back to ``hparams``.  The teacher is a
    :class:`FrozenTeacher` at ``self.teacher``: outside the optimiser (and so
    outside DDP's gradient sync), but inside the state dict, so a DistillModule
    checkpoint also reloads with ``teacher_checkpoint=None, teacher_weights="none"``.
    (Lightning's "module(s) in eval mode at the start of training" warning
    is expected: it counts the teacher's modules.)
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
        teacher_name: str = "efficientnet_lite0",
        teacher_checkpoint: str | None = None,
        teacher_weights: str = "offline",
        teacher_input_size: int | None = None,
        alpha: float = 0.5,
        temperature: float = 4.0,
    ):
        super().__init__(
            model_name, weights, num_classes, input_size, lr, weight_decay,
            backbone_lr_scale, freeze_backbone, warmup_fraction, label_smoothing,
        )
        if not 0.0 <= alpha <= 1.0 or temperature <= 0:
            raise ValueError(f"Need 0 <= alpha <= 1 and temperature > 0, got alpha={alpha}, temperature={temperature}")
        self.save_hyperparameters()

        state = None
        if teacher_checkpoint is not None:
            state, hp = read_teacher_checkpoint(teacher_checkpoint)
            teacher_name = hp.get("model_name", teacher_name)
            teacher_input_size = teacher_input_size or hp.get("input_size")
            if hp.get("num_classes", num_classes) != num_classes:
                raise ValueError(
                    f"Teacher checkpoint {teacher_checkpoint!r} has num_classes={hp['num_classes']} "
                    f"but the student has num_classes={num_classes}"
                )
        teacher_input_size = int(teacher_input_size or input_size)
        model = create_timm_model(teacher_name, num_classes, weights="none" if state is not None else teacher_weights)
        self.teacher = FrozenTeacher(model, Preprocess.for_model(teacher_name, teacher_input_size))
        if state is not None:
            self.teacher.load_state_dict(state)
        self.hparams.teacher_name = teacher_name
        self.hparams.teacher_input_size = teacher_input_size

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        (x, y), _ = split_batch(batch)
        hp = self.hparams
        logits = self(x)
        teacher_logits = self.teacher(x)
        ce = masked_cross_entropy(logits, y, hp.label_smoothing)
        kd = kd_loss(logits, teacher_logits, hp.temperature)
        loss = hp.alpha * ce + (1.0 - hp.alpha) * kd  # == distillation_loss(logits, teacher_logits, y, ...)

        n = x.shape[0]
        self._log_loss("train_loss", loss, n, prog_bar=True)
        self._log_loss("train_ce_loss", ce, n)
        self._log_loss("train_kd_loss", kd, n)
        self._log_acc("train", logits, y)
        return loss
