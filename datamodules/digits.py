"""digits-lite as open pool / client / client test datasets (the paper's domain split)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from ecos_lightning.data import DOMAINS, load_digits_lite, paper_split


class ArrayImageDataset(Dataset):
    """(image uint8 [H, W, 3], label int) items from in-memory arrays; ``domains`` [N] when known."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, domains: np.ndarray | None = None,
                 domain_names: tuple[str, ...] = ()):
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.domains, self.domain_names = domains, tuple(domain_names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


@dataclass(frozen=True)
class DomainSources:
    open: ArrayImageDataset
    client: ArrayImageDataset
    client_test: ArrayImageDataset
    data_id: str


def digits_lite_sources(client_domain: str = "handwritten", seed: int = 0, cache_dir=None) -> DomainSources:
    """Open pool, client train and client test datasets of digits-lite for ``client_domain``."""
    data = load_digits_lite(cache_dir, seed=0)
    split = paper_split(data.domains, data.labels, client_domain, seed=seed)

    def part(indices):
        return ArrayImageDataset(data.images[indices], data.labels[indices], data.domains[indices], DOMAINS)

    return DomainSources(part(split.open_indices), part(split.client_train_indices),
                         part(split.client_test_indices), f"digits-lite-v1/{client_domain}/split-seed{seed}")
