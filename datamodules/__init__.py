"""Lightning data modules: the ECOS proxy set for any Lightning project, and digits-lite sources."""

from ecos_lightning.console import show_project_logs
from ecos_lightning.data import ArrayImageDataset, digits_lite_sources

from .proxy import ProxyDataModule

show_project_logs()

__all__ = ["ArrayImageDataset", "ProxyDataModule", "digits_lite_sources"]
