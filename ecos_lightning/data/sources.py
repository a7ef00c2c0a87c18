"""Data sources by name: the one parser of source names and the one place that opens them.

A source name is one of (``<root>`` is a folder path, taken verbatim to the end of the name, so it may
hold ``:``; options come before it, each ``<key>=<value>:``):

==================================================  ==========================================================
name                                                data
==================================================  ==========================================================
``digits-lite[:<client domain>[:<split seed>]]``    the embedded digits-lite dataset (default client
                                                    ``handwritten``, seed 0), split by :func:`paper_split`
``digits-lite-fleet:<domain>=<devices>[,...]``      digits-lite as a fleet (:mod:`.fleet`): that many
``[:<images per device>[:<split seed>]]``           devices of each domain, 20 images each by default,
                                                    seed 0; e.g. ``digits-lite-fleet:handwritten=30,printed=3``
``<an image folder>``                               every readable image under the folder (nested folders
                                                    included): an open pool only, unlabelled
``domainnet:[<key>=<value>:]...<root>``             DomainNet's published layout (:mod:`.domainnet`); keys
                                                    ``client`` (default ``clipart``), ``seed``, ``rule``
                                                    (default ``domainnet``), ``domains``, ``classes`` (default
                                                    the paper's 10; ``all`` = every class)
``digits5:[<key>=<value>:]...<root>``               Digits-5 from its five published formats
                                                    (:mod:`.digits5`); keys ``client`` (default ``mnist``),
                                                    ``seed``, ``rule`` (default ``digits``), ``domains``,
                                                    ``size`` (image side, default 32), ``allow_pickle``
                                                    (``true`` reads FedBN's pickled copy; default refused)
``office-caltech10:[<key>=<value>:]...<root>``      ``<root>/{amazon,caltech,dslr,webcam}/<class>/<file>``;
                                                    keys ``client`` (default ``amazon``), ``seed``, ``rule``
                                                    (default ``domainnet``), ``domains``
``folders:[<key>=<value>:]...<root>``               any ``<root>/<domain>/<class>/<file>`` tree (domains: the
                                                    sorted sub-folders); keys ``client`` (default the first
                                                    domain), ``seed``, ``rule`` (default ``domainnet``),
                                                    ``domains``
``imagefolder:[seed=<seed>:]<root>``                one domain of class folders ``<root>/<class>/<file>``,
                                                    split by rule ``domainnet``
``wds:[<key>=<value>:]...<shards>``                 WebDataset tar shards (:mod:`.shards`): a folder of
                                                    ``.tar`` files, one ``.tar`` or a brace pattern
                                                    ``pool-{000000..000099}.tar``; an open pool only, read by
                                                    index without unpacking; labels from each sample's
                                                    ``cls`` (else unlabelled); keys ``image`` (the image's
                                                    extension, default the first image one), ``label``
                                                    (the class's extension, default ``cls``); a rewritten
                                                    shard is indexed again
``litdata:[<key>=<value>:]...<root>``               a litdata optimized dataset (:mod:`.litdata_pool`): an
                                                    open pool only, read by index through
                                                    ``litdata.StreamingDataset`` once its ``index.json`` is
                                                    checked; keys ``image``, ``label`` (the item's fields;
                                                    default found by name), ``allow_pickle`` (``true``
                                                    reads fields litdata unpickles; default refused)
==================================================  ==========================================================

Values: ``seed`` a non-negative integer (default 0; the paper's runs use 1, 2, 3), ``rule`` one of
``domainnet`` / ``digits`` (see :mod:`.splits`), ``domains`` (the domains read, in domain-id order; the
first is the default client) and ``classes`` comma-separated names, e.g.
``domainnet:client=real:seed=2:classes=bird,zebra:/data/domainnet``. A value holds no ``:``, ``/`` or
``\\``; a folder whose own name looks like ``<kind>:...`` or ``<key>=<value>:...`` is written ``./name``.
Class labels are the class list's order (DomainNet), the digits (Digits-5) or the sorted class-folder
names, the same in every domain. Rules (:mod:`.splits`): ``domainnet`` gives the client a stratified
half of its domain's training data and pools the other half with every other domain's training data;
``digits`` gives the client all of it and pools only the other domains' training data. No domain's
official test split is ever pooled; the client is tested on its domain's (digits-lite and folders,
which have none: a stratified held-out 30% of the client's share). A split is a function of the
data, the client, the rule and the seed, the same on every machine.

:func:`parse_source` turns a name into a source record; :func:`open_source` gives a record's datasets
as a :class:`SourceData`. Every dataset carries each item's domain (``domains`` int64 [N] indexing
``domain_names``; None for an unlabelled folder) and its ``class_names``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..files import file_stamp, stable_hash
from .digits5 import DIGITS5_DOMAINS, load_digits5
from .digits_lite import DOMAINS, load_digits_lite
from .domainnet import DOMAINNET_DOMAINS, PAPER_CLASSES, load_domainnet
from .folders import PathImageDataset, scan_domain_folders, scan_images, scan_labelled_images
from .items import ArrayImageDataset, ReadData
from .litdata_pool import LitDataSource, open_litdata
from .shards import WebDatasetSource, open_webdataset
from .fleet import fleet_split
from .splits import SPLIT_RULES, paper_split

__all__ = [
    "DIGITS_LITE",
    "OFFICE_CALTECH10_DOMAINS",
    "ArrayImageDataset",
    "Digits5Source",
    "DigitsLiteFleetSource",
    "DigitsLiteSource",
    "DomainFoldersSource",
    "DomainNetSource",
    "FolderSource",
    "LitDataSource",
    "SOURCE_KINDS",
    "SourceData",
    "SourceKind",
    "WebDatasetSource",
    "digits_lite_fleet",
    "digits_lite_sources",
    "open_source",
    "parse_source",
    "stated_fields",
]

DIGITS_LITE = "digits-lite"
DIGITS_LITE_FLEET = "digits-lite-fleet"
#: Office-Caltech10's four domains, in the order of their domain ids.
OFFICE_CALTECH10_DOMAINS = ("amazon", "caltech", "dslr", "webcam")


@dataclass(frozen=True)
class DigitsLiteSource:
    """digits-lite split for the client domain ``domain`` with split seed ``seed``."""

    domain: str = "handwritten"
    seed: int = 0


@dataclass(frozen=True)
class DigitsLiteFleetSource:
    """digits-lite as a fleet: ``groups`` ((domain, devices), ...) of ``per_device`` images, split seed ``seed``."""

    groups: tuple[tuple[str, int], ...] = (("handwritten", 30),)
    per_device: int = 20
    seed: int = 0


@dataclass(frozen=True)
class FolderSource:
    """The images under the folder ``root``."""

    root: Path


def _check_common(source) -> None:
    if isinstance(source.seed, bool) or not isinstance(source.seed, int) or source.seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {source.seed!r}")
    if source.rule not in SPLIT_RULES:
        raise ValueError(f"rule must be one of {SPLIT_RULES}, got {source.rule!r}")
    if source.domains is not None and (not source.domains or len(set(source.domains)) != len(source.domains)):
        raise ValueError(f"domains must be distinct names, at least one, got {source.domains!r}")
    if source.client is not None and source.domains is not None and source.client not in source.domains:
        raise ValueError(f"client domain {source.client!r} is not among the domains {source.domains}")


@dataclass(frozen=True)
class DomainNetSource:
    """DomainNet under ``root`` (see :mod:`.domainnet`), split for ``client`` by ``rule`` with ``seed``;
    ``classes`` None = every class of the split files."""

    root: Path
    client: str = "clipart"
    seed: int = 0
    rule: str = "domainnet"
    domains: tuple[str, ...] = DOMAINNET_DOMAINS
    classes: tuple[str, ...] | None = PAPER_CLASSES

    def __post_init__(self):
        _check_common(self)


@dataclass(frozen=True)
class Digits5Source:
    """Digits-5 under ``root`` (see :mod:`.digits5`) as ``size``-pixel RGB images, split for ``client`` by
    ``rule`` with ``seed``; ``allow_pickle`` reads FedBN's pickled copy."""

    root: Path
    client: str = "mnist"
    seed: int = 0
    rule: str = "digits"
    domains: tuple[str, ...] = DIGITS5_DOMAINS
    size: int = 32
    allow_pickle: bool = False

    def __post_init__(self):
        _check_common(self)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int (image side in pixels), got {self.size!r}")


