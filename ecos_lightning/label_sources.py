"""Label sources: each one small object that owns its parameters and says what it reads from the client, what
the client releases for it (its privacy records, given the proxy size) and how it labels a selected proxy.

The registry ``LABEL_SOURCES`` maps names to label source classes. Adding one: subclass :class:`LabelSource`
(its ``__init__`` parameters kept as attributes of the same name), then one line
``register_label_source(MySource)``. A config names one as it names a sampler (see
:mod:`ecos_lightning.components`). The former name ``open`` is ``manual`` (deprecated).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence

import numpy as np

from . import class_coverage
from .files import plain
from .components import CLIENT_FEATURES, CLIENT_LABELS, OPEN_FEATURES, Component, Inputs, Run, build, register
from .knn_labels import PrivateKnnLabeler
from .protocol.privacy import check_noise_multiplier
from .proxy import Proxy

DEPRECATED = {"open": "manual"}


class LabelSource(Component):
    """A way to label a selected proxy.

    labels_client_data: whether it can label a proxy of the client's own data (a sampler with source
    "client"). estimates: its labels are estimates, whose accuracy a simulation reports.
    """

    labels_client_data = False
    estimates = False

    #: Child stream of the run's seed the simulated client draws this source's noise from (0: none drawn).
    noise_stream = 0

    def releases(self, proxy_size: int) -> list[dict]:
        """The privacy records of what the client releases for a proxy of ``proxy_size`` images."""
        return []

    def noise_seed(self, run: Run) -> np.random.SeedSequence:
        """The simulated client's seed for this source's noise: child ``noise_stream`` of the run's seed, so it
        shares no draw with the ECOS query's noise (``default_rng(seed)``) or another label source's."""
        return np.random.SeedSequence(run.seed, spawn_key=(self.noise_stream,))

    def run(self, proxy: Proxy, inputs: Inputs, run: Run) -> Proxy:
        """``proxy`` with its labels and class names (and, when the client released labels, their bytes
        chained into ``release_hash`` with :func:`chain_release`)."""
        raise NotImplementedError


class Manual(LabelSource):
    """The true labels of the selected images only (an outsourced labeller; for a proxy of the client's own
    data, the client's labels)."""

    name = "manual"
    labels_client_data = True

    def run(self, proxy, inputs, run):
        truth = inputs.client_labels if proxy.source == "client" else inputs.open_labels
        return proxy.replace(labels=np.asarray(truth)[proxy.indices], class_names=class_names(inputs.num_classes))


class Unlabelled(LabelSource):
    """No labels (-1 everywhere)."""

    name = "none"

    def run(self, proxy, inputs, run):
        return proxy.replace(labels=None, class_names=None)


class ClientKnn(LabelSource):
    """Private kNN: the client answers each proxy feature with the noisy majority of its nearest labelled samples.

    k: neighbours voting per query. noise_multiplier: noise std per vote histogram / its sensitivity.
    sampling_rate: Poisson rate at which the client samples its set for each query.
    """

    name = "client_knn"
    needs = frozenset({OPEN_FEATURES, CLIENT_FEATURES, CLIENT_LABELS})
    estimates = True
    noise_stream = 1

    def __init__(self, k: int = 20, noise_multiplier: float = 2.0, sampling_rate: float = 0.3):
        checked = PrivateKnnLabeler(k, noise_multiplier, sampling_rate)  # refuses bad parameters here
        self.k, self.noise_multiplier, self.sampling_rate = checked.k, checked.noise_multiplier, checked.sampling_rate

    def releases(self, proxy_size):
        return [self.labeler(Run(budget=proxy_size)).release(proxy_size)]

    def labeler(self, run: Run) -> PrivateKnnLabeler:
        return PrivateKnnLabeler(self.k, self.noise_multiplier, self.sampling_rate, seed=self.noise_seed(run))

    def run(self, proxy, inputs, run):
        queries = inputs.open_features[proxy.indices]
        labels = self.labeler(run).label(queries, inputs.client_features, inputs.client_labels, inputs.num_classes)
        return proxy.replace(labels=labels, class_names=class_names(inputs.num_classes),
                             release_hash=chain_release(proxy.release_hash, labels),
                             bytes_down=proxy.bytes_down + queries.nbytes, bytes_up=proxy.bytes_up + labels.nbytes)


class ClassCoverage(LabelSource):
    """Class-conditional coverage: the client releases one noisy (centroid, class) histogram per resolution
    for centroids of the proxy; the cloud spreads it along the proxy's neighbourhood graph
    (:mod:`ecos_lightning.class_coverage`). Its cost does not grow with the proxy size.

    clusters: proxy centroids per resolution (one histogram each). noise_multiplier: noise std of each
    histogram (sensitivity 1). label_fraction: share of the proxy labelled, clearest first (the rest -1).
    """

    name = "class_coverage"
    needs = frozenset({OPEN_FEATURES, CLIENT_FEATURES, CLIENT_LABELS})
    estimates = True
    noise_stream = 2

    def __init__(self, clusters: int | Sequence[int] = (10, 20, 50), noise_multiplier: float = 7.31,
                 label_fraction: float = 1.0):
        self.clusters = list(class_coverage.check_clusters(plain(clusters)))  # a Hydra ListConfig too
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        self.label_fraction = class_coverage.check_label_fraction(label_fraction)

    def releases(self, proxy_size):
        return [class_coverage.release(self.noise_multiplier, len(self.clusters))]

    def run(self, proxy, inputs, run):
        features = inputs.open_features[proxy.indices]
        query = class_coverage.coverage_query(features, self.clusters, seed=run.seed)
        counts = class_coverage.class_histogram(query, inputs.client_features, inputs.client_labels,
                                                inputs.num_classes)
        noisy = class_coverage.release_histogram(counts, self.noise_multiplier,
                                                 np.random.default_rng(self.noise_seed(run)))
        labels = class_coverage.propagate_labels(query, features, noisy, label_fraction=self.label_fraction)
        down = query.projection.nbytes + query.bias.nbytes + query.centroids.nbytes
        return proxy.replace(labels=labels, class_names=class_names(inputs.num_classes),
                             release_hash=chain_release(proxy.release_hash, noisy.view(np.int32)),
                             bytes_down=proxy.bytes_down + down, bytes_up=proxy.bytes_up + noisy.nbytes)


def class_names(num_classes: int) -> list[str]:
    """Class names of integer labels: "0", "1", ..."""
    return [str(c) for c in range(num_classes)]


def chain_release(previous: str | None, labels) -> str:
    """SHA-256 (hex) of an earlier release digest (or none) followed by released labels (int64 little-endian)."""
    digest = hashlib.sha256((previous or "").encode())
    digest.update(np.asarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()


LABEL_SOURCES: dict[str, type] = {}


def register_label_source(cls: type) -> type:
    """Add the label source class ``cls`` to the registry under ``cls.name``; usable as a class decorator."""
    if cls.name in DEPRECATED:
        raise ValueError(f"a label source needs a new name, got {cls.name!r}")
    return register(LABEL_SOURCES, cls, LabelSource, "label source")


def get_label_source(spec, **overrides) -> LabelSource:
    """The label source ``spec`` names (see :func:`ecos_lightning.components.build`)."""
    if isinstance(spec, str) and spec in DEPRECATED:
        warnings.warn(f"label_source {spec!r} is deprecated: use {DEPRECATED[spec]!r}", DeprecationWarning,
                      stacklevel=3)
        spec = DEPRECATED[spec]
    return build(spec, LABEL_SOURCES, LabelSource, "label_source", overrides)


register_label_source(Manual)
register_label_source(Unlabelled)
register_label_source(ClientKnn)
register_label_source(ClassCoverage)
