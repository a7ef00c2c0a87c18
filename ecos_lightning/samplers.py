"""Samplers: each one small object that owns its parameters and says what it reads from the client, what
the client releases for it (its privacy records) and how it selects a proxy.

The registry ``SAMPLERS`` maps names to sampler classes. Adding one: subclass :class:`Sampler` (its
``__init__`` parameters kept as attributes of the same name), then one line ``register_sampler(MySampler)``.
A config names a sampler by a registered name, an import path, ``{class_path, init_args}`` or the object
itself (see :mod:`ecos_lightning.components`).

The ECOS sampler goes through serialised messages exactly as two machines would: the centroids are
sent as bytes, the client answers from those bytes, the cloud samples from the answer's bytes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Literal

import numpy as np

from .components import (CLIENT_FEATURES, CLIENT_LABELS, OPEN_FEATURES, Component, Inputs, Run, build, build_proxy,
                         planned_releases, register)
from .label_sources import Unlabelled
from .protocol import CentroidsMessage, ClientResponder, CloudSampler, ScoresMessage
from .protocol.baselines import run_baseline
from .protocol.num_clusters import resolve_num_clusters
from .protocol.privacy import check_noise_multiplier, gaussian_release
from .protocol.validation import positive_int
from .proxy import Proxy

log = logging.getLogger(__name__)

__all__ = ["CLIENT_FEATURES", "CLIENT_LABELS", "OPEN_FEATURES", "ECOS_RULES", "SAMPLERS", "Baseline", "CoverageSampler",
           "Ecos",
           "Full", "Inputs", "KCenter", "Local", "Random", "Run", "Sampler", "Upload", "get_sampler",
           "register_sampler", "select_proxy"]


class Sampler(Component):
    """A way to select a proxy set. ``source``: the dataset its indices point into ("open" or "client")."""

    source = "open"
    needs: frozenset = frozenset({OPEN_FEATURES})

    def proxy_size(self, run: Run, pool_size: int, client_size: int) -> int:
        """How many images its proxy holds at most (known before it runs)."""
        return run.budget

    def releases(self) -> list[dict]:
        """The privacy records of what the client releases for it (known before it runs)."""
        return []

    def run(self, inputs: Inputs, run: Run) -> Proxy:
        """Select: a Proxy with indices, provenance, bytes each way, ``source`` and ``release_hash`` (the
        SHA-256 of what the client released, None when it released nothing); the caller adds the rest."""
        raise NotImplementedError


#: The cloud's sampling rules (see ``CloudSampler``) and ECOS's defaults for them; ``neighbour_z`` (the second
#: look at dropped clusters next to kept ones) is off: ``bench/ablation.py --class-coverage`` measures it.
ECOS_RULES = {"noise_z": 3.0, "neighbour_z": None, "candidate_factor": 3.0, "within_cluster": "kcenter"}


class CoverageSampler(Sampler):
    """A sampler over ECOS's exchange with the client: the cloud sends centroids (a ``CentroidsMessage``), the
    client answers each one with a noisy coverage score (a ``ScoresMessage`` from ``ClientResponder``: its
    ``q`` nearest centroids per sample, Gaussian noise of sigma ``noise_multiplier``), the cloud selects.

    One implementation of each step, for one process (:meth:`run` chains them over the messages' bytes) and
    two machines (``ecos-cloud probe --sampler NAME`` calls :meth:`fit`, ``ecos-client respond`` answers,
    ``ecos-cloud sample`` calls :meth:`restore` and :meth:`select`). A subclass chooses the centroids
    (``num_clusters``, ``fp16``, ``pca_dim``, :meth:`rules`) and the selection (:meth:`select`); the
    class attributes below are the values of those it does not take as parameters.
    """

    needs = frozenset({OPEN_FEATURES, CLIENT_FEATURES})
    num_clusters: int | str = 100
    q: int = 1
    noise_multiplier: float = 8.0
    fp16: bool = False
    pca_dim: int | None = None
    rounds: int = 1
    first_round_share: float = 0.5
    sub_clusters: int = 4

    def round_noise(self) -> list[float]:
        """Sigma of each round's answer. The first of two rounds spends ``first_round_share`` of the privacy
        and the second the rest (Gaussian answers compose by adding 1 / sigma^2), so both together cost what
        one answer at ``noise_multiplier`` does."""
        if self.rounds == 1:
            return [self.noise_multiplier]
        shares = (self.first_round_share, 1 - self.first_round_share)
        return [self.noise_multiplier / math.sqrt(share) for share in shares]

    def releases(self):
        if self.rounds == 1:
            return [gaussian_release(self.noise_multiplier, what="ecos_coverage_scores")]
        return [gaussian_release(sigma, what=f"ecos coverage scores, round {r + 1} of {self.rounds}")
                for r, sigma in enumerate(self.round_noise())]

    def rules(self) -> dict:
        """The cloud's sampling rules (``CloudSampler`` keyword arguments) :meth:`select` applies."""
        return {}

    def fit(self, open_features: np.ndarray, encoder: dict | None, run: Run, client_size: int) -> CloudSampler:
        """Cloud, step 1: k-means of the open pool float32 [N, d]; the fitted ``CloudSampler`` holds the
        centroids message (``message_``) for a client of ``client_size`` images (for ``num_clusters="auto"``)."""
        pool = len(open_features)
        sigma = self.round_noise()[0]
        k = resolve_num_clusters(self.num_clusters, pool, client_size, sigma, self.q)
        if self.num_clusters == "auto":
            log.info("num_clusters=auto: K=%d for %d open samples, %d client samples, sigma %g, q %d", k, pool,
                     client_size, sigma, self.q)
        cloud = CloudSampler(num_clusters=k, seed=run.seed, fp16=self.fp16, pca_dim=self.pca_dim, encoder=encoder,
                             use_gpu=run.faiss_gpu, progress=run.progress, auto_k=self.num_clusters == "auto",
                             **self.rules())
        cloud.fit(open_features)
        return cloud

    def restore(self, message: CentroidsMessage, open_features: np.ndarray, assignment: np.ndarray,
                members: np.ndarray, seed: int, parents: np.ndarray | None = None,
                previous_scores: ScoresMessage | None = None) -> CloudSampler:
        """The ``CloudSampler`` :meth:`fit` (or its ``refine``) gave, rebuilt in another process from what it
        saved."""
        return CloudSampler.restore(message, open_features, assignment, members, parents, previous_scores, seed=seed,
                                    **self.rules())

    def select(self, cloud: CloudSampler, scores: ScoresMessage, run: Run) -> Proxy:
        """Cloud, step 2: the proxy (indices, provenance, ``cluster_scores``) for the client's scores."""
        selection = cloud.select(scores, run.budget)
        return Proxy(selection.indices, selection.clusters, selection.scores,
                     cluster_scores=np.clip(scores.scores, 0, None))

    def client_size(self, inputs: Inputs) -> int:
        """How many images answer the probe (sizes ``num_clusters="auto"``)."""
        return inputs.client_size or len(inputs.client_features)

    def answer(self, down: bytes, inputs: Inputs, run: Run, round_index: int, noise_multiplier: float
               ) -> tuple[ScoresMessage, bytes, int]:
        """The client's answer to the centroids message ``down`` in round ``round_index`` (0-based) at sigma
        ``noise_multiplier``: the scores, the bytes released (hashed into the proxy's ``release_hash``) and
        the bytes sent up."""
        responder = ClientResponder(noise_multiplier=noise_multiplier, q=self.q, delta=run.delta,
                                    seed=round_seed(run.seed, round_index))
        up = responder.respond(CentroidsMessage.from_bytes(down), inputs.client_features).to_bytes()
        return ScoresMessage.from_bytes(up), up, len(up)

    def run(self, inputs, run):
        cloud = self.fit(inputs.open_features, inputs.encoder, run, self.client_size(inputs))
        down = up = 0
        released = hashlib.sha256()
        for round_index, sigma in enumerate(self.round_noise()):
            if round_index:
                cloud = cloud.refine(scores, self.sub_clusters)
            message = cloud.message_.to_bytes()
            scores, blob, sent = self.answer(message, inputs, run, round_index, sigma)
            down, up = down + len(message), up + sent
            released.update(blob)
        proxy = self.select(cloud, scores, run)
        return proxy.replace(bytes_down=down, bytes_up=up, release_hash=released.hexdigest())


def round_seed(seed: int, round_index: int) -> int:
    """The noise seed of a simulated answer in round ``round_index``: ``seed`` itself for the first round."""
    if round_index == 0:
        return seed
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1)[0])


