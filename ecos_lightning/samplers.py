"""Samplers: each one small object that says what it reads from the client, what the client releases
for it (its privacy records) and how it selects a proxy.

The registry ``SAMPLERS`` maps names to samplers. Adding one: subclass :class:`Sampler`, then one
line ``register_sampler(MySampler())``. A name that is not registered but is a dotted import path
(``package.module.OBJECT``) names a sampler object found there, so a sampler from another package
works in a config without a registry line.

The ECOS sampler goes through serialised messages exactly as two machines would: the centroids are
sent as bytes, the client answers from those bytes, the cloud samples from the answer's bytes.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .protocol import CentroidsMessage, ClientResponder, CloudSampler, ScoresMessage
from .protocol.baselines import run_baseline
from .protocol.num_clusters import resolve_num_clusters
from .protocol.privacy import gaussian_release, releases_epsilon
from .proxy import Proxy

log = logging.getLogger(__name__)

CLIENT_FEATURES = "client_features"
CLIENT_LABELS = "client_labels"
OPEN_FEATURES = "open_features"


@dataclass(frozen=True)
class Inputs:
    """What samplers and label sources read; a piece nobody declared in ``needs`` is None.

    open_features: float32 [N, d] of the open pool. open_labels: int64 [N], the pool's labels as a
    labeller would reveal them (-1: unknown). client_features: float32 [M, d]; client_labels: int64 [M]
    (the client's, in a simulation read in-process). client_size: M. num_classes: label classes.
    encoder: the encoder spec (dict) both sides use.
    """

    open_features: np.ndarray | None = None
    open_labels: np.ndarray | None = None
    client_features: np.ndarray | None = None
    client_labels: np.ndarray | None = None
    client_size: int = 0
    num_classes: int = 0
    encoder: dict | None = None


class Sampler:
    """A way to select a proxy set.

    name: its registry name. source: the dataset its indices point into ("open" or "client").
    needs: what it reads (``OPEN_FEATURES``, ``CLIENT_FEATURES``, ``CLIENT_LABELS``).
    config_keys: settings beyond the common ones (``num_clusters``, ``q``, ``noise_multiplier``,
    ``delta``, ``budget``, ``seed``) that determine its proxy.
    """

    name = ""
    source = "open"
    needs: frozenset = frozenset({OPEN_FEATURES})
    config_keys: tuple = ()

    def proxy_size(self, settings: Mapping, pool_size: int, client_size: int) -> int:
        """How many images its proxy holds at most (known before it runs)."""
        return settings["budget"]

    def releases(self, settings: Mapping) -> list[dict]:
        """The privacy records of what the client releases for it (known before it runs)."""
        return []

    def run(self, inputs: Inputs, settings: Mapping) -> Proxy:
        """Select: a Proxy with indices, provenance, bytes each way, ``source`` and ``release_hash`` (the
        SHA-256 of what the client released, None when it released nothing); the caller adds the rest."""
        raise NotImplementedError


#: The cloud's sampling rules (see ``CloudSampler``) and ECOS's defaults for them; ``neighbour_z`` (the second
#: look at dropped clusters next to kept ones) is off: ``bench/ablation.py --class-coverage`` measures it.
ECOS_RULES = {"noise_z": 3.0, "neighbour_z": None, "candidate_factor": 3.0, "within_cluster": "kcenter"}


class Ecos(Sampler):
    """ECOS: centroids down, noisy centroid-coverage scores up, budget allocated by score.

    ``rules``: the cloud's sampling rules (keys of ``ECOS_RULES``: the noise threshold ``noise_z``, the
    ``candidate_factor`` and ``within_cluster``), this sampler's defaults; a setting of the same name
    overrides one for a run (``select_proxy(..., noise_z=0)``). ``num_clusters`` may be ``"auto"``: K from
    the pool size, the client size, sigma and q (``protocol.num_clusters``).
    """

    needs = frozenset({OPEN_FEATURES, CLIENT_FEATURES})

    def __init__(self, name: str = "ecos", **rules):
        unknown = set(rules) - set(ECOS_RULES)
        if unknown:
            raise ValueError(f"unknown ECOS rules {sorted(unknown)}: use {sorted(ECOS_RULES)}")
        self.name, self.rules = name, {**ECOS_RULES, **rules}

    def releases(self, settings):
        return [gaussian_release(settings["noise_multiplier"], what="ecos_coverage_scores")]

    def run(self, inputs, settings):
        pool, client = len(inputs.open_features), inputs.client_size or len(inputs.client_features)
        k = resolve_num_clusters(settings["num_clusters"], pool, client, settings["noise_multiplier"], settings["q"])
        if settings["num_clusters"] == "auto":
            log.info("num_clusters=auto: K=%d for %d open samples, %d client samples, sigma %g, q %d", k, pool,
                     client, settings["noise_multiplier"], settings["q"])
        rules = {key: settings.get(key, value) for key, value in self.rules.items()}
        cloud = CloudSampler(num_clusters=k, seed=settings["seed"], fp16=settings.get("fp16", False),
                             pca_dim=settings.get("pca_dim"), encoder=inputs.encoder,
                             use_gpu=settings.get("faiss_gpu"), progress=settings.get("progress", False),
                             auto_k=settings["num_clusters"] == "auto", **rules)
        down = cloud.fit(inputs.open_features).to_bytes()
        responder = ClientResponder(noise_multiplier=settings["noise_multiplier"], q=settings["q"],
                                    delta=settings["delta"], seed=settings["seed"])
        up = responder.respond(CentroidsMessage.from_bytes(down), inputs.client_features).to_bytes()
        scores = ScoresMessage.from_bytes(up)
        selection = cloud.select(scores, settings["budget"])
        return Proxy(selection.indices, selection.clusters, selection.scores, bytes_down=len(down),
                     bytes_up=len(up), cluster_scores=np.clip(scores.scores, 0, None),
                     release_hash=hashlib.sha256(up).hexdigest())


class Baseline(Sampler):
    """A baseline of ``protocol.baselines`` that reads no client data (random, kcenter, full)."""

    def __init__(self, name: str):
        self.name = name

    def proxy_size(self, settings, pool_size, client_size):
        return pool_size if self.name == "full" else super().proxy_size(settings, pool_size, client_size)

    def run(self, inputs, settings):
        return Proxy(run_baseline(self.name, inputs.open_features, settings["budget"], seed=settings["seed"]))


class Upload(Sampler):
    """The non-private upper bound: the client uploads its features; the cloud takes their neighbours."""

    name = "upload"
    needs = frozenset({OPEN_FEATURES, CLIENT_FEATURES})

    def releases(self, settings):
        return [{"mechanism": "non_private", "count": 1, "what": "upload: client data"}]

    def run(self, inputs, settings):
        features = np.ascontiguousarray(inputs.client_features, dtype=np.float32)
        indices = run_baseline(self.name, inputs.open_features, settings["budget"], client_features=features,
                               seed=settings["seed"])
        return Proxy(indices, bytes_up=features.nbytes, release_hash=hashlib.sha256(features.tobytes()).hexdigest())


class Local(Sampler):
    """Train on the client's own labelled data (not private: the data leaves the client)."""

    name = "local"
    source = "client"
    needs = frozenset({CLIENT_LABELS})

    def proxy_size(self, settings, pool_size, client_size):
        return client_size

    def releases(self, settings):
        return [{"mechanism": "non_private", "count": 1, "what": "local: client data"}]

    def run(self, inputs, settings):
        labels = np.asarray(inputs.client_labels, dtype="<i8")
        return Proxy(np.arange(inputs.client_size), source="client",
                     release_hash=hashlib.sha256(labels.tobytes()).hexdigest())


