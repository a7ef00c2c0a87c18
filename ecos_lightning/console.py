"""The project's log records on the console, shown the way Lightning shows its own.

Lightning prints its INFO messages once, from global rank zero, on a handler of its own logger unless
the application configured logging. The records of ``ecos_lightning`` (the K chosen, the clusters kept,
epsilon, bytes, an artifact reused, a proxy restored from a checkpoint) are shown the same way: INFO and
above on stderr, from rank zero only, in every process a run starts (``ddp_spawn`` included, as each
imports the Lightning layer). Where the application has configured logging (a handler on the root
logger: Hydra, ``logging.basicConfig``), the records go to its handlers instead.
"""

from __future__ import annotations

import logging

from pytorch_lightning.utilities.rank_zero import rank_zero_only

PROJECT_LOGGER = "ecos_lightning"


class RankZeroOnly(logging.Filter):
    """Passes the records of global rank zero (Lightning's ``rank_zero_only.rank``, set per process)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(rank_zero_only, "rank", 0) == 0


def show_project_logs() -> None:
    """Show ``ecos_lightning``'s INFO records on stderr from rank zero (once per process), unless logging
    was configured by the application; a level the application set on the logger is kept."""
    logger = logging.getLogger(PROJECT_LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if logging.getLogger().hasHandlers() or any(isinstance(f, RankZeroOnly) for h in logger.handlers
                                                for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.addFilter(RankZeroOnly())
    logger.addHandler(handler)
    logger.propagate = False
