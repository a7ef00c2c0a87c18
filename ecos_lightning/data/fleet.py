"""A fleet split of a multi-domain dataset: many small devices, each holding a few images of one domain.

``fleet_split`` gives each group of devices (a domain and a device count) ``per_device`` images of its
domain, shuffled by ``numpy.random.default_rng([seed, domain id])``, and holds out, next in the same order,
``test_fraction`` of the group's images (train plus test) as its test images. Everything no device
holds or tests on is the open pool. The test set is the union of the devices' held-out images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["FleetSplit", "fleet_split"]


@dataclass(frozen=True, eq=False)
class FleetSplit:
    """open_indices: int64 [N_open], sorted. devices: one int64 [per_device] index array per device, in group
    order. test_indices: int64 [N_test], sorted: the devices' held-out images. device_domains: each device's
    domain name."""

    open_indices: np.ndarray
    devices: tuple[np.ndarray, ...]
    test_indices: np.ndarray
    device_domains: tuple[str, ...]


def fleet_split(domains: np.ndarray, groups: Sequence[tuple[str, int]], domain_names: Sequence[str],
                per_device: int = 20, seed: int = 0, test_fraction: float = 0.3) -> FleetSplit:
    """The split of items with domain ids ``domains`` [N] for ``groups`` ((domain name, devices), ...)."""
    domains = np.asarray(domains)
    names = tuple(domain_names)
    if isinstance(per_device, bool) or not isinstance(per_device, int) or per_device < 1:
        raise ValueError(f"images per device must be a positive integer, got {per_device!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    seen = [name for name, _ in groups]
    if not groups or len(set(seen)) != len(seen):
        raise ValueError(f"a fleet names each domain once, at least one, got {seen}")
    devices, tests, device_domains = [], [], []
    for name, count in groups:
        if name not in names:
            raise ValueError(f"fleet domain {name!r} is unknown; valid: {', '.join(names)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"fleet domain {name!r}: the device count must be a positive integer, got {count!r}")
        domain_id = names.index(name)
        items = np.flatnonzero(domains == domain_id)
        items = items[np.random.default_rng([seed, domain_id]).permutation(items.size)]
        train = count * per_device
        test = int(np.floor(train * test_fraction / (1.0 - test_fraction) + 0.5))
        if train + test > items.size:
            raise ValueError(f"fleet domain {name!r} holds {items.size} images, fewer than {count} devices x "
                             f"{per_device} images plus {test} held out: use fewer devices or fewer images each")
        devices += [np.sort(items[i * per_device:(i + 1) * per_device]).astype(np.int64) for i in range(count)]
        tests.append(items[train:train + test])
        device_domains += [name] * count
    taken = np.concatenate(devices + tests)
    open_indices = np.setdiff1d(np.arange(domains.size), taken).astype(np.int64)
    return FleetSplit(open_indices, tuple(devices), np.sort(np.concatenate(tests)).astype(np.int64),
                      tuple(device_domains))
