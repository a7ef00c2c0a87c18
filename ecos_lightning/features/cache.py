"""Feature extraction into an on-disk store keyed by the encoder spec and the data's identity."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch.utils.data import Subset

from ..encoders import build_encoder, encoder_feature_dim, extract_features
from .store import DEFAULT_CHUNK_ROWS, FeatureStore
from ..files import stable_hash
from ..protocol.encoder_spec import EncoderSpec


def feature_path(spec: EncoderSpec, data_id: str, cache_dir: str | os.PathLike) -> Path:
    """Where the features of ``data_id`` by ``spec`` live: ``<cache_dir>/features-<hash>.npy``."""
    return Path(cache_dir) / f"features-{stable_hash([spec.to_dict(), data_id])}.npy"


def cached_features(spec: EncoderSpec, data, data_id: str, cache_dir: str | os.PathLike,
                    desc: str = "features", batch_size: int = 256, progress: bool = True,
                    device=None, rank: int = 0, world_size: int = 1,
                    chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray | None:
    """Encoder features float32 [N, d] of ``data`` (see ``extract_features``), memory-mapped from the
    :class:`~ecos_lightning.features.store.FeatureStore` at :func:`feature_path`.

    ``data_id`` must identify the data (e.g. dataset name, version, seed and subset). Extraction runs chunk
    by chunk (``chunk_rows`` rows, a multiple of ``batch_size``) and resumes at the first unfinished chunk
    after an interruption. With ``world_size`` > 1 this process extracts only the chunks of rank ``rank``
    and returns None until every rank has finished its chunks (the caller waits, e.g. at a barrier, then
    calls again); the encoder is built only when a chunk is missing.
    """
    path = feature_path(spec, data_id, cache_dir)
    store = FeatureStore(path, len(data), encoder_feature_dim(spec), chunk_rows)
    if store.complete():
        try:
            return store.read()
        except (OSError, ValueError):
            pass
    if path.exists():
        store.drop_untrusted()  # a matrix without its record, or unreadable: extracted again
    if chunk_rows % batch_size:
        raise ValueError(f"chunk_rows ({chunk_rows}) must be a multiple of batch_size ({batch_size}), so chunks "
                         "run the batches one pass would")
    encoder = None

    def compute(rows: range) -> np.ndarray:
        nonlocal encoder
        if encoder is None:
            encoder = build_encoder(spec, device=device)
        part = data[rows.start:rows.stop] if isinstance(data, np.ndarray) or hasattr(data, "ndim") else \
            Subset(data, rows)
        where = [f"chunk {rows.start // chunk_rows + 1}/{store.num_chunks}"] * (store.num_chunks > 1)
        where += [f"rank {rank}/{world_size}"] * (world_size > 1)
        label = f"{desc} [{', '.join(where)}]" if where else desc
        return extract_features(encoder, part, batch_size=batch_size, progress=progress, desc=label)

    return store.read() if store.fill(compute, rank, world_size) else None