SAMPLERS: dict[str, Sampler] = {}


def register_sampler(sampler: Sampler) -> Sampler:
    """Add ``sampler`` to the registry under its name (a name may be registered once)."""
    if not sampler.name or sampler.name in SAMPLERS:
        raise ValueError(f"a sampler needs a new name, got {sampler.name!r}")
    SAMPLERS[sampler.name] = sampler
    return sampler


def resolve(name, registry: dict, kind: str):
    """The registered object ``name``, else the object at the dotted import path ``name``; ``ValueError``
    listing the registered names otherwise."""
    if isinstance(name, str) and name in registry:
        return registry[name]
    if isinstance(name, str) and "." in name:
        module, _, attribute = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"{kind} {name!r} cannot be imported ({exc})") from None
    raise ValueError(f"{kind} must be one of {tuple(registry)} or an import path, got {name!r}")


def get_sampler(name: str) -> Sampler:
    return resolve(name, SAMPLERS, "sampler")


def select_proxy(sampler: str, open_features: np.ndarray, budget: int, *, client_features=None,
                 num_clusters: int | str = 100, q: int = 1, noise_multiplier: float = 8.0, delta: float = 1e-5,
                 seed: int = 0, fp16: bool = False, pca_dim: int | None = None, encoder: dict | None = None,
                 progress: bool = False, **rules) -> Proxy:
    """Run an open-pool sampler on feature arrays: the Proxy with its declared releases and epsilon.

    ``num_clusters``: K or ``"auto"``. ``rules``: ECOS sampling rules for this run (``noise_z``,
    ``candidate_factor``, ``within_cluster``; see ``ECOS_RULES``), overriding the sampler's own."""
    unknown = set(rules) - set(ECOS_RULES)
    if unknown:
        raise ValueError(f"unknown ECOS rules {sorted(unknown)}: use {sorted(ECOS_RULES)}")
    chosen = get_sampler(sampler)
    if chosen.source != "open":
        raise ValueError(f"sampler {sampler!r} does not select from the open pool")
    if CLIENT_FEATURES in chosen.needs and client_features is None:
        raise ValueError(f"client_features is required by the {sampler!r} sampler")
    settings = dict(budget=budget, num_clusters=num_clusters, q=q, noise_multiplier=noise_multiplier, delta=delta,
                    seed=seed, fp16=fp16, pca_dim=pca_dim, progress=progress, **rules)
    start = time.perf_counter()
    proxy = chosen.run(Inputs(open_features=open_features, client_features=client_features, encoder=encoder),
                       settings)
    releases = chosen.releases(settings)
    proxy = proxy.replace(releases=releases, epsilon=releases_epsilon(releases, delta), delta=delta, open="features")
    log.info("%s: %d proxy samples, epsilon %.3f at delta %g, %d bytes down, %d bytes up, %.2f s", sampler,
             len(proxy), proxy.epsilon, delta, proxy.bytes_down, proxy.bytes_up, time.perf_counter() - start)
    return proxy


register_sampler(Ecos())
register_sampler(Baseline("random"))
register_sampler(Baseline("kcenter"))
register_sampler(Baseline("full"))
register_sampler(Upload())
register_sampler(Local())
