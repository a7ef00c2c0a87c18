"""DomainNet read from its published layout (nothing is downloaded; images stay on disk).

``<root>/<domain>/<class>/<file>`` images with the official split files ``<root>/<domain>_train.txt`` and
``<root>/<domain>_test.txt``, one ``<domain>/<class>/<file> <class index>`` line per image. The class
list defaults to the paper's ten classes (:data:`PAPER_CLASSES`, as in FedBN's DomainNet subset),
relabelled ``0..K-1`` in the order given; ``classes=None`` takes every class of the split files in their
official index order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .folders import PathImageDataset
from .items import ReadData

__all__ = ["DOMAINNET_DOMAINS", "PAPER_CLASSES", "load_domainnet"]

#: The six domains, in the order of their domain ids.
DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
#: The paper's ten classes (labels 0..9 in this order).
PAPER_CLASSES = ("bird", "feather", "headphones", "ice_cream", "teapot", "tiger", "whale", "windmill", "wine_glass",
                 "zebra")


def load_domainnet(root, domains: tuple[str, ...] = DOMAINNET_DOMAINS,
                   classes: tuple[str, ...] | None = PAPER_CLASSES) -> ReadData:
    """Every train and test image of ``classes`` in ``domains`` (a path dataset; domain ids index ``domains``).

    Items are ordered by domain, then train before test, then as listed in the split file.
    ``FileNotFoundError`` names a missing split file or image and where it was looked for; ``ValueError``
    a malformed line or a class no split file lists.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DomainNet folder not found: {root} (expected <domain>_train.txt, "
                                "<domain>_test.txt and <domain>/<class>/<images> below it)")
    unknown = [d for d in domains if d not in DOMAINNET_DOMAINS]
    if unknown or not domains:
        raise ValueError(f"unknown DomainNet domains {unknown}: choose among {DOMAINNET_DOMAINS}")
    rows, official = [], {}  # rows: (relative path, class name, domain id, is test)
    split_files = []
    for d, domain in enumerate(domains):
        for split in ("train", "test"):
            path = root / f"{domain}_{split}.txt"
            if not path.is_file():
                raise FileNotFoundError(f"DomainNet split file {path.name} not found in {root}: put the official "
                                        f"split files (<domain>_train.txt, <domain>_test.txt) there beside the "
                                        f"image folders")
            split_files.append(path)
            for rel, name, index in _split_lines(path, domain):
                official.setdefault(name, index)
                rows.append((rel, name, d, split == "test"))
    if classes is None:
        classes = tuple(sorted(official, key=lambda c: (official[c], c)))
    missing = [c for c in classes if c not in official]
    if missing or not classes:
        raise ValueError(f"classes {missing or '()'} are listed in no split file of {root} (DomainNet class "
                         f"folder names, e.g. {', '.join(PAPER_CLASSES[:3])})")
    label_of = {c: i for i, c in enumerate(classes)}
    rows = [r for r in rows if r[1] in label_of]
    paths = [root / rel for rel, *_ in rows]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"DomainNet image {absent[0].relative_to(root)} (listed in a split file) not found "
                                f"in {root} ({len(absent)} of {len(paths)} listed images missing): unpack the "
                                "domain's images there")
    items = PathImageDataset(paths, [label_of[r[1]] for r in rows], [r[2] for r in rows], tuple(domains),
                             tuple(classes))
    return ReadData(items, np.asarray([r[3] for r in rows], bool), tuple(split_files + paths))


def _split_lines(path: Path, domain: str):
    """(relative path, class name, official class index) of each line of a split file."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        parts = fields[0].split("/")
        if len(fields) != 2 or not fields[1].isdecimal() or len(parts) != 3 or parts[0] != domain:
            raise ValueError(f"{path} line {number}: expected '{domain}/<class>/<file> <class index>', got {line!r}")
        yield fields[0], parts[1], int(fields[1])