@dataclass(frozen=True)
class DomainFoldersSource:
    """Image folders under ``root``: ``layout`` ``domains`` (``<root>/<domain>/<class>/<file>``; ``domains``
    None = every sub-folder, sorted; ``client`` None = the first) or ``classes`` (``<root>/<class>/<file>``,
    one domain named after the folder). ``kind`` names the source in data ids (``folders``,
    ``office-caltech10``, ``imagefolder``)."""

    root: Path
    client: str | None = None
    seed: int = 0
    rule: str = "domainnet"
    domains: tuple[str, ...] | None = None
    layout: str = "domains"
    kind: str = "folders"

    def __post_init__(self):
        _check_common(self)
        if self.layout not in ("domains", "classes"):
            raise ValueError(f"layout must be 'domains' or 'classes', got {self.layout!r}")


# ------------------------------------------------------------------------------------------ parsing
@dataclass(frozen=True)
class SourceKind:
    """One kind of source name, ``<kind>:[<key>=<value>:]...<root>``: the option keys it takes and the record
    it gives (``make(root, options)``; where it takes ``domains`` and ``client`` is not given, the first
    domain is the client)."""

    keys: tuple[str, ...]
    make: Callable[[str, dict], object]


_SPLIT_KEYS = ("client", "seed", "rule", "domains")

