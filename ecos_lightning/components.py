"""What samplers and label sources share: the objects' base, the run they serve, their registries.

A component (a sampler or a label source) is an object that owns its parameters: its ``__init__``
takes them, each stored as an attribute of the same name, so :meth:`Component.config` reports them
(the proxy artifact's key: other parameters never reuse a proxy). A component is named in a config
by any of:

* a registered name (``ecos``): the class registered under it, with its defaults;
* an import path (``package.module.NAME``): a component class (its defaults) or a component object;
* ``{"class_path": <name or import path of a class>, "init_args": {...}}``, the LightningCLI form
  that :meth:`Component.config` also writes;
* the object itself (LightningCLI, Hydra's ``_target_`` or Python code build it).

:func:`build_proxy` runs a sampler and a label source on their inputs, with the releases they declare.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .files import plain
from .protocol.privacy import releases_epsilon
from .proxy import Proxy

CLIENT_FEATURES = "client_features"
CLIENT_LABELS = "client_labels"
FLEET_FEATURES = "fleet_features"
OPEN_FEATURES = "open_features"


@dataclass(frozen=True)
class Inputs:
    """What samplers and label sources read; a piece nobody declared in ``needs`` is None.

    open_features: float32 [N, d] of the open pool. open_labels: int64 [N], the pool's labels as a
    labeller would reveal them (-1: unknown). client_features: float32 [M, d]; client_labels: int64 [M]
    (the client's, in a simulation read in-process). client_size: M. num_classes: label classes.
    encoder: the encoder spec (dict) both sides use. fleet_features: one float32 [M_i, d] per device of a
    fleet (many clients answering one probe); a data module then gives their union as ``client_features``.
    """

    open_features: np.ndarray | None = None
    open_labels: np.ndarray | None = None
    client_features: np.ndarray | None = None
    client_labels: np.ndarray | None = None
    client_size: int = 0
    num_classes: int = 0
    encoder: dict | None = None
    fleet_features: tuple[np.ndarray, ...] | None = None


@dataclass(frozen=True)
class Run:
    """What one run asks of every component: proxy size ``budget``, the ledger's ``delta``, the ``seed`` of
    the protocol and its noise, progress bars, and where faiss runs (None: on a GPU when it sees one)."""

    budget: int
    delta: float = 1e-5
    seed: int = 0
    progress: bool = False
    faiss_gpu: bool | None = None


class Component:
    """A sampler or a label source: ``name`` (its registry name, "" when unregistered) and ``needs`` (what it
    reads: ``OPEN_FEATURES``, ``CLIENT_FEATURES``, ``CLIENT_LABELS``)."""

    name = ""
    needs: frozenset = frozenset()

    @classmethod
    def parameters(cls) -> tuple[str, ...]:
        """The names of the parameters ``__init__`` takes (each one an attribute of the object)."""
        return tuple(name for name, p in inspect.signature(cls.__init__).parameters.items()
                     if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    @classmethod
    def class_path(cls) -> str:
        """The import path of the class: what a config's ``class_path`` names it by."""
        return f"{cls.__module__}.{cls.__qualname__}"

    def config(self) -> dict:
        """``{"class_path": ..., "init_args": {...}}``: what rebuilds this object and keys its proxy."""
        missing = [name for name in self.parameters() if not hasattr(self, name)]
        if missing:
            raise TypeError(f"{type(self).__qualname__} must keep its __init__ parameters {missing} as attributes "
                            "of the same name: they key its proxy")
        return {"class_path": self.class_path(),
                "init_args": {name: plain(getattr(self, name)) for name in self.parameters()}}

    def display_name(self) -> str:
        """How reports name it: its registry name, else its class name."""
        return self.name or type(self).__qualname__


def register(registry: dict, cls: type, base: type, kind: str) -> type:
    """Add the component class ``cls`` to ``registry`` under ``cls.name`` (a name may be registered once)."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"register a {base.__name__} subclass, got {cls!r}")
    if not cls.name or cls.name in registry:
        raise ValueError(f"a {kind} needs a new name, got {cls.name!r}")
    registry[cls.name] = cls
    return cls


def build(spec, registry: dict, base: type, kind: str, overrides: Mapping | None = None):
    """The component ``spec`` names (see the module docstring). ``overrides``: parameters for a component
    named by a string, applied where its class takes them (the others are left out)."""
    if isinstance(spec, base):
        return spec
    if isinstance(spec, Mapping):
        extra = sorted(set(spec) - {"class_path", "init_args"})
        if extra or not isinstance(spec.get("class_path"), str):
            raise ValueError(f"{kind} as a mapping holds a class_path (a name or import path) and optional "
                             f"init_args, got the keys {sorted(spec)}")
        cls = _find(spec["class_path"], registry, base, kind)
        if not isinstance(cls, type):
            raise ValueError(f"{kind} class_path {spec['class_path']!r} names an object, not a class")
        init_args = spec.get("init_args") or {}
        if not isinstance(init_args, Mapping):
            raise ValueError(f"{kind} init_args must be a mapping of parameter names to values, got {init_args!r:.60}")
        return _made(cls, dict(init_args), kind)
    if not isinstance(spec, str):
        raise ValueError(f"{kind} must be one of {tuple(registry)}, an import path, a {{class_path, init_args}} "
                         f"mapping or a {base.__name__} object, got {spec!r}")
    found = _find(spec, registry, base, kind)
    if not isinstance(found, type):
        return found
    taken = found.parameters()
    return _made(found, {k: v for k, v in (overrides or {}).items() if k in taken}, kind)


def _find(name: str, registry: dict, base: type, kind: str):
    """The registered class ``name``, else the component class or object at the import path ``name``."""
    if name in registry:
        return registry[name]
    if "." not in name:
        raise ValueError(f"{kind} must be one of {tuple(registry)} or an import path, got {name!r}")
    module, _, attribute = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{kind} {name!r} cannot be imported ({exc})") from None
    if not (isinstance(found, base) or (isinstance(found, type) and issubclass(found, base))):
        raise ValueError(f"{kind} {name!r} is neither a {base.__name__} class nor a {base.__name__} object")
    return found


def _made(cls: type, init_args: dict, kind: str):
    try:
        return cls(**init_args)
    except TypeError as exc:
        raise ValueError(f"{kind} {cls.__qualname__}: {exc}; its parameters are {list(cls.parameters())}") from None


def build_proxy(inputs: Inputs, sampler, label_source, run: Run, releases: list[dict]) -> Proxy:
    """inputs -> ``sampler`` -> ``label_source`` -> the Proxy carrying ``releases`` (what the two declared for
    this run, see :func:`planned_releases`), their epsilon at ``run.delta`` and the released bytes' digest."""
    proxy = label_source.run(sampler.run(inputs, run), inputs, run)
    return proxy.replace(releases=releases, release_hash=proxy.release_hash if releases else None,
                         epsilon=releases_epsilon(releases, run.delta), delta=run.delta)


def planned_releases(sampler, label_source, run: Run, pool_size: int, client_size: int) -> list[dict]:
    """What the client releases for ``sampler`` then ``label_source`` in ``run``, known before any query."""
    size = sampler.proxy_size(run, pool_size, client_size)
    return sampler.releases() + label_source.releases(size)
