"""The privacy ledger: every release a client made, one delta, one budget, safe under concurrency and crashes.

A ledger is one JSON file (schema below) with a lock file beside it (``<ledger>.lock``). Everything
that reads it to decide on a release holds an exclusive OS lock (``filelock``) from the read, through
the budget check, to the durable write of the new entry, so two processes sharing a ledger can never
both spend the same budget. A release is recorded before its output is written: a crash in between
keeps the charge and loses the output, never the reverse. Writes replace the file atomically and are
flushed to disk, so a kill at any moment leaves the old ledger or the new one.

Schema (version 2; every key required, nothing else allowed)::

    {"version": 2,
     "delta": float in (0, 1),            # fixed when the ledger is created
     "max_epsilon": float > 0 | null,     # the budget: set once, can only be lowered
     "epsilon": float | null,             # composed epsilon of all entries (null = inf; PLD); recomputed on read
     "epsilon_rdp": float | null,         # the same by the RDP (moments) accountant, the paper's; optional on read
     "entries": [{"hash": str, "time": str, "what": [str], "epsilon": float | null,
                  "releases": [release record, ...]}]}

Release records are checked by :func:`ecos_lightning.protocol.privacy.check_release`. One entry per
distinct release (by hash: a message the client wrote, or a proxy artifact); recording a hash already
in the ledger costs nothing more. Anything else on disk is refused with one line, never reset.
Version-1 ledgers (no stored budget) are read as version 2 with no budget and rewritten on the next
release.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from ..files import atomic_write_bytes
from ..protocol.privacy import check_release, epsilon_to_json, releases_epsilon

LEDGER_VERSION = 2
DEFAULT_DELTA = 1e-5
LOCK_TIMEOUT_S = 120.0
MAX_LEDGER_BYTES = 64 << 20
_MAX_HASH_CHARS = 128
_ENTRY_KEYS = {"hash", "time", "what", "epsilon", "releases"}
_V1_KEYS = {"version", "delta", "epsilon", "entries"}


class LedgerBook:
    """A ledger read under its lock: check releases against the budget and record them.

    Only :func:`open_ledger` makes one; it is valid inside that ``with`` block.

    Attributes:
        delta: the delta at which the ledger composes epsilon.
        budget: the stored budget (None: none stored yet).
        max_epsilon: the budget this call obeys: the stored one, or the caller's when lower.
    """

    def __init__(self, path: Path, ledger: dict | None, delta: float | None, max_epsilon: float | None,
                 locked: bool):
        self.path, self.locked = path, locked
        self.exists = ledger is not None
        ledger = ledger or {"delta": DEFAULT_DELTA if delta is None else delta, "max_epsilon": None, "entries": []}
        self.delta = ledger["delta"]
        if delta is not None and delta != self.delta:
            raise ValueError(f"privacy ledger {path} composes epsilon at delta {self.delta:g}, not {delta:g}: a "
                             f"ledger has one delta; pass --delta {self.delta:g} (or no delta)")
        self.budget = ledger["max_epsilon"]
        if max_epsilon is not None and self.budget is not None and max_epsilon > self.budget:
            raise ValueError(f"privacy ledger {path} has a budget of epsilon {self.budget:g}; a call may not raise "
                             f"it to {max_epsilon:g} (a budget can only be lowered)")
        self.max_epsilon = self.budget if max_epsilon is None else max_epsilon
        self.entries = ledger["entries"]

    @property
    def releases(self) -> list[dict]:
        return [r for entry in self.entries for r in entry["releases"]]

    @property
    def epsilon(self) -> float:
        """Composed epsilon of everything recorded, at :attr:`delta` (PLD)."""
        return releases_epsilon(self.releases, self.delta)

    @property
    def epsilon_rdp(self) -> float:
        """Composed epsilon of everything recorded, at :attr:`delta`, by the RDP accountant (the paper's)."""
        return releases_epsilon(self.releases, self.delta, "rdp")

    def knows(self, release_hash: str) -> bool:
        return any(entry["hash"] == release_hash for entry in self.entries)

    def check(self, releases: list[dict]) -> float:
        """Composed epsilon once ``releases`` are added; ``ValueError`` when it passes the budget."""
        after = releases_epsilon(self.releases + list(releases), self.delta)
        if self.max_epsilon is not None and after > self.max_epsilon:
            raise ValueError(f"privacy ledger {self.path}: this release would raise the composed epsilon from "
                             f"{_text(self.epsilon)} to {_text(after)} > budget {self.max_epsilon:g} at delta "
                             f"{self.delta:g}; refused, nothing was released (raise the noise multiplier, or "
                             "reuse a release already recorded)")
        return after

    def record(self, release_hash: str, releases: list[dict]) -> tuple[float, bool]:
        """Add ``releases`` under ``release_hash`` (durably) unless already there: (composed epsilon, known).

        ``ValueError``, nothing written, when the composed epsilon would pass the budget (for a known
        hash: when the ledger is already past this call's budget).
        """
        _check_hash(release_hash, "release hash")
        if not releases:
            raise ValueError("a ledger entry needs at least one release record")
        releases = [check_release(r) for r in releases]
        if self.knows(release_hash):
            return self.check([]), True
        after = self.check(releases)
        entry = {"hash": release_hash, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "what": [r.get("what", "") for r in releases],
                 "epsilon": epsilon_to_json(releases_epsilon(releases, self.delta)), "releases": releases}
        self.entries = self.entries + [entry]
        if self.budget is None:
            self.budget = self.max_epsilon
        self._write()
        return after, False

    def set_budget(self, max_epsilon: float) -> None:
        """Store ``max_epsilon`` as the budget (creating the ledger); it may lower, never raise, a stored one."""
        if not (isinstance(max_epsilon, numbers.Real) and 0 < max_epsilon < math.inf):
            raise ValueError(f"max_epsilon must be a finite number > 0, got {max_epsilon!r}")
        if self.budget is not None and max_epsilon > self.budget:
            raise ValueError(f"privacy ledger {self.path} has a budget of epsilon {self.budget:g}; it can only be "
                             f"lowered, not raised to {max_epsilon:g}")
        if self.epsilon > max_epsilon:
            raise ValueError(f"privacy ledger {self.path} has already spent epsilon {_text(self.epsilon)} > "
                             f"{max_epsilon:g}: choose a budget of at least that")
        self.budget = self.max_epsilon = float(max_epsilon)
        self._write()

    def _write(self) -> None:
        if not self.locked:
            raise RuntimeError("a ledger snapshot is read-only: record through open_ledger()")
        ledger = _validate({"version": LEDGER_VERSION, "delta": self.delta, "max_epsilon": self.budget,
                            "epsilon": epsilon_to_json(self.epsilon), "epsilon_rdp": epsilon_to_json(self.epsilon_rdp),
                            "entries": self.entries})
        atomic_write_bytes(self.path, json.dumps(ledger, indent=2, allow_nan=False).encode(), durable=True)
        self.exists = True


@contextmanager
def open_ledger(path: str | Path, delta: float | None = None,
                max_epsilon: float | None = None) -> Iterator[LedgerBook]:
    """Hold the ledger's exclusive lock and yield its validated :class:`LedgerBook`.

    ``delta`` must equal the ledger's own (None: the ledger's, or 1e-5 for a new one). ``max_epsilon``
    may lower the stored budget for this call, never raise it; with no stored budget it becomes the
    budget at the next write. ``ValueError`` (one line) for a corrupt ledger, a lock held too long,
    or a conflicting delta or budget.
    """
    path = ledger_path(path)
    _check_arguments(delta, max_epsilon)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(path), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(f"privacy ledger {path} has been locked by another process for {LOCK_TIMEOUT_S:.0f} s; "
                         "wait for it to finish and try again") from None
    try:
        yield LedgerBook(path, _read(path), delta, max_epsilon, locked=True)
    finally:
        lock.release()


def ledger_snapshot(path: str | Path, delta: float | None = None, max_epsilon: float | None = None) -> LedgerBook:
    """A read-only :class:`LedgerBook` of the ledger as it is now, without the lock and without creating files.

    For a check before expensive work (nothing is read or written when it refuses); the binding check
    is the one :meth:`LedgerBook.record` makes under the lock.
    """
    path = ledger_path(path)
    _check_arguments(delta, max_epsilon)
    return LedgerBook(path, _read(path), delta, max_epsilon, locked=False)


def ledger_path(path: str | Path) -> Path:
    """The ledger's one real path: symlinks resolved, so every name of a ledger shares one lock."""
    return Path(os.path.realpath(path))


def lock_path(path: str | Path) -> Path:
    """The lock file beside the ledger at ``path``."""
    path = ledger_path(path)
    return path.with_name(path.name + ".lock")


def record_releases(path: str | Path, release_hash: str, releases: list[dict], delta: float | None = None,
                    max_epsilon: float | None = None) -> tuple[float, int, bool]:
    """Check and record ``releases`` in one locked step: (composed epsilon, number of entries, already known)."""
    with open_ledger(path, delta, max_epsilon) as book:
        epsilon, known = book.record(release_hash, releases)
        return epsilon, len(book.entries), known


def read_ledger(path: str | Path) -> dict:
    """A validated snapshot of the ledger at ``path`` (an empty one when absent); ``ValueError`` if corrupt."""
    ledger = _read(Path(path))
    if ledger is None:
        return {"version": LEDGER_VERSION, "delta": DEFAULT_DELTA, "max_epsilon": None, "epsilon": 0.0,
                "epsilon_rdp": 0.0, "entries": []}
    return ledger


def ledger_epsilon(path: str | Path, delta: float | None = None, accountant: str = "pld") -> float:
    """Composed epsilon of every release in the ledger at ``path`` (0 when absent), at its delta or ``delta``,
    by ``accountant`` (pld | rdp)."""
    ledger = read_ledger(path)
    releases = [r for entry in ledger["entries"] for r in entry["releases"]]
    return releases_epsilon(releases, ledger["delta"] if delta is None else delta, accountant)


def _read(path: Path) -> dict | None:
    """The validated ledger (version 2 form), or None when the file does not exist."""
    try:
        if not path.exists():
            return None
        if not path.is_file() or path.stat().st_size > MAX_LEDGER_BYTES:
            raise ValueError(f"not a regular file of at most {MAX_LEDGER_BYTES} bytes")
        if path.stat().st_nlink > 1:
            raise ValueError("the file has other hard links, which would bypass its lock")
        ledger = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
        ledger = _validate(ledger)
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"privacy ledger {path} is corrupt or unreadable ({str(exc).splitlines()[0]}); repair it "
                         "or move it aside (a privacy ledger is never reset automatically)") from None
    return ledger


