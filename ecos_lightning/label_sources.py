"""Label sources: each one small object that says what it reads from the client, what the client releases
for it (its privacy records, given the proxy size) and how it labels a selected proxy.

The registry ``LABEL_SOURCES`` maps names to label sources. Adding one: subclass :class:`LabelSource`,
then one line ``register_label_source(MySource())``; a dotted import path names one that is not
registered (see :func:`ecos_lightning.samplers.resolve`). The former name ``open`` is ``manual``
(deprecated).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping

import numpy as np

from . import class_coverage
from .knn_labels import PrivateKnnLabeler
from .proxy import Proxy
from .samplers import CLIENT_FEATURES, CLIENT_LABELS, OPEN_FEATURES, Inputs, resolve

DEPRECATED = {"open": "manual"}


class LabelSource:
    """A way to label a selected proxy.

    name: its registry name. needs: what it reads (``samplers.OPEN_FEATURES``, ``CLIENT_FEATURES``,
    ``CLIENT_LABELS``). config_keys: the settings that determine its labels. labels_client_data:
    whether it can label a proxy of the client's own data (a sampler with source "client").
    estimates: its labels are estimates, whose accuracy a simulation reports.
    """

    name = ""
    needs: frozenset = frozenset()
    config_keys: tuple = ()
    labels_client_data = False
    estimates = False

    #: Child stream of the run's seed the simulated client draws this source's noise from (0: none drawn).
    noise_stream = 0

    def releases(self, settings: Mapping, proxy_size: int) -> list[dict]:
        """The privacy records of what the client releases for a proxy of ``proxy_size`` images."""
        return []

    def noise_seed(self, settings: Mapping) -> np.random.SeedSequence:
        """The simulated client's seed for this source's noise: child ``noise_stream`` of the run's seed, so it
        shares no draw with the ECOS query's noise (``default_rng(seed)``) or another label source's."""
        return np.random.SeedSequence(settings["seed"], spawn_key=(self.noise_stream,))

    def run(self, proxy: Proxy, inputs: Inputs, settings: Mapping) -> Proxy:
        """``proxy`` with its labels and class names (and, when the client released labels, their bytes
        chained into ``release_hash`` with :func:`chain_release`)."""
        raise NotImplementedError


class Manual(LabelSource):
    """The true labels of the selected images only (an outsourced labeller; for a proxy of the client's own
    data, the client's labels)."""

    name = "manual"
    labels_client_data = True

    def run(self, proxy, inputs, settings):
        truth = inputs.client_labels if proxy.source == "client" else inputs.open_labels
        return proxy.replace(labels=np.asarray(truth)[proxy.indices], class_names=class_names(inputs.num_classes))


class Unlabelled(LabelSource):
    """No labels (-1 everywhere)."""

    name = "none"

    def run(self, proxy, inputs, settings):
        return proxy.replace(labels=None, class_names=None)


class ClientKnn(LabelSource):
    """Private kNN: the client answers each proxy feature with the noisy majority of its nearest labelled samples."""

    name = "client_knn"
    needs = frozenset({OPEN_FEATURES, CLIENT_FEATURES, CLIENT_LABELS})
    config_keys = ("knn_k", "knn_noise_multiplier", "knn_sampling_rate")
    estimates = True
    noise_stream = 1

    def releases(self, settings, proxy_size):
        return [self.labeler(settings).release(proxy_size)]

    def labeler(self, settings: Mapping) -> PrivateKnnLabeler:
        return PrivateKnnLabeler(settings["knn_k"], settings["knn_noise_multiplier"], settings["knn_sampling_rate"],
                                 seed=self.noise_seed(settings))

    def run(self, proxy, inputs, settings):
        queries = inputs.open_features[proxy.indices]
        labels = self.labeler(settings).label(queries, inputs.client_features, inputs.client_labels,
                                              inputs.num_classes)
        return proxy.replace(labels=labels, class_names=class_names(inputs.num_classes),
                             release_hash=chain_release(proxy.release_hash, labels),
                             bytes_down=proxy.bytes_down + queries.nbytes, bytes_up=proxy.bytes_up + labels.nbytes)


class ClassCoverage(LabelSource):
    """Class-conditional coverage: the client releases one noisy (centroid, class) histogram per resolution
    for centroids of the proxy; the cloud spreads it along the proxy's neighbourhood graph
    (:mod:`ecos_lightning.class_coverage`). Its cost does not grow with the proxy size."""

    name = "class_coverage"
    needs = frozenset({OPEN_FEATURES, CLIENT_FEATURES, CLIENT_LABELS})
    config_keys = ("coverage_clusters", "coverage_noise_multiplier", "coverage_label_fraction")
    estimates = True
    noise_stream = 2

    def releases(self, settings, proxy_size):
        clusters = class_coverage.check_clusters(settings["coverage_clusters"])
        class_coverage.check_label_fraction(settings["coverage_label_fraction"], "coverage_label_fraction")
        return [class_coverage.release(settings["coverage_noise_multiplier"], len(clusters))]

    def run(self, proxy, inputs, settings):
        features = inputs.open_features[proxy.indices]
        query = class_coverage.coverage_query(features, settings["coverage_clusters"], seed=settings["seed"])
        counts = class_coverage.class_histogram(query, inputs.client_features, inputs.client_labels,
                                                inputs.num_classes)
        noisy = class_coverage.release_histogram(counts, settings["coverage_noise_multiplier"],
                                                 np.random.default_rng(self.noise_seed(settings)))
        labels = class_coverage.propagate_labels(query, features, noisy,
                                                 label_fraction=settings["coverage_label_fraction"])
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


LABEL_SOURCES: dict[str, LabelSource] = {}


def register_label_source(source: LabelSource) -> LabelSource:
    """Add ``source`` to the registry under its name (a name may be registered once)."""
    if not source.name or source.name in LABEL_SOURCES or source.name in DEPRECATED:
        raise ValueError(f"a label source needs a new name, got {source.name!r}")
    LABEL_SOURCES[source.name] = source
    return source


def get_label_source(name: str) -> LabelSource:
    if name in DEPRECATED:
        warnings.warn(f"label_source {name!r} is deprecated: use {DEPRECATED[name]!r}", DeprecationWarning,
                      stacklevel=3)
        name = DEPRECATED[name]
    return resolve(name, LABEL_SOURCES, "label_source")


register_label_source(Manual())
register_label_source(Unlabelled())
register_label_source(ClientKnn())
register_label_source(ClassCoverage())
