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
from collections.abc import Callable, Sequence

import numpy as np

from .protocol import class_coverage
from .files import plain
from .components import CLIENT_FEATURES, CLIENT_LABELS, OPEN_FEATURES, Component, Inputs, Run, build, register
from .protocol.knn_labels import PrivateKnnLabeler
from .features.store import matrix_digest
from .files import stable_hash
from .protocol.coverage_messages import MAX_CELLS, ClassHistogramMessage, CoverageQueryMessage
from .protocol.label_messages import LabelsMessage, QueriesMessage
from .protocol.privacy import check_noise_multiplier, releases_epsilon
from .protocol.validation import positive_int
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


class ClientExchange(LabelSource):
    """A label source that asks the client: one round trip of messages, the same calls in one process and on
    two machines (``ecos-cloud query``, ``ecos-client answer``, ``ecos-cloud absorb``).

    Cloud: :meth:`query` (a ``query_type`` message), later :meth:`absorb` (the client's ``answer_type``
    message -> the proxy's labels). Client: :meth:`client_release` (what answering costs, recorded before the
    answer is written), :meth:`answer_payload` (the released values), :meth:`make_answer`. In one process
    :meth:`run` chains them over the messages' bytes, so the bytes counted are the messages'.
    """

    query_type: type
    answer_type: type
    #: The parameters each step reads (None: all of them); ``--set`` of another one is refused on that side.
    query_parameters: tuple[str, ...] | None = None
    answer_parameters: tuple[str, ...] | None = None
    absorb_parameters: tuple[str, ...] | None = None

    # cloud side
    def query(self, proxy: Proxy, features: np.ndarray, encoder: dict, run: Run):
        """The query for ``proxy`` from its open-pool features [B, d] of ``encoder`` (a spec dict)."""
        raise NotImplementedError

    def describe_query(self, query, proxy_size: int) -> str:
        raise NotImplementedError

    def check_features(self, query, encoder: dict, features: np.ndarray) -> None:
        """Refuse (``ValueError``) features [B, d] other than those ``query`` was made from."""
        if query.encoder != encoder:
            raise ValueError("the cloud state's encoder is not the one the query names")

    def answers(self, query_blob: bytes, query, answer) -> bool:
        """Whether ``answer`` answers the query serialised as ``query_blob``."""
        raise NotImplementedError

    def absorb(self, query, answer, features) -> np.ndarray:
        """The proxy's labels int64 [B] (-1: none) from the client's answer; ``features()``: the proxy's
        open-pool features [B, d], read only by a source that needs them."""
        raise NotImplementedError

    # client side
    def check_query(self, query, max_queries: int, num_classes: int | None = None) -> None:
        """Refuse (``ValueError``, worded to follow the query's file name: "asks for ...") a query the client
        should not answer (too large); ``num_classes`` once known."""

    def client_release(self, query, query_digest: str) -> dict:
        """The privacy record of answering ``query`` (SHA-256 ``query_digest``)."""
        raise NotImplementedError

    def answer_payload(self, query, features, labels, num_classes: int, seed) -> np.ndarray:
        """The released values for ``query`` from the client's features [M, d] and labels [M]; ``seed`` seeds
        the noise (None: fresh entropy)."""
        raise NotImplementedError

    def make_answer(self, query, query_digest: str, payload, class_names, delta: float, epsilon: float,
                    total_epsilon: float):
        """The answer message; ``payload`` None: zeros of the right shape (a dry run)."""
        raise NotImplementedError

    def describe_answer(self, query, num_classes: int) -> str:
        raise NotImplementedError

    def run(self, proxy, inputs, run):
        features = inputs.open_features[proxy.indices]
        names = class_names(inputs.num_classes)
        down = self.query(proxy, features, inputs.encoder, run).to_bytes()
        query = self.query_type.from_bytes(down)
        digest = hashlib.sha256(down).hexdigest()
        epsilon = releases_epsilon(self.releases(len(proxy)), run.delta)
        payload = self.answer_payload(query, inputs.client_features, inputs.client_labels, len(names),
                                      self.noise_seed(run))
        up = self.make_answer(query, digest, payload, names, run.delta, epsilon, epsilon).to_bytes()
        labels = self.absorb(query, self.answer_type.from_bytes(up), lambda: features)
        return proxy.replace(labels=labels, class_names=names, release_hash=chain_release(proxy.release_hash, up),
                             bytes_down=proxy.bytes_down + len(down), bytes_up=proxy.bytes_up + len(up))


