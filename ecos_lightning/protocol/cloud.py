"""The cloud side of ECOS: cluster the open pool, send centroids, sample a proxy set from scores."""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass

import numpy as np

from . import faiss_ops
from .messages import CentroidsMessage, ScoresMessage
from .num_clusters import FAISS_MIN_POINTS_PER_CENTROID
from .selection import WITHIN_CLUSTER, allocate_budget, select_near_centroid
from .validation import as_features, non_negative_float, positive_int

log = logging.getLogger(__name__)

#: :meth:`CloudSampler.refine` splits a kept cluster into at most one sub-cluster per this many members.
MIN_SUB_CLUSTER = 8


@dataclass(frozen=True)
class Selection:
    """A proxy set with provenance. All arrays are aligned with ``indices``.

    indices: int64 [B] unique indices into the open pool, grouped by cluster.
    clusters: int64 [B] cluster of each index.
    scores: float32 [B] clipped score of that cluster.
    allocation: int64 [K] how many were taken from each cluster.
    kept: bool [K] clusters whose score passed the threshold.
    """

    indices: np.ndarray
    clusters: np.ndarray
    scores: np.ndarray
    allocation: np.ndarray
    kept: np.ndarray


class CloudSampler:
    """Clusters open-source features, writes the centroids message, and samples from noisy scores.

    Args:
        num_clusters: K, the number of k-means centroids sent to the client (``num_clusters.auto_num_clusters``
            chooses one from the pool size, the client size and the noise).
        seed: seeds k-means and the PCA sample.
        niter, nredo, max_points_per_centroid, spherical: passed to ``faiss.Kmeans``.
        fp16: send centroids as float16 (half the bytes down).
        pca_dim: project centroids to this many dimensions; the PCA map travels in the message.
        encoder: encoder spec dict (``EncoderSpec.to_dict()``) the client must use, or None.
        noise_z: a cluster is kept only if its score exceeds ``noise_z`` noise standard deviations
            (0: every cluster with a positive score gets budget).
        min_score: and exceeds this absolute count.
        neighbour_z: a second look at the dropped clusters (None: off): one whose score exceeds ``neighbour_z``
            noise std (and ``min_score``) is kept too when its nearest other centroid is a kept cluster's, so a
            client region split across neighbouring clusters keeps its weaker part while a lone cluster far
            from the kept ones stays dropped. Post-processing of the released scores and the public
            centroids: no privacy cost.
        candidate_factor: candidates per cluster = ``candidate_factor`` x its allocation, nearest to
            the centroid first (``inf``: every member of the cluster).
        within_cluster: how each cluster's allocation is taken among its candidates: ``"kcenter"``
            (k-center greedy from the nearest, diverse), ``"nearest"`` (the nearest members, the candidate
            factor plays no part) or ``"random"`` (uniformly at random, seeded by ``seed``). Plain
            score-proportional sampling is ``noise_z=0, within_cluster="random", candidate_factor=inf``.
        use_gpu: run k-means and the assignment on every GPU faiss sees (default: when it sees one). GPU
            arithmetic rounds differently, so a GPU's proxy may differ from the CPU's; ``use_gpu=False`` is
            the switch for bit-reproducible runs: faiss on the CPU gives the same result for the same seed
            at any thread count.
        num_threads: faiss OpenMP threads (default: all cores).
        progress: show a progress bar over the assignment of the pool.
        verbose: print faiss's k-means iteration lines (stdout; off unless asked).
        auto_k: ``num_clusters`` was chosen by ``num_clusters='auto'`` (the warnings then do not suggest it).
    """

    def __init__(self, num_clusters: int = 100, *, seed: int = 0, niter: int = 20, nredo: int = 1,
                 max_points_per_centroid: int = 64, spherical: bool = False, fp16: bool = False,
                 pca_dim: int | None = None, encoder: dict | None = None, noise_z: float = 3.0,
                 min_score: float = 0.0, neighbour_z: float | None = None, candidate_factor: float = 3.0,
                 within_cluster: str = "kcenter",
                 use_gpu: bool | None = None, num_threads: int | None = None, progress: bool = False,
                 verbose: bool = False, auto_k: bool = False):
        self.num_clusters = positive_int(num_clusters, "num_clusters")
        self.seed = int(seed)
        self.niter = positive_int(niter, "niter")
        self.nredo = positive_int(nredo, "nredo")
        self.max_points_per_centroid = positive_int(max_points_per_centroid, "max_points_per_centroid")
        self.spherical = bool(spherical)
        self.fp16 = bool(fp16)
        self.pca_dim = None if pca_dim is None else positive_int(pca_dim, "pca_dim")
        self.encoder = encoder
        self.noise_z = non_negative_float(noise_z, "noise_z")
        self.min_score = non_negative_float(min_score, "min_score")
        self.neighbour_z = None if neighbour_z is None else non_negative_float(neighbour_z, "neighbour_z")
        if isinstance(candidate_factor, bool) or not isinstance(candidate_factor, (int, float)) or \
                not candidate_factor >= 1:
            raise ValueError(f"candidate_factor must be a number >= 1 (inf: every member), got {candidate_factor!r}")
        self.candidate_factor = float(candidate_factor)
        if within_cluster not in WITHIN_CLUSTER:
            raise ValueError(f"within_cluster must be one of {WITHIN_CLUSTER}, got {within_cluster!r}")
        self.within_cluster = within_cluster
        self.use_gpu = faiss_ops.gpu_available() if use_gpu is None else bool(use_gpu)
        self.num_threads = num_threads
        self.progress, self.verbose, self.auto_k = bool(progress), bool(verbose), bool(auto_k)
        self.features_: np.ndarray | None = None
        self.parents_: np.ndarray | None = None  # a refined round's (see refine)
        self.previous_scores_: ScoresMessage | None = None

    # ------------------------------------------------------------------ probe
    def fit(self, open_features) -> CentroidsMessage:
        """Cluster ``open_features`` [N, d] and return the centroids message for the client.

        Keeps a reference to the features (no copy when already float32 C-contiguous), the
        assignment ``assignment_`` [N] and ``member_order_`` [N]: pool indices grouped by cluster,
        each cluster's members nearest to its centroid first.
        """
        features = as_features(open_features, "open_features")
        faiss_ops.configure_threads(self.num_threads)
        n, d = features.shape
        k = self.num_clusters
        if k > n:
            warnings.warn(f"num_clusters={k} > {n} open samples: using K={n}, one point per cluster; use "
                          f"num_clusters='auto' or num_clusters <= {max(1, n // FAISS_MIN_POINTS_PER_CENTROID)}",
                          stacklevel=2)
            k = n
        elif n < FAISS_MIN_POINTS_PER_CENTROID * k:
            warnings.warn(f"num_clusters={k} leaves {n / k:.1f} of the {n} open samples per centroid, under the "
                          f"{FAISS_MIN_POINTS_PER_CENTROID} k-means needs to place them well: use num_clusters='auto' "
                          f"or num_clusters <= {max(1, n // FAISS_MIN_POINTS_PER_CENTROID)}, or a larger pool",
                          stacklevel=2)
        if self.pca_dim is not None and self.pca_dim > d:
            raise ValueError(f"pca_dim={self.pca_dim} exceeds the feature dimension {d}: pass pca_dim <= {d}")
        if k == n:
            centroids = features.copy()
        else:
            centroids = faiss_ops.kmeans(
                features, k, niter=self.niter, nredo=self.nredo, seed=self.seed,
                max_points_per_centroid=self.max_points_per_centroid, spherical=self.spherical,
                use_gpu=self.use_gpu, verbose=self.verbose)
        sq_dist, labels = faiss_ops.nearest(features, centroids, k=1, use_gpu=self.use_gpu,
                                            desc="assigning to centroids" if self.progress else None)
        if k == n:  # duplicate points may tie: pin each point to its own cluster
            labels[:, 0], sq_dist[:, 0] = np.arange(n), 0.0
        assignment = labels[:, 0]
        member_order = np.lexsort((sq_dist[:, 0], assignment))  # by cluster, nearest to the centroid first
        projection = bias = None
        sent = centroids
        if self.pca_dim is not None:
            projection, bias = faiss_ops.pca(features, self.pca_dim, max_train_points=100_000, seed=self.seed)
            sent = centroids @ projection + bias
        if self.fp16:
            sent = sent.astype(np.float16)
        self._set_fitted(features, assignment, member_order,
                         CentroidsMessage(np.ascontiguousarray(sent), projection, bias, self.encoder))
        log.info("k-means: %d open samples, d=%d -> K=%d clusters (sizes %d..%d); %d bytes down",
                 n, d, k, self.cluster_sizes_.min(), self.cluster_sizes_.max(), len(self.message_.to_bytes()))
        return self.message_

    @classmethod
    def restore(cls, message: CentroidsMessage, open_features, assignment: np.ndarray, member_order: np.ndarray,
                parents: np.ndarray | None = None, previous_scores: ScoresMessage | None = None,
                **kwargs) -> "CloudSampler":
        """A fitted sampler rebuilt from a saved fit (``message_``, ``assignment_``, ``member_order_``),
        so :meth:`select` works in another process without running k-means again. ``ValueError``
        unless ``member_order`` holds every pool index once, grouped by the cluster ``assignment`` gives it."""
        features = as_features(open_features, "open_features")
        assignment = np.asarray(assignment, dtype=np.int64)
        member_order = np.asarray(member_order, dtype=np.int64)
        n, k = features.shape[0], message.num_clusters
        if assignment.shape != (n,) or member_order.shape != (n,) or not 0 <= assignment.min() <= assignment.max() < k:
            raise ValueError(f"assignment and member_order must be [{n}] with clusters in [0, {k})")
        if not (np.array_equal(np.sort(member_order), np.arange(n)) and np.all(np.diff(assignment[member_order]) >= 0)):
            raise ValueError("assignment and member_order: member_order must hold every pool index once, grouped by "
                             "cluster")
        sampler = cls(num_clusters=k, encoder=message.encoder, **kwargs)
        sampler._set_fitted(features, assignment, member_order, message)
        if previous_scores is not None:
            sampler._set_refinement(np.asarray(parents), previous_scores)
        return sampler

    def _set_refinement(self, parents: np.ndarray, previous_scores: ScoresMessage) -> None:
        """Mark this fit as the refined round of ``previous_scores`` (see :meth:`refine`); ``ValueError`` unless
        ``parents`` [K'] maps each cluster into the previous round's clusters, each of which it covers."""
        k = previous_scores.num_clusters
        if parents.dtype != np.int64 or parents.shape != (self.message_.num_clusters,) or \
                not (parents.size and 0 <= parents.min() and parents.max() < k) or len(np.unique(parents)) != k:
            raise ValueError(f"parents must be int64 [{self.message_.num_clusters}] covering the {k} clusters of the "
                             "previous round")
        self.parents_, self.previous_scores_ = parents, previous_scores

    def _set_fitted(self, features, assignment, member_order, message) -> None:
        self.features_ = features
        self.assignment_ = assignment
        self.member_order_ = member_order
        self.message_ = message
        self.cluster_sizes_ = np.bincount(assignment, minlength=message.num_clusters)
        self._member_starts = np.concatenate([[0], np.cumsum(self.cluster_sizes_)])

    def members(self, cluster: int) -> np.ndarray:
        """Open-pool indices of one cluster, nearest to its centroid first."""
        return self.member_order_[self._member_starts[cluster]:self._member_starts[cluster + 1]]

    # ----------------------------------------------------------------- sample
    def sample(self, scores: ScoresMessage, budget: int) -> np.ndarray:
        """Unique int64 indices into the open pool: the proxy set for ``scores``. See :meth:`select`."""
        return self.select(scores, budget).indices

    def select(self, scores: ScoresMessage, budget: int) -> Selection:
        """Sample ``budget`` open samples guided by the client's noisy scores, with provenance.

        Scores are clipped at 0; clusters at or below ``max(min_score, noise_z * noise_std)`` are
        dropped, except (with ``neighbour_z``) those above ``max(min_score, neighbour_z * noise_std)`` whose
        nearest other centroid belongs to a kept cluster; the budget is split over the kept clusters in
        proportion to score (largest remainder, capped by cluster size, overflow redistributed); each
        cluster's share is taken among its ``candidate_factor`` x share nearest members as ``within_cluster``
        says (default: k-center greedy, which removes redundancy).
        """
        if self.features_ is None:
            raise RuntimeError("call fit(open_features) before sampling")
        budget = positive_int(budget, "budget")
        if not isinstance(scores, ScoresMessage):
            raise ValueError(f"scores must be a ScoresMessage, got {type(scores).__name__}")
        scores.check_answers(self.message_)
        n = self.features_.shape[0]
        clipped = np.clip(scores.scores, 0.0, None)
        if budget >= n:
            if budget > n:
                warnings.warn(f"budget={budget} exceeds the open pool ({n}): returning the whole pool; pass "
                              f"budget <= {n}", stacklevel=2)
            return self._selection(np.arange(n, dtype=np.int64), clipped,
                                   np.bincount(self.assignment_, minlength=len(clipped)),
                                   np.ones(len(clipped), dtype=bool))

        if self.previous_scores_ is None:
            kept, threshold, rescued = self._kept(clipped, scores.noise_std)
        else:
            clipped, kept, threshold = self._refined_scores(scores)
            rescued = 0
        weights = np.where(kept, clipped, 0.0)
        if not kept.any() and (clipped > 0).any():
            warnings.warn(f"no cluster scores above the noise threshold {threshold:.2f} ({self.noise_z:g} x noise "
                          f"std {scores.noise_std:.2f}): keeping every cluster with a positive score, so the proxy "
                          f"is close to random; use {self._fewer_clusters()} (each then collects more of the client's "
                          "counts), or a lower noise_multiplier", stacklevel=2)
            kept, weights = clipped > 0, clipped
        elif not kept.any():
            warnings.warn("every score is zero or negative: the client covers no centroid; falling back to "
                          f"uniform allocation over clusters (a random proxy); use {self._fewer_clusters()}, or a "
                          "lower noise_multiplier", stacklevel=2)
            kept, weights = np.ones_like(kept), np.ones_like(clipped)
        allocation = allocate_budget(weights, self.cluster_sizes_, budget)
        short = budget - int(allocation.sum())
        if short > 0:
            warnings.warn(f"kept clusters hold only {int(allocation.sum())} samples: taking {short} more "
                          f"from the other clusters, highest score first; use a budget <= {int(allocation.sum())}, "
                          f"or {self._fewer_clusters()} so more of them clear the noise threshold", stacklevel=2)
            allocation += self._fill_from_dropped(kept, clipped, short)

        rng = np.random.default_rng(self.seed)  # used by within_cluster="random" only
        picks = [select_near_centroid(self.features_, self.members(c), int(a), self.candidate_factor,
                                      self.within_cluster, rng)
                 for c, a in enumerate(allocation) if a > 0]
        indices = np.concatenate(picks).astype(np.int64)
        log.info("selection: kept %d/%d clusters (threshold %.2f; %d of them next to a kept one); budget %d over "
                 "%d clusters; %d bytes up", int(kept.sum()), len(kept), threshold, rescued, budget,
                 int((allocation > 0).sum()), len(scores.to_bytes()))
        return self._selection(indices, clipped, allocation, kept)

    def _kept(self, clipped: np.ndarray, noise_std: float) -> tuple[np.ndarray, float, int]:
        """bool [K]: the clusters whose clipped score [K] clears the threshold (or, with ``neighbour_z``, sits
        next to one that does); the threshold; how many were kept as neighbours."""
        threshold = max(self.min_score, self.noise_z * noise_std)
        kept = clipped > threshold
        rescued = 0
        if self.neighbour_z is not None and kept.any():
            second = self._next_to_kept(kept, clipped > max(self.min_score, self.neighbour_z * noise_std))
            rescued, kept = int(second.sum()), kept | second
        return kept, threshold, rescued

    def _refined_scores(self, scores: ScoresMessage) -> tuple[np.ndarray, np.ndarray, float]:
        """A refined round's selection weights [K'] from both answers: each first-round cluster's count is the
        inverse-variance mean of its first answer and the sum of its sub-clusters' second answers; it is kept
        when that mean clears ``noise_z`` of its own noise std (and ``min_score``), and its weight is shared
        among its sub-clusters in proportion to their clipped second answers (equally where all are zero).
        Returns the weights, the kept sub-clusters and the largest threshold."""
        first, parents = self.previous_scores_, self.parents_
        k = first.num_clusters
        parts = np.bincount(parents, minlength=k)
        second = np.bincount(parents, weights=scores.scores.astype(np.float64), minlength=k)
        var_first, var_second = first.noise_std ** 2, parts * scores.noise_std ** 2
        if first.noise_std == 0 or scores.noise_std == 0:  # an exact answer is the count
            count, std = first.scores.astype(np.float64) if first.noise_std == 0 else second, np.zeros(k)
        else:
            precision = 1.0 / var_first + 1.0 / var_second
            count, std = (first.scores / var_first + second / var_second) / precision, precision ** -0.5
        thresholds = np.maximum(self.min_score, self.noise_z * std)
        count = np.clip(count, 0.0, None)
        kept = count > thresholds
        sub = np.clip(scores.scores.astype(np.float64), 0.0, None)
        total = np.bincount(parents, weights=sub, minlength=k)[parents]
        share = np.where(total > 0, sub / np.where(total > 0, total, 1.0), 1.0 / parts[parents])
        return count[parents] * share, kept[parents], float(thresholds.max())

    # ----------------------------------------------------------------- refine
    def refine(self, scores: ScoresMessage, sub_clusters: int) -> "CloudSampler":
        """The next round's fitted sampler: each cluster whose score in ``scores`` clears the threshold is
        split into up to ``sub_clusters`` sub-clusters (k-means of its members, seeded; one per
        ``MIN_SUB_CLUSTER`` members at most), every other centroid is sent again unchanged, so the client's
        next answer counts its samples at a finer grain where it holds them. Same encoder, PCA map and
        precision as this round's message. ``parents_`` int64 [K']: the cluster of this round each new
        cluster comes from (kept clusters' sub-clusters last, in cluster order); ``previous_scores_``: this
        round's answer, which :meth:`select` combines with the next (see :meth:`_refined_scores`). A sampler
        refines once: two rounds at most."""
        if self.features_ is None:
            raise RuntimeError("call fit(open_features) before refining")
        if self.previous_scores_ is not None:
            raise ValueError("this sampler is already a refined round: ECOS runs two rounds at most")
        sub_clusters = positive_int(sub_clusters, "sub_clusters")
        scores.check_answers(self.message_)
        kept, _, _ = self._kept(np.clip(scores.scores, 0.0, None), scores.noise_std)
        sent, projection, bias = self.message_.centroids_f32(), self.message_.projection, self.message_.bias
        assignment = np.empty_like(self.assignment_)
        parents, centroids, squared = [], [], np.zeros(len(self.assignment_), np.float32)
        parts_of = {int(c): min(sub_clusters, int(self.cluster_sizes_[c]) // MIN_SUB_CLUSTER)
                    for c in np.flatnonzero(kept)}
        split = [c for c, parts in parts_of.items() if parts > 1]
        whole = np.setdiff1d(np.arange(self.message_.num_clusters), split)
        for new, c in enumerate(whole):
            members = self.members(c)
            assignment[members], squared[members] = new, np.arange(len(members), dtype=np.float32)
        parents.extend(whole.tolist())
        centroids.append(sent[whole])
        for c in split:
            members, parts = self.members(c), parts_of[c]
            points = np.ascontiguousarray(self.features_[members])
            sub = faiss_ops.kmeans(points, parts, niter=self.niter, nredo=self.nredo, seed=self.seed + c + 1,
                                   max_points_per_centroid=self.max_points_per_centroid, spherical=self.spherical,
                                   use_gpu=self.use_gpu)
            distance, label = faiss_ops.nearest(points, sub, k=1, use_gpu=self.use_gpu)
            assignment[members], squared[members] = len(parents) + label[:, 0], distance[:, 0]
            parents.extend([c] * parts)
            centroids.append(sub if projection is None else sub @ projection + bias)
        stacked = np.concatenate(centroids).astype(self.message_.centroids.dtype)
        message = CentroidsMessage(np.ascontiguousarray(stacked), projection, bias, self.encoder)
        refined = copy.copy(self)
        refined.num_clusters = message.num_clusters
        refined._set_fitted(self.features_, assignment, np.lexsort((squared, assignment)), message)
        refined._set_refinement(np.asarray(parents, dtype=np.int64), scores)
        log.info("refine: %d of %d clusters split into %d sub-clusters; %d centroids, %d bytes down", len(split),
                 len(kept), message.num_clusters - len(whole), message.num_clusters, len(message.to_bytes()))
        return refined

    def _fewer_clusters(self) -> str:
        """The remedy for too few clusters clearing the noise, worded for how K was chosen."""
        if self.auto_k:
            return f"fewer clusters (a num_clusters below the automatic K={self.num_clusters})"
        return "num_clusters='auto' or fewer clusters"

    def _next_to_kept(self, kept: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """bool [K]: the dropped ``candidates`` [K] whose nearest other centroid (squared L2 in the sent
        centroids' space, ties: lowest index) is a ``kept`` [K] cluster's."""
        centroids = self.message_.centroids.astype(np.float64)
        sq = np.einsum("ij,ij->i", centroids, centroids)
        distances = sq[:, None] - 2.0 * centroids @ centroids.T + sq[None, :]
        np.fill_diagonal(distances, np.inf)
        return candidates & ~kept & kept[np.argmin(distances, axis=1)]

    def _fill_from_dropped(self, kept: np.ndarray, clipped: np.ndarray, short: int) -> np.ndarray:
        extra = np.zeros(len(kept), dtype=np.int64)
        for c in np.lexsort((-self.cluster_sizes_, -clipped)):
            if short == 0:
                break
            if kept[c]:
                continue
            extra[c] = min(short, int(self.cluster_sizes_[c]))
            short -= int(extra[c])
        return extra

    def _selection(self, indices, clipped, allocation, kept) -> Selection:
        clusters = self.assignment_[indices]
        return Selection(indices, clusters, clipped[clusters].astype(np.float32), allocation, kept)