def _validate(ledger) -> dict:
    if not isinstance(ledger, dict):
        raise ValueError("the ledger must be a JSON object")
    version = ledger.get("version")
    if version == 1 and isinstance(version, int) and not isinstance(version, bool):
        if not set(ledger) <= _V1_KEYS or "entries" not in ledger:
            raise ValueError(f"a version 1 ledger has the keys {sorted(_V1_KEYS)}, got {sorted(ledger)}")
        ledger = {**ledger, "version": LEDGER_VERSION, "max_epsilon": None}
        ledger.setdefault("delta", DEFAULT_DELTA)
        ledger.setdefault("epsilon", None)
    elif version != LEDGER_VERSION or isinstance(version, bool):
        raise ValueError(f"unknown version {version!r}")
    keys = {"version", "delta", "max_epsilon", "epsilon", "entries"}
    if not keys <= set(ledger) <= keys | {"epsilon_rdp"}:
        raise ValueError(f"keys must be {sorted(keys)} (and optionally 'epsilon_rdp'), got {sorted(ledger)}")
    _check_delta(ledger["delta"], "delta")
    budget = ledger["max_epsilon"]
    if budget is not None and not (_real(budget) and 0 < budget < math.inf):
        raise ValueError(f"max_epsilon must be null or a finite number > 0, got {budget!r}")
    if not isinstance(ledger["entries"], list):
        raise ValueError("entries must be a list")
    hashes = set()
    for i, entry in enumerate(ledger["entries"]):
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            raise ValueError(f"entry {i} must be an object with keys {sorted(_ENTRY_KEYS)}")
        _check_hash(entry["hash"], f"entry {i} hash")
        if entry["hash"] in hashes:
            raise ValueError(f"entry {i} repeats hash {entry['hash']!r}")
        hashes.add(entry["hash"])
        if not isinstance(entry["time"], str) or not isinstance(entry["what"], list):
            raise ValueError(f"entry {i}: time must be a string and what a list")
        if not isinstance(entry["releases"], list) or not entry["releases"]:
            raise ValueError(f"entry {i}: releases must be a non-empty list")
        for release in entry["releases"]:
            check_release(release)
    return ledger


def _check_arguments(delta, max_epsilon) -> None:
    if delta is not None:
        _check_delta(delta, "delta")
    if max_epsilon is not None and not (_real(max_epsilon) and max_epsilon > 0):
        raise ValueError(f"max_epsilon must be a finite number > 0, got {max_epsilon!r}")


def _check_delta(delta, name: str) -> None:
    if not (_real(delta) and 0 < delta < 1):
        raise ValueError(f"{name} must be a number in (0, 1), got {delta!r}")


def _check_hash(value, name: str) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_HASH_CHARS or not value.isalnum():
        raise ValueError(f"{name} must be 1 to {_MAX_HASH_CHARS} letters or digits, got {value!r:.80}")


def _real(value) -> bool:
    try:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an integer beyond the float range
        return False


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name} is not allowed")


def _text(epsilon: float) -> str:
    return "inf (not private)" if math.isinf(epsilon) else f"{epsilon:.3f}"
