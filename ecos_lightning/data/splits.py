"""Client / open-source splits of a multi-domain dataset (the ECOS protocol).

One domain plays the client. A stratified ``client_fraction`` of it is the
client's private data, which is further split (stratified) into the client's
training set and a held-out test set. Everything else -- the rest of the client
domain and every other domain -- is the open-source pool that ECOS samples
from.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .digits_lite import DOMAINS

__all__ = ["DomainSplit", "paper_split"]


@dataclass(frozen=True, eq=False)
class DomainSplit:
    """Index sets of one client/open split; all ``int64``, sorted, disjoint.

    Attributes:
        open_indices: the open-source pool (rest of the client domain and
            every other domain).
        client_train_indices: the client's private training data.
        client_test_indices: the client's held-out test data.
        client_domain: name of the client domain.
    """

    open_indices: np.ndarray
    client_train_indices: np.ndarray
    client_test_indices: np.ndarray
    client_domain: str

    @property
    def client_indices(self) -> np.ndarray:
        """All client data (train and test), sorted."""
        return np.union1d(self.client_train_indices, self.client_test_indices).astype(np.int64)


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in the open interval (0, 1), got {value!r}")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in the open interval (0, 1), got {value}")
    return value


def _resolve_domain(client_domain: int | str, domain_names: Sequence[str]) -> int:
    valid = ", ".join(f"{i}={name!r}" for i, name in enumerate(domain_names))
    if isinstance(client_domain, str):
        if client_domain not in domain_names:
            raise ValueError(f"client_domain {client_domain!r} is unknown; valid values: {valid}")
        return list(domain_names).index(client_domain)
    if isinstance(client_domain, (bool, np.bool_)) or not isinstance(client_domain, (int, np.integer)):
        raise ValueError(f"client_domain must be a domain name or id, got {client_domain!r}; valid values: {valid}")
    if not 0 <= int(client_domain) < len(domain_names):
        raise ValueError(f"client_domain {int(client_domain)} is out of range; valid values: {valid}")
    return int(client_domain)


def _take(n: int, fraction: float) -> int:
    """``round(n * fraction)`` with halves rounded up."""
    return int(np.floor(n * fraction + 0.5))


def paper_split(
    domains: np.ndarray,
    labels: np.ndarray,
    client_domain: int | str,
    domain_names: Sequence[str] = DOMAINS,
    seed: int = 0,
    client_fraction: float = 0.5,
    test_fraction: float = 0.3,
) -> DomainSplit:
    """Split a multi-domain dataset into open pool, client train and client test.

    For every class of the client domain, ``round(client_fraction * count)``
    randomly chosen samples go to the client; of those,
    ``round(test_fraction * client_count)`` become client test data and the
    rest client training data. All remaining samples form the open pool.

    Args:
        domains: ``[N]`` integer domain ids (indices into ``domain_names``).
        labels: ``[N]`` integer class labels.
        client_domain: the client domain, by name or id.
        domain_names: names of the domains.
        seed: non-negative integer seed; the split is a function of
            ``(domains, labels, client_domain, seed, fractions)``.
        client_fraction: fraction of the client domain given to the client.
        test_fraction: fraction of the client's data held out for testing.

    Returns:
        A :class:`DomainSplit` whose three index sets are sorted, disjoint and
        cover ``range(N)``.

    Raises:
        ValueError: on an unknown ``client_domain``, fractions outside
            ``(0, 1)``, a bad ``seed``, mismatched ``domains``/``labels``, or
            an empty client domain.
    """
    domain_names = tuple(str(d) for d in domain_names)
    if len(domain_names) == 0:
        raise ValueError("domain_names must not be empty")
    domains = np.asarray(domains)
    labels = np.asarray(labels)
    if domains.ndim != 1 or labels.ndim != 1 or domains.shape != labels.shape:
        raise ValueError(
            f"domains and labels must be 1-D arrays of equal length, got shapes {domains.shape} and {labels.shape}"
        )
    for name, arr in (("domains", domains), ("labels", labels)):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    client_fraction = _check_fraction("client_fraction", client_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    domain_id = _resolve_domain(client_domain, domain_names)

    in_domain = np.flatnonzero(domains == domain_id)
    if in_domain.size == 0:
        raise ValueError(f"client_domain {domain_names[domain_id]!r} (id {domain_id}) has no samples")

    rng = np.random.default_rng([int(seed), domain_id])
    train_parts, test_parts = [], []
    for cls in np.unique(labels[in_domain]):
        members = in_domain[labels[in_domain] == cls]
        members = members[rng.permutation(members.size)]
        client = members[: _take(members.size, client_fraction)]
        n_test = _take(client.size, test_fraction)
        test_parts.append(client[:n_test])
        train_parts.append(client[n_test:])

    client_train = np.sort(np.concatenate(train_parts)).astype(np.int64)
    client_test = np.sort(np.concatenate(test_parts)).astype(np.int64)
    is_open = np.ones(domains.size, dtype=bool)
    is_open[client_train] = False
    is_open[client_test] = False
    return DomainSplit(
        open_indices=np.flatnonzero(is_open).astype(np.int64),
        client_train_indices=client_train,
        client_test_indices=client_test,
        client_domain=domain_names[domain_id],
    )
