"""The proxy record: one selected proxy set, its labels, provenance and privacy cost, as validated JSON.

One :class:`Proxy` is the proxy file ``ecos-cloud sample`` / ``attach-labels`` write, the artifact
``ProxyDataModule.prepare_data`` writes and the data module's checkpoint state. JSON layout (format
version 2)::

    {"version": 2, "kind": "ecos-proxy",
     "indices": [int, ...],          # unique indices into the pool, each < 2**62, B >= 1
     "root": str | null,             # absolute root folder of an image-folder pool; null for an indexed pool
     "paths": [str, ...] | null,     # with root: file of each index, relative to root (posix, no "..")
     "clusters": [int, ...],         # cluster of each index (-1: none)
     "scores": [float, ...],         # clipped noisy score of that cluster (0.0 without clustering)
     "labels": [int, ...] | null,    # label of each index (-1: unlabelled), in [0, len(class_names))
     "class_names": [str, ...] | null,
     "epsilon": float | null,        # privacy cost of the releases behind it; null = inf (not private)
     "delta": float, "bytes_down": int, "bytes_up": int,
     "open": str,                    # the pool, as given to ``ecos-cloud probe --open`` or the data's identity
     # optional (default in brackets):
     "source": "open" | "client",    # the dataset the indices point into ["open"]
     "cluster_scores": [float] | null,  # clipped noisy score of every cluster [null]
     "releases": [release, ...],     # privacy records (``privacy.gaussian_release``) of what the client released [[]]
     "release_hash": str | null,     # SHA-256 (hex) of what the client released: its privacy-ledger key [null]
     "hash": str | null}             # hash of everything that determined the proxy [null]

Version 1 (absolute paths, no root) is refused with a request to run ``ecos-cloud sample`` again.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from .files import atomic_write_bytes
from .protocol.privacy import check_release, epsilon_from_json, epsilon_to_json, releases_epsilon

PROXY_VERSION = 2
PROXY_KIND = "ecos-proxy"
MAX_PROXY_BYTES = 1 << 30
MAX_INT = 1 << 62  # every integer field is below this (indices, clusters, byte counts)
REQUIRED = ("version", "kind", "indices", "root", "paths", "clusters", "scores", "labels", "class_names", "epsilon",
            "delta", "bytes_down", "bytes_up", "open")
OPTIONAL = {"source": "open", "cluster_scores": None, "releases": [], "release_hash": None, "hash": None}
FIELDS = REQUIRED + tuple(OPTIONAL)
SOURCES = ("open", "client")


@dataclass(frozen=True)
class Proxy:
    """A proxy set (see the module docstring for every field). ``epsilon`` is a float (``inf``: not
    private); lists are plain Python lists, so records compare with ``==``.

    Build one in code with the fields a step knows and :func:`dataclasses.replace` the rest as later
    steps learn them; :meth:`to_json` and :meth:`write` validate the whole record.
    """

    indices: list
    clusters: list = None
    scores: list = None
    labels: list | None = None
    class_names: list | None = None
    root: str | None = None
    paths: list | None = None
    epsilon: float = 0.0
    delta: float = 1e-5
    bytes_down: int = 0
    bytes_up: int = 0
    open: str = ""
    source: str = "open"
    cluster_scores: list | None = None
    releases: list = field(default_factory=list)
    release_hash: str | None = None
    hash: str | None = None

    def __post_init__(self):
        size = len(self.indices)
        defaults = {"clusters": [-1] * size, "scores": [0.0] * size}
        for name, dtype in (("indices", np.int64), ("clusters", np.int64), ("scores", np.float64),
                            ("labels", np.int64), ("cluster_scores", np.float64)):
            value = getattr(self, name)
            if value is None:
                value = defaults.get(name)
            elif not isinstance(value, list) or not all(type(v) is (int if dtype is np.int64 else float) for v in value):
                value = np.asarray(value, dtype=dtype).tolist()  # numpy arrays and scalars -> plain Python
            object.__setattr__(self, name, value)
        for name in ("bytes_down", "bytes_up"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "epsilon", float(self.epsilon))

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def epsilon_rdp(self) -> float | None:
        """The epsilon of :attr:`releases` at :attr:`delta` by the RDP (moments) accountant, the ECOS paper's,
        beside :attr:`epsilon` (PLD); None when the releases behind a nonzero epsilon are not recorded."""
        if not self.releases:
            return 0.0 if self.epsilon == 0 else None
        return releases_epsilon(self.releases, self.delta, "rdp")

    def label_list(self) -> list[int]:
        """The label of each index, -1 where unlabelled."""
        return list(self.labels) if self.labels is not None else [-1] * len(self.indices)

    def replace(self, **changes) -> "Proxy":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The JSON object of this record (validated)."""
        value = {"version": PROXY_VERSION, "kind": PROXY_KIND, **asdict(self)}
        value["epsilon"] = epsilon_to_json(self.epsilon)
        return validate(value, "proxy")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, value, where: str = "proxy") -> "Proxy":
        """Validate a JSON object (see the module docstring) -> the record; ``ValueError`` naming ``where``
        and the field on any problem."""
        value = validate(value, where)
        fields = {k: value.get(k, default) for k, default in OPTIONAL.items()}
        fields.update({k: value[k] for k in REQUIRED if k not in ("version", "kind")})
        fields["epsilon"] = epsilon_from_json(fields["epsilon"])
        return cls(**fields)

    @classmethod
    def from_json(cls, raw, where: str = "proxy") -> "Proxy":
        """Parse and validate JSON text or bytes -> the record."""
        if not isinstance(raw, (str, bytes)):
            raise ValueError(f"{where}: must be JSON text")
        try:
            value = json.loads(raw, parse_constant=_reject_constant)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise ValueError(f"{where}: not valid UTF-8 JSON ({exc})") from None
        return cls.from_dict(value, where)

    @classmethod
    def read(cls, path: str | os.PathLike, what: str = "proxy file") -> "Proxy":
        """Read and validate a proxy file; ``ValueError`` naming the file and the field on any problem."""
        path = Path(path)
        where = f"{what} {path}"
        if not path.exists():
            raise ValueError(f"{where} not found: pass the JSON file written by `ecos-cloud sample`")
        if not path.is_file():
            raise ValueError(f"{where} is not a file: pass the JSON file written by `ecos-cloud sample`")
        try:
            if path.stat().st_size > MAX_PROXY_BYTES:
                raise ValueError(f"{where}: larger than {MAX_PROXY_BYTES} bytes")
            raw = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{where} cannot be read ({exc.strerror or exc}): check its permissions") from None
        return cls.from_json(raw, where)

    def write(self, path: str | os.PathLike) -> None:
        """Validate and write atomically (nothing is written when the record is invalid)."""
        atomic_write_bytes(Path(path), json.dumps(self.to_dict(), indent=1, allow_nan=False).encode())