class ClientKnn(ClientExchange):
    """Private kNN: the client answers each proxy feature with the noisy majority of its nearest labelled samples.

    k: neighbours voting per query. noise_multiplier: noise std per vote histogram / its sensitivity.
    sampling_rate: Poisson rate at which the client samples its set for each query.
    """

    name = "client_knn"
    needs = frozenset({OPEN_FEATURES, CLIENT_FEATURES, CLIENT_LABELS})
    estimates = True
    noise_stream = 1
    query_type, answer_type = QueriesMessage, LabelsMessage
    query_parameters, answer_parameters, absorb_parameters = (), ("k", "noise_multiplier", "sampling_rate"), ()

    def __init__(self, k: int = 20, noise_multiplier: float = 2.0, sampling_rate: float = 0.3):
        checked = PrivateKnnLabeler(k, noise_multiplier, sampling_rate)  # refuses bad parameters here
        self.k, self.noise_multiplier, self.sampling_rate = checked.k, checked.noise_multiplier, checked.sampling_rate

    def releases(self, proxy_size):
        return [{**self.labeler().release(proxy_size), "k": self.k}]

    def labeler(self, seed=None) -> PrivateKnnLabeler:
        return PrivateKnnLabeler(self.k, self.noise_multiplier, self.sampling_rate, seed=seed)

    def query(self, proxy, features, encoder, run):
        return QueriesMessage(np.ascontiguousarray(features, dtype=np.float32), encoder, stable_hash(proxy.indices))

    def describe_query(self, query, proxy_size):
        return f"{query.features.shape[0]} query features, d={query.features.shape[1]}"

    def answers(self, query_blob, query, answer):
        return answer.answers(query_blob) and len(answer.labels) == query.features.shape[0]

    def absorb(self, query, answer, features):
        return np.asarray(answer.labels, dtype=np.int64)

    def check_query(self, query, max_queries, num_classes=None):
        if query.features.shape[0] > max_queries:
            raise ValueError(f"asks for {query.features.shape[0]:,} labels > --max-queries "
                             f"{max_queries:,}; refused before any accounting or image read")

    def client_release(self, query, query_digest):
        return self.releases(query.features.shape[0])[0]

    def answer_payload(self, query, features, labels, num_classes, seed):
        return self.labeler(seed).label(query.features, features, np.asarray(labels), num_classes)

    def make_answer(self, query, query_digest, payload, class_names, delta, epsilon, total_epsilon):
        labels = np.zeros(query.features.shape[0], np.int64) if payload is None else payload
        return LabelsMessage(labels, class_names, query_digest, self.noise_multiplier, self.k, self.sampling_rate,
                             delta, epsilon, total_epsilon)

    def describe_answer(self, query, num_classes):
        return f"{query.features.shape[0]} int64 labels over {num_classes} classes"


