"""Feature extraction with an on-disk cache keyed by the encoder spec and the data's identity."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .encoders import build_encoder, extract_features
from .files import atomic_write_bytes, stable_hash
from .protocol.encoder_spec import EncoderSpec


def cached_features(spec: EncoderSpec, data, data_id: str, cache_dir: str | os.PathLike,
                    desc: str = "features", batch_size: int = 256, progress: bool = True,
                    device=None) -> np.ndarray:
    """Encoder features float32 [N, d] of ``data`` (see ``extract_features``), cached on disk.

    ``data_id`` must identify the data (e.g. dataset name, version, seed and subset); the cache
    file is ``<cache_dir>/features-<hash of spec and data_id>.npy``, written atomically.
    """
    path = Path(cache_dir) / f"features-{stable_hash([spec.to_dict(), data_id])}.npy"
    if path.exists():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    encoder = build_encoder(spec, device=device)
    features = extract_features(encoder, data, batch_size=batch_size, progress=progress, desc=desc)
    atomic_save_npy(path, features)
    return features


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` (no pickle) through :func:`atomic_write_bytes`."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(Path(path), buffer.getvalue())
