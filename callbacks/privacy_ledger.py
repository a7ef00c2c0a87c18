"""PrivacyLedger: a JSON record of every proxy release a client made, with a composed-epsilon budget.

The ledger holds one entry per distinct proxy artifact (by its hash): rerunning or resuming a run on
the same artifact reuses releases already made and costs nothing more. The composed epsilon of all
entries (dp-accounting PLD, :func:`releases_epsilon`) must stay within ``max_epsilon``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from ecos_lightning.features import atomic_write_bytes
from ecos_lightning.protocol.privacy import release_event, releases_epsilon
from ecos_lightning.protocol.validation import probability

LEDGER_VERSION = 1


class PrivacyLedger(pl.Callback):
    """Records the datamodule's proxy releases at ``setup("fit")`` and enforces a budget across runs.

    Args:
        path: the ledger file; default ``<trainer.log_dir>/privacy_ledger.json`` (one per run: pass a
            shared path to account for several runs on the same client data).
        max_epsilon: refuse (``ValueError``, nothing written) a run whose recorded releases together
            with all earlier ones would compose to more than this, at ``delta``.
        delta: the delta at which epsilon is composed.

    The check runs after ``prepare_data``, so it guards training and the ledger; the datamodule's own
    ``max_epsilon`` guards a single run's query before it is made.
    """

    def __init__(self, path: str | None = None, max_epsilon: float | None = None, delta: float = 1e-5):
        if max_epsilon is not None and not max_epsilon > 0:
            raise ValueError(f"max_epsilon must be > 0, got {max_epsilon!r}")
        self.path = path
        self.max_epsilon = max_epsilon
        self.delta = probability(delta, "delta")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        proxy = getattr(trainer.datamodule, "proxy", None)
        if proxy is None:
            rank_zero_warn("PrivacyLedger: the datamodule has no proxy; nothing is recorded")
            return
        if proxy.get("hash") is None or proxy.get("releases") is None:
            raise ValueError("PrivacyLedger: the datamodule's proxy has no 'hash' or 'releases' to record")
        path = Path(self.path or Path(trainer.log_dir or trainer.default_root_dir) / "privacy_ledger.json")
        error = None
        if trainer.is_global_zero:  # one writer; every rank raises the same refusal
            try:
                self.record(path, proxy["hash"], proxy["releases"])
            except ValueError as exc:
                error = str(exc)
        error = trainer.strategy.broadcast(error)
        if error:
            raise ValueError(error)

    def record(self, path: str | Path, artifact_hash: str, releases: list[dict]) -> float:
        """Add an artifact's releases to the ledger at ``path`` unless already there; return the composed epsilon.

        Raises ``ValueError`` (and writes nothing) when the composed epsilon would exceed ``max_epsilon``.
        """
        path = Path(path)
        ledger = read_ledger(path)
        known = any(entry["hash"] == artifact_hash for entry in ledger["entries"])
        entries = ledger["entries"] + ([] if known else [_entry(artifact_hash, releases, self.delta)])
        epsilon = releases_epsilon([r for entry in entries for r in entry["releases"]], self.delta)
        if self.max_epsilon is not None and epsilon > self.max_epsilon:
            raise ValueError(f"privacy ledger {path}: composed epsilon {epsilon:.3g} at delta={self.delta:g} "
                             f"would exceed max_epsilon={self.max_epsilon:g}; reuse a recorded proxy, raise "
                             "the noise multiplier, or raise max_epsilon")
        if not known:
            ledger = {"version": LEDGER_VERSION, "delta": self.delta, "epsilon": _json_float(epsilon),
                      "entries": entries}
            atomic_write_bytes(path, json.dumps(ledger, indent=2).encode())
        rank_zero_info(f"privacy ledger {path}: {len(entries)} release set(s), composed epsilon "
                       f"{epsilon:.3g} at delta={self.delta:g}" + (" (this proxy was already recorded)" * known))
        return epsilon


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
            "what": [r.get("what", "") for r in releases], "epsilon": _json_float(releases_epsilon(releases, delta)),
            "releases": releases}


def _json_float(value: float):
    return None if value == float("inf") else value
