"""Data sources: the embedded digits-lite dataset and its client/open splits, image folders, and
the one parser and opener of source names."""

from .digits_lite import DOMAINS, DigitsLite, DigitsLiteDataset, load_digits_lite
from .folders import PathImageDataset, scan_images, scan_labelled_images
from .sources import (ArrayImageDataset, DigitsLiteSource, FolderSource, SourceData, digits_lite_sources,
                      open_source, parse_source)
from .splits import DomainSplit, paper_split

__all__ = [
    "DOMAINS",
    "ArrayImageDataset",
    "DigitsLite",
    "DigitsLiteDataset",
    "DigitsLiteSource",
    "DomainSplit",
    "FolderSource",
    "PathImageDataset",
    "SourceData",
    "digits_lite_sources",
    "load_digits_lite",
    "open_source",
    "paper_split",
    "parse_source",
    "scan_images",
    "scan_labelled_images",
]
