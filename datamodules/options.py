"""The data module's grouped arguments: the datasets it is given and how its loaders serve the proxy.

Each is a frozen dataclass: LightningCLI and Hydra build them from nested keys (``data.loaders.batch_size``),
and a mapping of their fields is accepted wherever one is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from torch.utils.data import Dataset


@dataclass(frozen=True)
class Datasets:
    """Datasets given in code, in place of a source name.

    open, client, client_test: map-style datasets of ``(image, label)`` (image: PIL, uint8 HWC array or
    tensor CHW, or floats in [0, 1]: the raw images the encoder reads; a dataset whose first image is
    already normalised is refused, naming it). Labels are read through the items (so a
    ``target_transform`` applies) and hashed into the artifact's key. ``open`` and ``client`` are both
    required unless a ``proxy_file`` gives the proxy (then ``open`` is the pool it indexes, if it names
    no paths, and ``client_test`` the client's test set). ``client`` may be a list of datasets, one per
    device of a fleet (``FleetEcos`` reads them device by device; any other sampler, their union).
    id: names them in the artifact hash and the feature caches (default: a content fingerprint).
    """

    open: Dataset | None = None
    client: Dataset | list[Dataset] | None = None
    client_test: Dataset | None = None
    id: str | None = None


@dataclass(frozen=True)
class Loaders:
    """How the proxy is split and served.

    batch_size, num_workers: loader settings; ``num_workers="auto"``: the CPUs this process may use,
        shared among the node's ranks, one left for the main process (at least 1, at most 8). Loaders pin
        memory when training on a GPU and keep their workers between epochs.
    val_fraction: share of the proxy held out for validation (a split seeded by the data module's seed).
    image_size: images are resized to this square side (built-in transforms only).
    augment: random crop/affine augmentation of training images (built-in transform only).
    train_transform, eval_transform: the image as the dataset gives it (PIL, array or tensor) -> the tensor
        the model gets, replacing the built-in resize to ``image_size`` (+ augmentation) and scaling to
        [0, 1]: ``train_transform`` for the training loader, ``eval_transform`` for the validation, test
        and predict loaders; labels are untouched. The protocol's features always use the encoder's own
        preprocessing.
    unlabelled_batch_size: > 0 adds a FixMatch stream of (weak, strong) views of the unselected pool,
        built-in (``image_size``, [0, 1]); it refuses a ``train_transform``.
    keep_unlabelled: the label contract. Every proxy image carries a class index in ``[0, num_classes)``
        or -1 (no label). None (default): the train and val batches carry the -1 images only for a module
        that declares ``accepts_unlabelled = True`` (this project's modules); True: always keep them (use
        ``cross_entropy(..., ignore_index=-1)``); False: always leave them out.
    """

    batch_size: int = 64
    num_workers: int | Literal["auto"] = "auto"
    val_fraction: float = 0.1
    image_size: int = 32
    augment: bool = True
    train_transform: Callable | None = None
    eval_transform: Callable | None = None
    unlabelled_batch_size: int = 0
    keep_unlabelled: bool | None = None

    def __post_init__(self):
        for name in ("batch_size", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        workers = self.num_workers
        if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise ValueError(f"num_workers must be 'auto' or an integer >= 0, got {workers!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.train_transform is not None and self.unlabelled_batch_size > 0:
            raise ValueError("unlabelled_batch_size > 0 (FixMatch) trains on built-in views of image_size in [0, 1]: "
                             "leave train_transform unset, or set unlabelled_batch_size=0")

    def settings(self) -> dict:
        """The fields that are plain values (not the transforms): for hyperparameters and reports."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.endswith("_transform")}


def as_dataclass(cls, value, argument: str):
    """``value`` as a ``cls`` (itself, or a mapping of its fields: YAML, Hydra, a saved hyperparameter)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ValueError(f"{argument}: unknown field {unknown[0]!r}; {cls.__name__} takes {', '.join(sorted(fields))}")
        return cls(**dict(value))
    raise ValueError(f"{argument} must be a {cls.__name__} or a mapping of its fields, got {type(value).__name__}")


__all__ = ["Datasets", "Loaders", "as_dataclass"]
