"""PrivacyLedger: a JSON record of every proxy release a client made, with a composed-epsilon budget.

The ledger (:mod:`ecos_lightning.client.ledger`) holds one entry per distinct release (by the hash of what the
client released, or of the proxy artifact): rerunning or resuming a run on the same proxy reuses
releases already made and costs nothing more.
The composed epsilon of all entries (dp-accounting PLD) must stay within the ledger's budget. Check and
record are one step under an exclusive file lock, so concurrent runs sharing a ledger cannot overspend.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from ecos_lightning.frameworks import bases
from ecos_lightning.client.ledger import ledger_epsilon, open_ledger, read_ledger
from ecos_lightning.protocol.validation import probability

__all__ = ["PrivacyLedger", "ledger_epsilon", "read_ledger"]


class PrivacyLedger(*bases("Callback")):
    """Records the datamodule's proxy releases when fitting starts and enforces a budget across runs.

    Args:
        path: the ledger file; default ``<trainer.log_dir>/privacy_ledger.json`` (one per run: pass a
            shared path to account for several runs on the same client data).
        max_epsilon: refuse (``ValueError``, nothing written) a run whose recorded releases together
            with all earlier ones would compose to more than this. A ledger stores its budget: this may
            lower it for the run, never raise it; with no stored budget it becomes the ledger's budget.
            None: the data module's ``max_epsilon`` (set it once, there).
        delta: the delta at which epsilon is composed; a ledger has one, fixed when it is created.
            None: the proxy's own delta (the data module's). A value that disagrees with the data
            module's ``delta`` or ``max_epsilon`` is refused: each is set once.

    The check runs at ``on_fit_start``, after a checkpoint's proxy is restored and before the first
    training step, so it guards training and the ledger; the datamodule's own ``max_epsilon`` guards a
    single run's query before it is made.
    """

    def __init__(self, path: str | None = None, max_epsilon: float | None = None, delta: float | None = None):
        if max_epsilon is not None and not max_epsilon > 0:
            raise ValueError(f"max_epsilon must be > 0, got {max_epsilon!r}")
        self.path = path
        self.max_epsilon = max_epsilon
        self.delta = None if delta is None else probability(delta, "delta")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        proxy = getattr(trainer.datamodule, "proxy", None)
        if proxy is None:
            rank_zero_warn("PrivacyLedger: the datamodule has no proxy; nothing is recorded")
            return
        if not proxy.releases:
            from_file = getattr(trainer.datamodule, "hparams", {}).get("proxy_file")
            rank_zero_info(f"PrivacyLedger: the proxy file {from_file} was released by a real client, whose own "
                           "ledger records it; nothing is recorded here" if from_file else
                           "PrivacyLedger: this run's sampler and label source release nothing of the client's "
                           "data; nothing is recorded")
            return
        if proxy.release_hash is None and proxy.hash is None:
            raise ValueError("PrivacyLedger: the datamodule's proxy has no 'release_hash' or 'hash' to record it by")
        delta, max_epsilon = self._settings(proxy.delta, getattr(trainer.datamodule, "hparams", {}).get("max_epsilon"))
        path = Path(self.path or Path(trainer.log_dir or trainer.default_root_dir) / "privacy_ledger.json")
        error = None
        if trainer.is_global_zero:  # one writer; every rank raises the same refusal
            try:
                # keyed on what was released: a new release of changed client data is never taken for an old one
                self.record(path, proxy.release_hash or proxy.hash, proxy.releases, delta, max_epsilon)
            except ValueError as exc:
                error = str(exc)
        error = trainer.strategy.broadcast(error)
        if error:
            raise ValueError(error)

    def _settings(self, data_delta: float, data_max_epsilon: float | None) -> tuple[float, float | None]:
        """(delta, max_epsilon) of this run: the callback's and the data module's, which must agree."""
        for name, mine, theirs in (("delta", self.delta, data_delta), ("max_epsilon", self.max_epsilon, data_max_epsilon)):
            if mine is not None and theirs is not None and mine != theirs:
                raise ValueError(f"PrivacyLedger({name}={mine:g}) disagrees with the data module's {name}={theirs:g}: "
                                 f"set {name} once, in the data module (the ledger takes it from there)")
        return (self.delta if self.delta is not None else data_delta,
                self.max_epsilon if self.max_epsilon is not None else data_max_epsilon)

    def record(self, path: str | Path, artifact_hash: str, releases: list[dict], delta: float | None = None,
               max_epsilon: float | None = None) -> float:
        """Add an artifact's releases to the ledger at ``path`` unless already there; return the composed epsilon.

        ``delta``/``max_epsilon`` default to the callback's. Raises ``ValueError`` (and writes nothing)
        when the composed epsilon would exceed the budget.
        """
        delta = self.delta if delta is None else delta
        max_epsilon = self.max_epsilon if max_epsilon is None else max_epsilon
        with open_ledger(path, delta, max_epsilon) as book:
            epsilon, known = book.record(artifact_hash, releases)
            rank_zero_info(f"privacy ledger {path}: {len(book.entries)} release set(s), composed epsilon "
                           f"{epsilon:.3g} at delta={book.delta:g}" + (" (this proxy was already recorded)" * known))
        return epsilon