class Ecos(CoverageSampler):
    """ECOS: centroids down, noisy centroid-coverage scores up, budget allocated by score.

    num_clusters: K centroids, or ``"auto"``: K from the pool size, the client size, sigma and q
        (``protocol.num_clusters``). q: nearest centroids each client sample counts for.
    noise_multiplier: sigma of the client's Gaussian noise on its scores (sensitivity sqrt(q)).
    fp16: send the centroids as float16 (half the bytes; ``bench/compression.py`` measures it free).
    pca_dim: send them projected to this many dimensions (None: the full feature dimension).
    noise_z, neighbour_z, candidate_factor, within_cluster: the cloud's sampling rules (``CloudSampler``).
    rounds: probes of the client, 1 or 2; a second round splits the clusters the first answer kept into up
        to ``sub_clusters`` sub-clusters (``CloudSampler.refine``) and asks again, and the selection combines
        both answers. first_round_share: the share of the privacy the first round spends (see
        :meth:`round_noise`); the rounds together cost what one answer at ``noise_multiplier`` does.
    """

    name = "ecos"

    def __init__(self, num_clusters: int | Literal["auto"] = "auto", q: int = 1, noise_multiplier: float = 8.0,
                 fp16: bool = True, pca_dim: int | None = None, noise_z: float = ECOS_RULES["noise_z"],
                 neighbour_z: float | None = ECOS_RULES["neighbour_z"],
                 candidate_factor: float = ECOS_RULES["candidate_factor"],
                 within_cluster: Literal["kcenter", "nearest", "random"] = ECOS_RULES["within_cluster"],
                 rounds: int = 1, first_round_share: float = 0.5, sub_clusters: int = 4):
        if num_clusters != "auto":
            positive_int(num_clusters, "num_clusters")
        self.num_clusters, self.q = num_clusters, positive_int(q, "q")
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        self.fp16, self.pca_dim = bool(fp16), pca_dim
        self.noise_z, self.neighbour_z, self.candidate_factor = noise_z, neighbour_z, candidate_factor
        self.within_cluster = within_cluster
        self.rounds, self.first_round_share, self.sub_clusters = check_rounds(rounds, first_round_share, sub_clusters)

    def rules(self):
        return {"noise_z": self.noise_z, "neighbour_z": self.neighbour_z, "candidate_factor": self.candidate_factor,
                "within_cluster": self.within_cluster}