class ClassCoverage(ClientExchange):
    """Class-conditional coverage: the client releases one noisy (centroid, class) histogram per resolution
    for centroids of the proxy; the cloud spreads it along the proxy's neighbourhood graph
    (:mod:`ecos_lightning.protocol.class_coverage`). Its cost does not grow with the proxy size.

    clusters: proxy centroids per resolution (one histogram each). noise_multiplier: noise std of each
    histogram (sensitivity 1). label_fraction: share of the proxy labelled, clearest first (the rest -1).
    whiten_dim: dimensions of the whitened space the centroids live in.
    """

    name = "class_coverage"
    needs = frozenset({OPEN_FEATURES, CLIENT_FEATURES, CLIENT_LABELS})
    estimates = True
    noise_stream = 2
    query_type, answer_type = CoverageQueryMessage, ClassHistogramMessage
    query_parameters, answer_parameters, absorb_parameters = ("clusters", "whiten_dim"), ("noise_multiplier",), \
        ("label_fraction",)

    def __init__(self, clusters: int | Sequence[int] = (10, 20, 50), noise_multiplier: float = 7.31,
                 label_fraction: float = 1.0, whiten_dim: int = 48):
        self.clusters = list(class_coverage.check_clusters(plain(clusters)))  # a Hydra ListConfig too
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        self.label_fraction = class_coverage.check_label_fraction(label_fraction)
        self.whiten_dim = positive_int(whiten_dim, "whiten_dim")

    def releases(self, proxy_size):
        return [class_coverage.release(self.noise_multiplier, len(self.clusters))]

    def query(self, proxy, features, encoder, run):
        query = class_coverage.coverage_query(features, self.clusters, self.whiten_dim, run.seed)
        return query.to_message(encoder, stable_hash(proxy.indices), matrix_digest(features))

    def describe_query(self, query, proxy_size):
        return (f"{len(query.centroids)} centroids of the proxy's {proxy_size} images at resolutions "
                f"{query.clusters.tolist()}, d'={query.projection.shape[1]}")

    def check_features(self, query, encoder, features):
        if query.encoder != encoder or query.features != matrix_digest(features):
            raise ValueError("the query was made from features the cloud state no longer holds (another encoder "
                             "or a new probe): run `ecos-cloud coverage-query` again on this state and send that "
                             "query")

    def answers(self, query_blob, query, answer):
        return answer.answers(query_blob, query)

    def absorb(self, query, answer, features):
        return class_coverage.propagate_labels(class_coverage.CoverageQuery.from_message(query), features(),
                                               answer.counts, label_fraction=self.label_fraction)

    def check_query(self, query, max_queries, num_classes=None):
        rows = query.centroids.shape[0]
        if num_classes is not None and rows * num_classes > MAX_CELLS:
            raise ValueError(f"asks for {rows:,} centroids x {num_classes:,} classes > {MAX_CELLS:,} cells; "
                             "refused before any feature is extracted")

    def client_release(self, query, query_digest):
        return class_coverage.release(self.noise_multiplier, int(query.clusters.size),
                                      what=f"class coverage histograms, query {query_digest[:16]}")

    def answer_payload(self, query, features, labels, num_classes, seed):
        counts = class_coverage.class_histogram(class_coverage.CoverageQuery.from_message(query), features,
                                                np.asarray(labels), num_classes)
        return class_coverage.release_histogram(counts, self.noise_multiplier, np.random.default_rng(seed))

    def make_answer(self, query, query_digest, payload, class_names, delta, epsilon, total_epsilon):
        counts = np.zeros((query.centroids.shape[0], len(class_names)), np.float32) if payload is None else payload
        return ClassHistogramMessage(counts, class_names, query_digest, self.noise_multiplier,
                                     int(query.clusters.size), delta, epsilon, total_epsilon)

    def describe_answer(self, query, num_classes):
        return (f"{query.centroids.shape[0]} x {num_classes} float32 noisy counts ({query.clusters.size} "
                "histograms)")


def class_names(num_classes: int) -> list[str]:
    """Class names of integer labels: "0", "1", ..."""
    return [str(c) for c in range(num_classes)]


def chain_release(previous: str | None, released) -> str:
    """SHA-256 (hex) of an earlier release digest (or none) followed by what was released: a message's bytes,
    or labels (int64 little-endian)."""
    digest = hashlib.sha256((previous or "").encode())
    digest.update(released if isinstance(released, bytes) else np.asarray(released, dtype="<i8").tobytes())
    return digest.hexdigest()


def client_exchange(spec: str | None, settings: dict, step: str,
                    kind: Callable[[], str] | None = None) -> ClientExchange:
    """The label source that asks the client, with ``settings`` as its parameters: ``spec`` (a registered name or
    an import path), else the registered one whose query messages are of ``kind()`` (the query file's kind, read
    only then). ``step`` (query, answer, absorb): a setting that step does not read is refused."""
    asking = {name: cls for name, cls in LABEL_SOURCES.items() if issubclass(cls, ClientExchange)}
    if spec is not None:
        cls = type(get_label_source(spec))
        if not issubclass(cls, ClientExchange):
            raise ValueError(f"label source {spec!r} does not ask the client: use one of {list(asking)}")
    else:
        declared = kind()
        found = [cls for cls in asking.values() if cls.query_type.KIND == declared]
        if not found:
            kinds = sorted({cls.query_type.KIND for cls in asking.values()})
            raise ValueError(f"a {declared!r} message is not a query of any registered label source (queries: "
                             f"{kinds})")
        cls = found[0]
    read = getattr(cls, f"{step}_parameters")
    unread = sorted(set(settings) - set(cls.parameters() if read is None else read))
    if unread and set(unread) <= set(cls.parameters()):
        raise ValueError(f"--set {', '.join(unread)}: the {step} step of {cls.__name__} does not read it (it reads "
                         f"{', '.join(read) or 'no parameter'})")
    return get_label_source({"class_path": cls.class_path(), "init_args": settings})


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
