"""Datasets and splits: the embedded digits-lite dataset and client/open splits."""

from .digits_lite import DOMAINS, DigitsLite, DigitsLiteDataset, load_digits_lite
from .splits import DomainSplit, paper_split

__all__ = [
    "DOMAINS",
    "DigitsLite",
    "DigitsLiteDataset",
    "DomainSplit",
    "load_digits_lite",
    "paper_split",
]
