"""The in-process client of a simulation: the features and labels a sampler and a label source read.

Both sides run in one process, so the client's features and labels are read here; only what the
components declare in their ``needs`` is extracted or read (features are cached on disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from ecos_lightning.features.store import DEFAULT_CHUNK_ROWS
from ecos_lightning.features.cache import cached_features
from ecos_lightning.components import CLIENT_FEATURES, CLIENT_LABELS, OPEN_FEATURES, Inputs


def extract_shard(spec, open_ds: Dataset, client_ds: Dataset, feature_ids: tuple[str, str], needs: frozenset,
                  cache_dir: Path, rank: int, world_size: int, chunk_rows: int) -> None:
    """Extract this rank's chunks (chunk i to rank i % world_size) of the features ``needs`` names into their
    stores; the stores are complete once every rank has done so."""
    open_id, client_id = feature_ids
    for need, dataset, data_id, desc in ((OPEN_FEATURES, open_ds, open_id, "open-pool features"),
                                         (CLIENT_FEATURES, client_ds, client_id, "client features")):
        if need in needs:
            cached_features(spec, dataset, data_id, cache_dir, desc=desc, rank=rank, world_size=world_size,
                            chunk_rows=chunk_rows)


def simulated_inputs(spec, open_ds: Dataset, client_ds: Dataset, feature_ids: tuple[str, str], needs: frozenset,
                     cache_dir: Path, labels: Callable[[Dataset], np.ndarray], num_classes: int,
                     chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Inputs:
    """The :class:`~ecos_lightning.samplers.Inputs` of ``needs`` (the union of the components' needs).

    spec: the encoder spec. feature_ids: the cache identities of the open pool and of the client set
    (each keyed by its own data). labels: reads every label of a dataset. The open pool's labels are
    always given (a labeller reveals those of the selected images).
    """
    def features(dataset, data_id, desc):
        return cached_features(spec, dataset, data_id, cache_dir, desc=desc, progress=True, chunk_rows=chunk_rows)

    open_id, client_id = feature_ids
    return Inputs(
        open_features=features(open_ds, open_id, "open-pool features") if OPEN_FEATURES in needs else None,
        open_labels=labels(open_ds),
        client_features=features(client_ds, client_id, "client features") if CLIENT_FEATURES in needs else None,
        client_labels=labels(client_ds) if CLIENT_LABELS in needs else None,
        client_size=len(client_ds), num_classes=num_classes, encoder=spec.to_dict())