def check_rounds(rounds, first_round_share, sub_clusters) -> tuple[int, float, int]:
    """``rounds`` 1 or 2, ``first_round_share`` in (0, 1) (1 allowed for one round), ``sub_clusters`` >= 2."""
    if positive_int(rounds, "rounds") > 2:
        raise ValueError(f"rounds must be 1 or 2 (the second round refines what the first found), got {rounds}")
    if isinstance(first_round_share, bool) or not isinstance(first_round_share, (int, float)) or \
            not (0 < first_round_share < 1 or first_round_share == 1 and rounds == 1):
        raise ValueError(f"first_round_share must be a number in (0, 1): the share of the privacy the first of "
                         f"{rounds} rounds spends, got {first_round_share!r}")
    if positive_int(sub_clusters, "sub_clusters") < 2:
        raise ValueError(f"sub_clusters must be at least 2 (each kept cluster is split into that many), got "
                         f"{sub_clusters}")
    return rounds, float(first_round_share), sub_clusters


class Baseline(Sampler):
    """A baseline of ``protocol.baselines`` that reads no client data."""

    def run(self, inputs, run):
        return Proxy(run_baseline(self.name, inputs.open_features, run.budget, seed=run.seed))


class Random(Baseline):
    """B images of the pool drawn uniformly."""

    name = "random"


class KCenter(Baseline):
    """B images of the pool by greedy k-center (coverage of the pool, not of the client)."""

    name = "kcenter"


