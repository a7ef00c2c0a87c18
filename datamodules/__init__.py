"""Lightning data modules: the ECOS proxy set for any Lightning project, and digits-lite sources."""

from ecos_lightning.console import show_project_logs
from ecos_lightning.data import ArrayImageDataset, digits_lite_sources

from .options import Datasets, Loaders
from .proxy import ProxyDataModule

show_project_logs()

__all__ = ["ArrayImageDataset", "Datasets", "Loaders", "ProxyDataModule", "digits_lite_sources"]
