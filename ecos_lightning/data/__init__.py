"""Data sources: the embedded digits-lite dataset, readers of published datasets (DomainNet, Digits-5,
Office-Caltech10 and any multi-domain image folder), the paper's client/open splits, and the one parser
and opener of source names."""

from .digits5 import DIGITS5_DOMAINS, load_digits5, read_idx
from .digits_lite import DOMAINS, DigitsLite, DigitsLiteDataset, load_digits_lite
from .domainnet import DOMAINNET_DOMAINS, PAPER_CLASSES, load_domainnet
from .folders import PathImageDataset, scan_domain_folders, scan_images, scan_labelled_images
from .items import ArrayImageDataset, ItemInfo, ReadData
from .sources import (OFFICE_CALTECH10_DOMAINS, Digits5Source, DigitsLiteSource, DomainFoldersSource,
                      DomainNetSource, FolderSource, SourceData, digits_lite_sources, open_source, parse_source,
                      stated_fields)
from .splits import SPLIT_RULES, DomainSplit, paper_split

__all__ = [
    "DIGITS5_DOMAINS",
    "DOMAINNET_DOMAINS",
    "DOMAINS",
    "OFFICE_CALTECH10_DOMAINS",
    "PAPER_CLASSES",
    "SPLIT_RULES",
    "ArrayImageDataset",
    "Digits5Source",
    "DigitsLite",
    "DigitsLiteDataset",
    "DigitsLiteSource",
    "DomainFoldersSource",
    "DomainNetSource",
    "DomainSplit",
    "FolderSource",
    "ItemInfo",
    "PathImageDataset",
    "ReadData",
    "SourceData",
    "digits_lite_sources",
    "load_digits5",
    "load_digits_lite",
    "load_domainnet",
    "open_source",
    "paper_split",
    "parse_source",
    "read_idx",
    "scan_domain_folders",
    "scan_images",
    "scan_labelled_images",
    "stated_fields",
]
