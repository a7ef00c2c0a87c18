"""Client / open-source splits of a multi-domain dataset (the ECOS protocol), by the paper's two rules.

One domain plays the client. :data:`SPLIT_RULES`:

``domainnet``
    a stratified ``client_fraction`` (0.5) of the client domain's training data is the client's; the
    rest of it and every other domain's training data form the open-source pool.
``digits``
    all of the client domain's training data is the client's; the pool holds only the other domains'
    training data.

The client is evaluated on its domain's official test split (``test_mask``); other domains' official
test items belong to no set, so no test image of any domain enters a pool. A dataset without an
official test split (``test_mask=None``: image folders, digits-lite) holds out, per class, a stratified
``test_fraction`` of the client's share as its test data (a share so small that no class holds out an
item is refused); every item of every other domain is then pool. Per class the client domain's items are
shuffled by ``numpy.random.default_rng([seed, domain id])``, so a seed gives the same split on every
machine for the same data in the same order.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .digits_lite import DOMAINS

__all__ = ["SPLIT_RULES", "DomainSplit", "paper_split"]

#: The paper's split rules (see the module docstring).
SPLIT_RULES = ("domainnet", "digits")


@dataclass(frozen=True, eq=False)
class DomainSplit:
    """Index sets of one client/open split; all ``int64``, sorted, disjoint.

    Attributes:
        open_indices: the open-source pool (see the rules in the module
            docstring).
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


def _no_test_items(name: str, labels: np.ndarray, share: float, test_fraction: float, rule: str) -> str:
    """The error for a client share too small to hold out one test item of any class (``labels``: the
    client domain's items)."""
    per_class = np.unique(labels, return_counts=True)[1]
    client = [_take(int(n), share) for n in per_class]
    need = next(n for n in range(1, 10**6) if _take(_take(n, share), test_fraction) >= 1)
    other = ", or use rule 'digits' (source-name key rule=digits: the whole domain to the client)" \
        if rule == "domainnet" else ""
    return (f"client_domain {name!r} leaves the client no test items: its {sum(client)} items (at most "
            f"{max(client)} per class, of {labels.size} in the domain) hold out round({test_fraction:g} x count) = 0 "
            f"per class; give each class at least {need} images in domain {name!r}{other}")


def paper_split(
    domains: np.ndarray,
    labels: np.ndarray,
    client_domain: int | str,
    domain_names: Sequence[str] = DOMAINS,
    seed: int = 0,
    client_fraction: float = 0.5,
    test_fraction: float = 0.3,
    rule: str = "domainnet",
    test_mask: np.ndarray | None = None,
) -> DomainSplit:
    """Split a multi-domain dataset into open pool, client train and client test by ``rule``.

    For every class of the client domain's training items, ``round(share *
    count)`` randomly chosen ones go to the client, where ``share`` is
    ``client_fraction`` (rule ``domainnet``) or 1 (rule ``digits``). Without
    ``test_mask``, ``round(test_fraction * client_count)`` of those become
    client test data and the rest client training data; with it, the client
    domain's official test items are the client test data.

    Args:
        domains: ``[N]`` integer domain ids (indices into ``domain_names``).
        labels: ``[N]`` integer class labels.
        client_domain: the client domain, by name or id.
        domain_names: names of the domains.
        seed: non-negative integer seed; the split is a function of
            ``(domains, labels, client_domain, seed, fractions)``.
        client_fraction: fraction of the client domain given to the client
            (rule ``domainnet``).
        test_fraction: fraction of the client's data held out for testing
            (without ``test_mask``).
        rule: one of :data:`SPLIT_RULES`.
        test_mask: ``[N]`` bool, True for the items of each domain's official
            test split; None when there is none.

    Returns:
        A :class:`DomainSplit` whose three index sets are sorted and disjoint;
        they cover ``range(N)`` except other domains' official test items.

    Raises:
        ValueError: on an unknown ``client_domain`` or ``rule``, fractions
            outside ``(0, 1)``, a bad ``seed``, mismatched arrays, an empty
            client domain, a client domain without official test items, a
            client share too small to hold out any test item, or an empty pool.
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

    if rule not in SPLIT_RULES:
        raise ValueError(f"rule must be one of {SPLIT_RULES}, got {rule!r}")
    if test_mask is not None:
        test_mask = np.asarray(test_mask)
        if test_mask.dtype != bool or test_mask.shape != domains.shape:
            raise ValueError(f"test_mask must be a bool array of shape {domains.shape}, got {test_mask.dtype} "
                             f"{test_mask.shape}")
    name = domain_names[domain_id]
    in_domain = np.flatnonzero(domains == domain_id)
    if in_domain.size == 0:
        raise ValueError(f"client_domain {name!r} (id {domain_id}) has no samples")
    unused = np.zeros(domains.size, dtype=bool)
    if test_mask is not None:
        test_parts = [in_domain[test_mask[in_domain]]]
        if test_parts[0].size == 0:
            raise ValueError(f"client_domain {name!r} has no items in its official test split")
        in_domain = in_domain[~test_mask[in_domain]]
        unused = test_mask & (domains != domain_id)
    else:
        test_parts = []

    share = client_fraction if rule == "domainnet" else 1.0
    rng = np.random.default_rng([int(seed), domain_id])
    train_parts = []
    for cls in np.unique(labels[in_domain]):
        members = in_domain[labels[in_domain] == cls]
        members = members[rng.permutation(members.size)]
        client = members[: _take(members.size, share)]
        n_test = 0 if test_mask is not None else _take(client.size, test_fraction)
        test_parts.append(client[:n_test])
        train_parts.append(client[n_test:])

    client_train = np.sort(np.concatenate(train_parts or [np.zeros(0, np.int64)])).astype(np.int64)
    client_test = np.sort(np.concatenate(test_parts)).astype(np.int64)
    if client_train.size == 0:
        raise ValueError(f"client_domain {name!r} has no training items for the client")
    if client_test.size == 0:
        raise ValueError(_no_test_items(name, labels[in_domain], share, test_fraction, rule))
    is_open = ~unused
    is_open[client_train] = False
    is_open[client_test] = False
    if not is_open.any():
        raise ValueError(f"rule {rule!r} leaves the open pool empty for client_domain {name!r}: the data needs "
                         "another domain (or use rule 'domainnet')")
    return DomainSplit(
        open_indices=np.flatnonzero(is_open).astype(np.int64),
        client_train_indices=client_train,
        client_test_indices=client_test,
        client_domain=name,
    )