#: Every kind of source name but digits-lite and a bare folder.
SOURCE_KINDS: dict[str, SourceKind] = {
    "domainnet": SourceKind((*_SPLIT_KEYS, "classes"), lambda root, o: DomainNetSource(Path(root), **o)),
    "digits5": SourceKind((*_SPLIT_KEYS, "size", "allow_pickle"), lambda root, o: Digits5Source(Path(root), **o)),
    "office-caltech10": SourceKind(_SPLIT_KEYS, lambda root, o: DomainFoldersSource(
        Path(root), **{"domains": OFFICE_CALTECH10_DOMAINS, "client": "amazon", **o}, kind="office-caltech10")),
    "folders": SourceKind(_SPLIT_KEYS, lambda root, o: DomainFoldersSource(Path(root), **o)),
    "imagefolder": SourceKind(("seed",), lambda root, o: DomainFoldersSource(Path(root), **o, layout="classes",
                                                                            kind="imagefolder")),
    "wds": SourceKind(("image", "label"), lambda root, o: WebDatasetSource(root, **o)),
    "litdata": SourceKind(("image", "label", "allow_pickle"), lambda root, o: LitDataSource(Path(root), **o)),
}
_OPTION = re.compile(r"([a-z_]+)=([^:/\\]*)")


def parse_source(name: str):
    """The source a name gives (see the module docstring); ``ValueError`` for a malformed name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a source name must be a non-empty string, got {name!r}")
    if name == DIGITS_LITE:
        return DigitsLiteSource()
    if name.startswith(DIGITS_LITE_FLEET + ":"):
        return _fleet_source(name)
    if name.startswith(DIGITS_LITE + ":"):
        domain, _, seed = name[len(DIGITS_LITE) + 1:].partition(":")
        if seed and not seed.isdecimal():
            raise ValueError(f"source {name!r}: the split seed after the domain must be a non-negative integer")
        return DigitsLiteSource(domain, int(seed or 0))
    kind, sep, rest = name.partition(":")
    if not sep or kind not in SOURCE_KINDS:
        return FolderSource(Path(name))
    options, rest = _options(name, kind, rest)
    if not rest:
        raise ValueError(f"source {name!r}: the data folder is missing (write {kind}:<folder>)")
    if "domains" in options and "client" not in options:
        options["client"] = options["domains"][0]
    return SOURCE_KINDS[kind].make(rest, options)


def _fleet_source(name: str) -> DigitsLiteFleetSource:
    """``digits-lite-fleet:<domain>=<devices>[,...][:<images per device>[:<split seed>]]``."""
    groups, *numbers = name[len(DIGITS_LITE_FLEET) + 1:].split(":")
    pairs = [group.partition("=") for group in groups.split(",")]
    if len(numbers) > 2 or not all(n.isdecimal() for n in numbers) or \
            not all(domain and sep and count.isdecimal() for domain, sep, count in pairs):
        raise ValueError(f"source {name!r}: write digits-lite-fleet:<domain>=<devices>[,<domain>=<devices>...]"
                         "[:<images per device>[:<split seed>]], e.g. digits-lite-fleet:handwritten=30,printed=3")
    return DigitsLiteFleetSource(tuple((domain, int(count)) for domain, _, count in pairs),
                                 *(int(n) for n in numbers))


def _options(name: str, kind: str, rest: str) -> tuple[dict, str]:
    """The typed ``<key>=<value>:`` options at the start of ``rest`` (the name after ``<kind>:``) and what
    follows them (the folder)."""
    options = {}
    while True:
        head, sep, tail = rest.partition(":")
        match = _OPTION.fullmatch(head)
        if not match:
            return options, rest
        if not sep:
            raise ValueError(f"source {name!r}: the data folder is missing after the options (write "
                             f"{kind}:<key>=<value>:<folder>)")
        key, value = match.groups()
        keys = SOURCE_KINDS[kind].keys
        if key not in keys:
            raise ValueError(f"source {name!r}: unknown key {key!r}; {kind} takes {', '.join(keys)}")
        if key in options:
            raise ValueError(f"source {name!r}: {key} is given twice")
        options[key] = _value(name, key, value)
        rest = tail


def stated_fields(name: str) -> frozenset[str]:
    """The fields of its record a source name states itself (the others take the source's defaults):
    ``domain`` and ``seed`` of ``digits-lite:<domain>[:<seed>]``, else the keys of its options."""
    if name.startswith(DIGITS_LITE + ":"):
        return frozenset({"domain", "seed"} if ":" in name[len(DIGITS_LITE) + 1:] else {"domain"})
    kind, sep, rest = name.partition(":")
    return frozenset(_options(name, kind, rest)[0]) if sep and kind in SOURCE_KINDS else frozenset()


def _value(name: str, key: str, value: str):
    """A source-name option's value, typed."""
    if key in ("seed", "size"):
        if not value.isdecimal() or (key == "size" and int(value) < 1):
            raise ValueError(f"source {name!r}: {key} must be a {'positive' if key == 'size' else 'non-negative'} "
                             f"integer, got {value!r}")
        return int(value)
    if key == "allow_pickle":
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"source {name!r}: allow_pickle must be true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    if key in ("domains", "classes"):
        if key == "classes" and value == "all":
            return None
        items = tuple(v for v in value.split(","))
        if not all(items):
            raise ValueError(f"source {name!r}: {key} must be comma-separated names, got {value!r}")
        return items
    if not value:
        raise ValueError(f"source {name!r}: {key} needs a value")
    return value


# ------------------------------------------------------------------------------------------ opening
@dataclass(frozen=True)
class SourceData:
    """The datasets of a source.

    open: the open pool. client, client_test: the client's training and test data (None for a folder).
    data_id: what identifies the data and its split (a key of the features cache).
    root, paths: for a pool of image files, its absolute root and the pool's image paths relative to it
    (POSIX); None for in-memory data. skipped: for a scanned folder, the files with an image suffix that could not be decoded.
    domain_names: the source's domains (what the datasets' ``domains`` ids index); client_domain: the
    client's. devices: for a fleet, the number of images of each device, whose images are consecutive in
    ``client`` in this order (None: one client).
    """

    open: Dataset
    client: Dataset | None
    client_test: Dataset | None
    data_id: str
    root: str | None = None
    paths: list[str] | None = None
    skipped: list[Path] = field(default_factory=list)
    domain_names: tuple[str, ...] = ()
    client_domain: str | None = None
    devices: tuple[int, ...] | None = None


def digits_lite_sources(client_domain: str = "handwritten", seed: int = 0, cache_dir=None) -> SourceData:
    """Open pool, client train and client test datasets of digits-lite for ``client_domain``."""
    data = load_digits_lite(cache_dir, seed=0)
    split = paper_split(data.domains, data.labels, client_domain, seed=seed)
    items = ArrayImageDataset(data.images, data.labels, data.domains, DOMAINS, tuple(str(c) for c in range(10)))
    return SourceData(items.subset(split.open_indices), items.subset(split.client_train_indices),
                      items.subset(split.client_test_indices), f"digits-lite-v1/{client_domain}/split-seed{seed}",
                      domain_names=DOMAINS, client_domain=split.client_domain)


def digits_lite_fleet(source: DigitsLiteFleetSource, cache_dir=None) -> SourceData:
    """digits-lite as the fleet ``source`` describes: the open pool, the devices' images (device after device)
    and their held-out images."""
    data = load_digits_lite(cache_dir, seed=0)
    split = fleet_split(data.domains, source.groups, DOMAINS, source.per_device, source.seed)
    items = ArrayImageDataset(data.images, data.labels, data.domains, DOMAINS, tuple(str(c) for c in range(10)))
    groups = ",".join(f"{domain}={count}" for domain, count in source.groups)
    return SourceData(items.subset(split.open_indices), items.subset(np.concatenate(split.devices)),
                      items.subset(split.test_indices),
                      f"digits-lite-v1/fleet/{groups}/{source.per_device}/split-seed{source.seed}",
                      domain_names=DOMAINS, client_domain=source.groups[0][0],
                      devices=tuple(len(d) for d in split.devices))


def open_source(source, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> SourceData:
    """The datasets of ``source`` (a source name, or a record :func:`parse_source` gives); ``cache_dir``
    holds the generated digits-lite, WebDataset shard indexes and litdata pool labels (default: the cache
    folder).

    A folder is scanned (every candidate image decoded once, with a progress bar when ``progress``); a
    folder's or a published dataset's ``data_id`` hashes its absolute root, the settings, and each
    defining file's relative path and :func:`~ecos_lightning.files.file_stamp` (size, modification and
    change time, inode: any rewrite of a file changes it; no image is decoded for it).
    """
    if isinstance(source, str):
        source = parse_source(source)
    opener = _OPENERS.get(type(source))
    if opener is None:
        raise TypeError(f"source must be a source name or a record parse_source gives, got {type(source).__name__}")
    return opener(source, cache_dir, progress)


def _open_folder(source: FolderSource, cache_dir, progress: bool) -> SourceData:
    scan = scan_images(source.root, progress)
    root = str(scan.root.resolve())
    paths = [p.relative_to(scan.root).as_posix() for p in scan.paths]
    files = [(p, *file_stamp(f)) for p, f in zip(paths, scan.paths)]
    return SourceData(PathImageDataset(scan.paths), None, None, stable_hash([root, files]), root, paths, scan.skipped)


def _open_shards(source: WebDatasetSource, cache_dir, progress: bool) -> SourceData:
    shards = open_webdataset(source, cache_dir, progress)
    return SourceData(shards.dataset, None, None, shards.data_id, skipped=shards.skipped)


def _open_litdata(source: LitDataSource, cache_dir, progress: bool) -> SourceData:
    pool = open_litdata(source, cache_dir, progress)
    return SourceData(pool.dataset, None, None, pool.data_id)


#: How each kind of source record opens: (record, cache_dir, progress) -> its datasets.
_OPENERS: dict[type, Callable[..., SourceData]] = {
    DigitsLiteSource: lambda s, cache_dir, progress: digits_lite_sources(s.domain, s.seed, cache_dir),
    DigitsLiteFleetSource: lambda s, cache_dir, progress: digits_lite_fleet(s, cache_dir),
    FolderSource: _open_folder,
    WebDatasetSource: _open_shards,
    LitDataSource: _open_litdata,
    DomainNetSource: lambda s, cache_dir, progress: _split(s, "domainnet", load_domainnet(s.root, s.domains,
                                                                                        s.classes), []),
    Digits5Source: lambda s, cache_dir, progress: _split(s, "digits5", load_digits5(s.root, s.domains, s.size,
                                                                                    s.allow_pickle), []),
    DomainFoldersSource: lambda s, cache_dir, progress: _split(s, s.kind, *_read_folders(s, progress)),
}


def _read_folders(source: DomainFoldersSource, progress: bool) -> tuple[ReadData, list[Path]]:
    if source.layout == "classes":
        scan = scan_labelled_images(source.root, progress)
        name = Path(source.root).resolve().name
        items = PathImageDataset(scan.paths, scan.labels, [0] * len(scan.paths), (name,), tuple(scan.class_names))
    else:
        scan = scan_domain_folders(source.root, source.domains, progress)
        items = PathImageDataset(scan.paths, scan.labels, scan.domains, scan.domain_names, scan.class_names)
    return ReadData(items, None, tuple(scan.paths)), scan.skipped


def _split(source, kind: str, data: ReadData, skipped: list[Path]) -> SourceData:
    """The pool, client and client-test datasets of ``data`` by the source's rule, and the data id."""
    items = data.items
    client = source.client if getattr(source, "client", None) is not None else items.domain_names[0]
    split = paper_split(items.domains, items.labels, client, items.domain_names, seed=source.seed,
                        rule=source.rule, test_mask=data.test_mask)
    given = Path(source.root)
    root = given.resolve()
    stamps = [(Path(os.path.relpath(f, given)).as_posix(), *file_stamp(f)) for f in data.files]
    settings = {k: v for k, v in asdict(source).items() if k != "root"}
    data_id = (f"{kind}/{split.client_domain}/{source.rule}/seed{source.seed}/"
               f"{stable_hash([kind, str(root), settings, stamps])}")
    pool = items.subset(split.open_indices)
    on_disk = isinstance(pool, PathImageDataset)
    paths = [Path(os.path.relpath(p, given)).as_posix() for p in pool.paths] if on_disk else None
    return SourceData(pool, items.subset(split.client_train_indices), items.subset(split.client_test_indices),
                      data_id, str(root) if on_disk else None, paths, skipped, items.domain_names,
                      split.client_domain)