class Full(Baseline):
    """The whole pool."""

    name = "full"

    def proxy_size(self, run, pool_size, client_size):
        return pool_size


class Upload(Sampler):
    """The non-private upper bound: the client uploads its features; the cloud takes their neighbours."""

    name = "upload"
    needs = frozenset({OPEN_FEATURES, CLIENT_FEATURES})

    def releases(self):
        return [{"mechanism": "non_private", "count": 1, "what": "upload: client data"}]

    def run(self, inputs, run):
        features = np.ascontiguousarray(inputs.client_features, dtype=np.float32)
        indices = run_baseline(self.name, inputs.open_features, run.budget, client_features=features, seed=run.seed)
        return Proxy(indices, bytes_up=features.nbytes, release_hash=hashlib.sha256(features.tobytes()).hexdigest())


class Local(Sampler):
    """Train on the client's own labelled data (not private: the data leaves the client)."""

    name = "local"
    source = "client"
    needs = frozenset({CLIENT_LABELS})

    def proxy_size(self, run, pool_size, client_size):
        return client_size

    def releases(self):
        return [{"mechanism": "non_private", "count": 1, "what": "local: client data"}]

    def run(self, inputs, run):
        labels = np.asarray(inputs.client_labels, dtype="<i8")
        return Proxy(np.arange(inputs.client_size), source="client",
                     release_hash=hashlib.sha256(labels.tobytes()).hexdigest())


SAMPLERS: dict[str, type] = {}


def register_sampler(cls: type) -> type:
    """Add the sampler class ``cls`` to the registry under ``cls.name``; usable as a class decorator."""
    return register(SAMPLERS, cls, Sampler, "sampler")


def get_sampler(spec, **overrides) -> Sampler:
    """The sampler ``spec`` names (see :func:`ecos_lightning.components.build`)."""
    return build(spec, SAMPLERS, Sampler, "sampler", overrides)


def select_proxy(sampler, open_features: np.ndarray, budget: int, *, client_features=None,
                 num_clusters: int | str = 100, q: int = 1, noise_multiplier: float = 8.0, delta: float = 1e-5,
                 seed: int = 0, fp16: bool = False, pca_dim: int | None = None, encoder: dict | None = None,
                 progress: bool = False, **rules) -> Proxy:
    """Run an open-pool sampler on feature arrays: the Proxy with its declared releases and epsilon.

    ``sampler``: a name, import path or object. Named by a string, it takes ``num_clusters`` (K or
    ``"auto"``), ``q``, ``noise_multiplier``, ``fp16``, ``pca_dim`` and the ECOS sampling ``rules``
    (``noise_z``, ``neighbour_z``, ``candidate_factor``, ``within_cluster``; see ``ECOS_RULES``) where its
    class has those parameters."""
    unknown = set(rules) - set(ECOS_RULES)
    if unknown:
        raise ValueError(f"unknown ECOS rules {sorted(unknown)}: use {sorted(ECOS_RULES)}")
    chosen = get_sampler(sampler, num_clusters=num_clusters, q=q, noise_multiplier=noise_multiplier, fp16=fp16,
                         pca_dim=pca_dim, **rules)
    if chosen.source != "open":
        raise ValueError(f"sampler {chosen.display_name()!r} does not select from the open pool")
    if CLIENT_FEATURES in chosen.needs and client_features is None:
        raise ValueError(f"client_features is required by the {chosen.display_name()!r} sampler")
    run, labels = Run(budget, delta, seed, progress), Unlabelled()
    start = time.perf_counter()
    inputs = Inputs(open_features=open_features, client_features=client_features, encoder=encoder)
    releases = planned_releases(chosen, labels, run, len(open_features), 0)
    proxy = build_proxy(inputs, chosen, labels, run, releases).replace(open="features")
    log.info("%s: %d proxy samples, epsilon %.3f at delta %g, %d bytes down, %d bytes up, %.2f s",
             chosen.display_name(), len(proxy), proxy.epsilon, delta, proxy.bytes_down, proxy.bytes_up,
             time.perf_counter() - start)
    return proxy


register_sampler(Ecos)
register_sampler(Random)
register_sampler(KCenter)
register_sampler(Full)
register_sampler(Upload)
register_sampler(Local)