def is_pool_path(text) -> bool:
    """Whether ``text`` is a normalised relative posix path (no ``..``, ``.``, empty part, trailing slash or
    NUL): one spelling of one file below a pool root."""
    return (isinstance(text, str) and bool(text) and "\0" not in text and not PurePosixPath(text).is_absolute()
            and all(part not in ("", ".", "..") for part in text.split("/")))


def is_pool_root(text) -> bool:
    """Whether ``text`` is an absolute path without NUL: the root folder of an image-folder pool."""
    return isinstance(text, str) and "\0" not in text and os.path.isabs(text)


def validate(proxy, where: str = "proxy") -> dict:
    """Check every field of a proxy JSON object; returns it unchanged."""
    def fail(field: str, what: str):
        raise ValueError(f"{where}: field {field!r} {what}")

    if not isinstance(proxy, dict):
        raise ValueError(f"{where}: must be a JSON object")
    version = proxy.get("version")
    if not (_int(version) and version == PROXY_VERSION):
        if _int(version) and version == 1:
            raise ValueError(f"{where}: format version 1 is no longer read: run `ecos-cloud sample` again to write "
                             f"version {PROXY_VERSION}")
        fail("version", f"must be {PROXY_VERSION}, got {version!r}")
    missing, extra = [f for f in REQUIRED if f not in proxy], sorted(set(proxy) - set(FIELDS))
    if missing or extra:
        raise ValueError(f"{where}: missing fields {missing}, unexpected fields {extra}")
    if proxy["kind"] != PROXY_KIND:
        fail("kind", f"must be {PROXY_KIND!r}, got {proxy['kind']!r}")
    size = _int_list(proxy, "indices", fail, low=0)
    if size == 0:
        fail("indices", "must hold at least one index")
    if len(set(proxy["indices"])) != size:
        fail("indices", "must be unique")
    _int_list(proxy, "clusters", fail, low=-1, size=size)
    _finite_list(proxy, "scores", fail, size)
    root, paths = proxy["root"], proxy["paths"]
    if root is not None and not is_pool_root(root):
        fail("root", f"must be null or an absolute folder path, got {root!r}")
    if (root is None) != (paths is None):
        fail("paths", "must be given with root (an image-folder pool) and null without it")
    if paths is not None and (not isinstance(paths, list) or len(paths) != size
                              or not all(is_pool_path(p) for p in paths) or len(set(paths)) != size):
        fail("paths", f"must be null or a list of {size} unique relative paths inside root (no '..', not absolute)")
    names = proxy["class_names"]
    if names is not None and (not isinstance(names, list) or not names
                              or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names)):
        fail("class_names", "must be null or a non-empty list of unique non-empty strings")
    if proxy["labels"] is not None:
        if names is None:
            fail("class_names", "must be given with labels")
        _int_list(proxy, "labels", fail, low=-1, high=len(names) - 1, size=size)
    epsilon = proxy["epsilon"]
    if epsilon is not None and not (_finite(epsilon) and epsilon >= 0):
        fail("epsilon", f"must be null (inf) or a finite number >= 0, got {epsilon!r}")
    if not (_finite(proxy["delta"]) and 0 < proxy["delta"] < 1):
        fail("delta", f"must be a number in (0, 1), got {proxy['delta']!r}")
    for field_name in ("bytes_down", "bytes_up"):
        if not _int(proxy[field_name]) or not 0 <= proxy[field_name] < MAX_INT:
            fail(field_name, f"must be an integer in [0, 2**62), got {proxy[field_name]!r}")
    if not isinstance(proxy["open"], str) or not proxy["open"]:
        fail("open", "must be a non-empty string")
    if proxy.get("source", "open") not in SOURCES:
        fail("source", f"must be one of {SOURCES}, got {proxy.get('source')!r}")
    if proxy.get("cluster_scores") is not None:
        _finite_list(proxy, "cluster_scores", fail)
    releases = proxy.get("releases", [])
    if not isinstance(releases, list):
        fail("releases", "must be a list of release records")
    for release in releases:
        try:
            check_release(release)
        except (ValueError, TypeError) as exc:  # TypeError: an unhashable mechanism
            fail("releases", f"holds a bad record: {exc}")
    for field_name, pattern in (("release_hash", r"[0-9a-f]{64}"), ("hash", r"[0-9a-f]{16,64}")):
        value = proxy.get(field_name)
        if value is not None and not (isinstance(value, str) and re.fullmatch(pattern, value)):
            fail(field_name, f"must be null or a hex digest, got {value!r:.80}")
    return proxy


def _int_list(proxy: dict, field_name: str, fail, low: int, high: int = MAX_INT - 1, size: int | None = None) -> int:
    values = proxy[field_name]
    if (not isinstance(values, list) or (size is not None and len(values) != size)
            or not all(_int(v) and low <= v <= high for v in values)):
        bounds = f"in [{low}, {high}]" if high < MAX_INT - 1 else f"in [{low}, 2**62)"
        count = f"{size} " if size is not None else ""
        fail(field_name, f"must be a list of {count}integers {bounds}")
    return len(values)


def _finite_list(proxy: dict, field_name: str, fail, size: int | None = None) -> None:
    values = proxy[field_name]
    if not isinstance(values, list) or (size is not None and len(values) != size) or not all(map(_finite, values)):
        fail(field_name, f"must be a list of {'' if size is None else f'{size} '}finite numbers")


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value) -> bool:
    try:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # a JSON integer beyond the float range
        return False


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name} is not allowed")


__all__ = ["FIELDS", "MAX_PROXY_BYTES", "PROXY_KIND", "PROXY_VERSION", "Proxy", "is_pool_path", "is_pool_root",
           "validate"]
