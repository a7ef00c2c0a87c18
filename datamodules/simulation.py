"""The in-process client of a simulation: the features and labels a sampler and a label source read.

Both sides run in one process, so the client's features and labels are read here (a fleet's: the
client's, device after device); only what the components declare in their ``needs`` is extracted or read
(features are cached on disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from ecos_lightning.features.store import DEFAULT_CHUNK_ROWS
from ecos_lightning.features.cache import cached_features
from ecos_lightning.components import CLIENT_FEATURES, CLIENT_LABELS, FLEET_FEATURES, OPEN_FEATURES, Inputs


def _reads_client(needs: frozenset) -> bool:
    return CLIENT_FEATURES in needs or FLEET_FEATURES in needs


def extract_shard(spec, open_ds: Dataset, client_ds: Dataset, feature_ids: tuple[str, str], needs: frozenset,
                  cache_dir: Path, rank: int, world_size: int, chunk_rows: int) -> None:
    """Extract this rank's chunks (chunk i to rank i % world_size) of the features ``needs`` names into their
    stores; the stores are complete once every rank has done so."""
    open_id, client_id = feature_ids
    for wanted, dataset, data_id, desc in ((OPEN_FEATURES in needs, open_ds, open_id, "open-pool features"),
                                           (_reads_client(needs), client_ds, client_id, "client features")):
        if wanted:
            cached_features(spec, dataset, data_id, cache_dir, desc=desc, rank=rank, world_size=world_size,
                            chunk_rows=chunk_rows)


def simulated_inputs(spec, open_ds: Dataset, client_ds: Dataset, feature_ids: tuple[str, str], needs: frozenset,
                     cache_dir: Path, labels: Callable[[Dataset], np.ndarray], num_classes: int,
                     chunk_rows: int = DEFAULT_CHUNK_ROWS, devices: tuple[int, ...] | None = None) -> Inputs:
    """The :class:`~ecos_lightning.samplers.Inputs` of ``needs`` (the union of the components' needs).

    spec: the encoder spec. feature_ids: the cache identities of the open pool and of the client set
    (each keyed by its own data). labels: reads every label of a dataset. The open pool's labels are
    always given (a labeller reveals those of the selected images). devices: for a fleet, the images of
    each device, consecutive in ``client_ds`` (``fleet_features`` is ``client_features`` cut so).
    """
    def features(dataset, data_id, desc):
        return cached_features(spec, dataset, data_id, cache_dir, desc=desc, progress=True, chunk_rows=chunk_rows)

    if FLEET_FEATURES in needs and devices is None:
        raise ValueError("the sampler reads a fleet of devices, and the dataset is one client: name a fleet "
                         "(dataset: digits-lite-fleet:<domain>=<devices>,...), pass Datasets(client=[one dataset per "
                         "device]), or set the sampler's devices=N to deal the client's images to N devices")
    open_id, client_id = feature_ids
    client = features(client_ds, client_id, "client features") if _reads_client(needs) else None
    fleet = tuple(np.split(client, np.cumsum(devices)[:-1])) if FLEET_FEATURES in needs else None
    return Inputs(
        open_features=features(open_ds, open_id, "open-pool features") if OPEN_FEATURES in needs else None,
        open_labels=labels(open_ds),
        client_features=client,
        client_labels=labels(client_ds) if CLIENT_LABELS in needs else None,
        client_size=len(client_ds), num_classes=num_classes, encoder=spec.to_dict(), fleet_features=fleet)
