"""A JSON privacy ledger: every release a client made, with the epsilon composed by dp-accounting.

One entry per distinct release set (by hash: a proxy artifact, or a message the client wrote);
recording a hash already in the ledger costs nothing more. No Lightning needed: the client's
commands and the training callback share it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from .features import atomic_write_bytes
from .protocol.privacy import epsilon_to_json, release_event, releases_epsilon

LEDGER_VERSION = 1


def record_releases(path: str | Path, release_hash: str, releases: list[dict], delta: float,
                    max_epsilon: float | None = None) -> tuple[float, int, bool]:
    """Add ``releases`` under ``release_hash`` unless already recorded.

    Returns (composed epsilon, number of entries, whether the hash was already there). Raises
    ``ValueError`` and writes nothing when the composed epsilon would exceed ``max_epsilon``.
    """
    path = Path(path)
    ledger = read_ledger(path)
    known = any(entry["hash"] == release_hash for entry in ledger["entries"])
    entries = ledger["entries"] + ([] if known else [_entry(release_hash, releases, delta)])
    epsilon = releases_epsilon([r for entry in entries for r in entry["releases"]], delta)
    if max_epsilon is not None and epsilon > max_epsilon:
        raise ValueError(f"privacy ledger {path}: composed epsilon {epsilon:.3g} at delta={delta:g} "
                         f"would exceed max_epsilon={max_epsilon:g}; reuse a recorded proxy, raise "
                         "the noise multiplier, or raise max_epsilon")
    if not known:
        ledger = {"version": LEDGER_VERSION, "delta": delta, "epsilon": epsilon_to_json(epsilon), "entries": entries}
        atomic_write_bytes(path, json.dumps(ledger, indent=2).encode())
    return epsilon, len(entries), known

def read_ledger(path: str | Path) -> dict:
    """The ledger at ``path`` (an empty one when the file does not exist); ``ValueError`` if it is corrupt."""
    path = Path(path)
    if not path.exists():
        return {"version": LEDGER_VERSION, "entries": []}
    try:
        ledger = json.loads(path.read_text())
        if ledger.get("version") != LEDGER_VERSION:
            raise ValueError(f"unknown version {ledger.get('version')!r}")
        for entry in ledger["entries"]:
            if not isinstance(entry["hash"], str):
                raise ValueError("an entry has no artifact hash")
            for release in entry["releases"]:
                release_event(release)  # raises on a malformed release record
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"privacy ledger {path} is corrupt or unreadable ({exc}); repair or move it aside "
                         "(a privacy ledger is never reset automatically)") from None
    return ledger


def ledger_epsilon(path: str | Path, delta: float = 1e-5) -> float:
    """Composed epsilon at ``delta`` of every release recorded in the ledger at ``path`` (0 when absent)."""
    return releases_epsilon([r for entry in read_ledger(path)["entries"] for r in entry["releases"]], delta)


def _entry(artifact_hash: str, releases: list[dict], delta: float) -> dict:
    return {"hash": artifact_hash, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "what": [r.get("what", "") for r in releases], "epsilon": epsilon_to_json(releases_epsilon(releases, delta)),
            "releases": releases}
