"""Lightning base classes from both of its packages, so one class plugs into either's Trainer.

Objects of ``pytorch_lightning`` and of the unified ``lightning`` package (``import lightning as L``)
do not mix: each Trainer accepts only its own package's ``LightningDataModule`` and ``Callback``. The
data module and the callbacks therefore derive from both classes when both packages are installed
(the two are the same code under two names), and pick the utilities of the Trainer they are given.
"""

from __future__ import annotations

from types import ModuleType

import pytorch_lightning

try:
    import lightning.pytorch as unified
except ImportError:  # the unified package is optional
    unified = None


def bases(name: str) -> tuple[type, ...]:
    """``pytorch_lightning.<name>`` and, when installed, ``lightning.pytorch.<name>``."""
    return (getattr(pytorch_lightning, name),) + ((getattr(unified, name),) if unified is not None else ())


def framework_of(trainer) -> ModuleType:
    """The Lightning package (``pytorch_lightning`` or ``lightning.pytorch``) ``trainer`` belongs to."""
    if unified is not None and isinstance(trainer, unified.Trainer):
        return unified
    return pytorch_lightning
