"""LightningModules trained on the proxy set: fine-tuning, distillation and auto-labelling."""

from ecos_lightning.modules.autolabel import AutoLabelModule
from ecos_lightning.modules.classifier import ClassifierModule, Preprocess
from ecos_lightning.modules.distill import DistillModule, FrozenTeacher
from ecos_lightning.modules.finetune import FineTuneModule
from ecos_lightning.modules.losses import distillation_loss, fixmatch_loss, kd_loss, masked_cross_entropy

__all__ = [
    "AutoLabelModule",
    "ClassifierModule",
    "DistillModule",
    "FineTuneModule",
    "FrozenTeacher",
    "Preprocess",
    "distillation_loss",
    "fixmatch_loss",
    "kd_loss",
    "masked_cross_entropy",
]
