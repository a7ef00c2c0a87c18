"""Class-coverage labels: the release's sensitivity, its accounting, the cloud's query and label spreading,
the messages (hostile ones refused) and the label source through ProxyDataModule."""

import hashlib
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from ecos_lightning.protocol import class_coverage as cc
from ecos_lightning.encoders import spec_for_model
from ecos_lightning.components import Run
from ecos_lightning.label_sources import get_label_source
from ecos_lightning.protocol.container import MessageError, pack
from ecos_lightning.protocol.coverage_messages import (MAX_RESOLUTIONS, ClassHistogramMessage,
                                                       CoverageQueryMessage)
from ecos_lightning.protocol.privacy import gaussian_release, releases_epsilon
from ecos_lightning.samplers import Inputs
from ecos_lightning.proxy import Proxy

ENCODER = spec_for_model("efficientnet_lite0", weights="offline", input_size=32).to_dict()


def blobs(rng, centres: int = 4, per: int = 30, dim: int = 12, spread: float = 0.15):
    """Points [centres * per, dim] around ``centres`` random unit centres, and their centre ids."""
    means = rng.normal(size=(centres, dim))
    labels = np.repeat(np.arange(centres), per)
    return (means[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


@pytest.mark.parametrize("seed", range(5))
def test_one_client_sample_changes_each_histogram_by_one_in_one_cell(seed):
    """Removing any one sample changes the released counts by exactly 1 in one cell of each resolution: the
    L2 change per histogram is the declared sensitivity."""
    rng = np.random.default_rng(seed)
    proxy = rng.normal(size=(80, 16)).astype(np.float32)
    client = rng.normal(size=(60, 16)).astype(np.float32)
    labels = rng.integers(0, 7, 60)
    query = cc.coverage_query(proxy, clusters=(3, 8, 20), whiten_dim=10, seed=seed)
    full = cc.class_histogram(query, client, labels, 7)
    assert full.shape == (31, 7) and full[:3].sum() == full[3:11].sum() == full[11:].sum() == 60
    for drop in rng.choice(60, 10, replace=False):
        keep = np.arange(60) != drop
        change = full - cc.class_histogram(query, client[keep], labels[keep], 7)
        assert np.count_nonzero(change) == 3 and change.sum() == 3 and change.max() == 1
        start = 0
        for size in query.clusters:
            assert np.linalg.norm(change[start:start + size]) == pytest.approx(cc.SENSITIVITY)
            start += size


@pytest.mark.parametrize(("sigma", "resolutions"), [(4.22, 1), (7.3, 3), (2.0, 2)])
def test_epsilon_is_dp_accountings_for_the_declared_gaussian_releases(sigma, resolutions):
    record = cc.release(sigma, resolutions)
    assert record == gaussian_release(sigma, resolutions, what="class coverage histograms")
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), resolutions)
    pld = PLDAccountant().compose(event).get_epsilon(1e-5)
    rdp = RdpAccountant().compose(event).get_epsilon(1e-5)
    assert releases_epsilon([record], 1e-5) == pytest.approx(pld, rel=1e-9)
    assert releases_epsilon([record], 1e-5, accountant="rdp") == pytest.approx(rdp, rel=1e-9)
    # R histograms at sigma cost what one at sigma / sqrt(R) costs: Gaussian composition
    single = PLDAccountant().compose(dp_accounting.GaussianDpEvent(sigma / math.sqrt(resolutions))).get_epsilon(1e-5)
    assert pld == pytest.approx(single, rel=2e-3)


def test_release_histogram_adds_gaussian_noise_of_the_noise_multiplier():
    counts = np.zeros((200, 50))
    noisy = cc.release_histogram(counts, 3.0, np.random.default_rng(0))
    assert noisy.dtype == np.float32 and abs(noisy.std() - 3.0) < 0.05 and abs(noisy.mean()) < 0.05
    assert np.array_equal(cc.release_histogram(counts + 2, 0.0, np.random.default_rng(0)), counts + 2)
    with pytest.raises(ValueError, match="noise_multiplier"):
        cc.release_histogram(counts, -1.0, np.random.default_rng(0))


def test_query_maps_to_unit_vectors_and_caps_its_sizes():
    rng = np.random.default_rng(1)
    proxy = rng.normal(size=(31, 20)).astype(np.float32)
    query = cc.coverage_query(proxy, clusters=(4, 50), whiten_dim=64)
    assert query.projection.shape == (20, 3) and query.clusters == (4, 31)  # d' <= (B - 1) / 10, C <= B
    assert np.allclose(np.linalg.norm(query.map(proxy), axis=1), 1.0, atol=1e-5)
    assert query.assign(proxy).shape == (31, 2) and query.assign(proxy)[:, 1].min() >= 4
    assert cc.coverage_query(proxy, clusters=4, whiten_dim=2).projection.shape == (20, 2)
    with pytest.raises(ValueError, match="dimension 3"):
        query.map(np.ones((2, 3), np.float32))
    for bad in ((1,), (), (2,) * (MAX_RESOLUTIONS + 1), (2.5,), True):
        with pytest.raises(ValueError, match="clusters must be"):
            cc.coverage_query(proxy, clusters=bad)


def test_labels_spread_from_a_clear_histogram_and_abstain_where_unclear():
    rng = np.random.default_rng(2)
    points, truth = blobs(rng)
    client, client_labels = blobs(np.random.default_rng(2), spread=0.15)  # same centres, other samples
    client = client + 0.05 * rng.normal(size=client.shape).astype(np.float32)
    query = cc.coverage_query(points, clusters=(4, 12), whiten_dim=8)
    counts = cc.class_histogram(query, client, client_labels, 4)
    labels = cc.propagate_labels(query, points, counts)
    assert (labels == truth).mean() == 1.0
    nearest_only = cc.propagate_labels(query, points, counts, alpha=0.0)
    assert (nearest_only == truth).mean() == 1.0
    half = cc.propagate_labels(query, points, counts, label_fraction=0.5)
    assert (half == -1).sum() == 60 and (half[half >= 0] == truth[half >= 0]).all()
    noisy = cc.release_histogram(counts, 1.0, np.random.default_rng(0))
    assert (cc.propagate_labels(query, points, noisy) == truth).mean() > 0.9
    for kwargs, name in (({"alpha": 1.0}, "alpha"), ({"label_fraction": 0.0}, "label_fraction"),
                         ({"neighbours": 0}, "neighbours")):
        with pytest.raises(ValueError, match=name):
            cc.propagate_labels(query, points, counts, **kwargs)
    with pytest.raises(ValueError, match="noisy_counts"):
        cc.propagate_labels(query, points, counts[:3])


def test_many_classes_cost_the_cloud_no_more_than_the_centroids_and_give_the_same_labels(monkeypatch):
    """Classes without a positive count never win, and diffusion runs on at most min(centroid rows, classes
    with evidence) columns: a 10,000-class answer whose evidence sits in 4 classes labels exactly as the
    4-class answer does (class ids mapped), in blocks of images, and diffuses [B, <= rows] matrices."""
    rng = np.random.default_rng(5)
    points, _ = blobs(rng)
    query = cc.coverage_query(points, clusters=(4, 12), whiten_dim=8)
    counts = cc.release_histogram(cc.class_histogram(query, points, blobs(rng)[1], 4), 0.5, rng)
    columns = np.sort(rng.choice(10_000, size=4, replace=False))
    wide = np.full((len(counts), 10_000), -1.0, np.float32)  # noise below zero: no evidence
    wide[:, columns] = counts
    expected = {fraction: cc.propagate_labels(query, points, counts, label_fraction=fraction)
                for fraction in (1.0, 0.5)}
    widths = []
    diffuse = cc._diffuse
    monkeypatch.setattr(cc, "_diffuse", lambda graph, evidence, alpha: widths.append(evidence.shape[1]) or
                        diffuse(graph, evidence, alpha))
    monkeypatch.setattr(cc, "SCORE_BLOCK_CELLS", 50)  # several blocks of images
    for fraction, labels in expected.items():
        mapped = np.where(labels >= 0, columns[np.maximum(labels, 0)], -1)
        assert (cc.propagate_labels(query, points, wide, label_fraction=fraction) == mapped).all()
    assert widths == [5, 5]  # 4 classes with evidence and one standing for the other 9,996
    widths.clear()
    dense = rng.normal(size=(len(counts), 10_000)).astype(np.float32)  # noise: about half the cells positive
    labels = cc.propagate_labels(query, points, dense)
    assert widths == [len(counts)] and labels.min() >= 0 and labels.max() < 10_000


def test_one_class_with_a_label_fraction_labels_the_clearest_share():
    rng = np.random.default_rng(6)
    points, _ = blobs(rng)
    query = cc.coverage_query(points, clusters=(4,), whiten_dim=8)
    labels = cc.propagate_labels(query, points, np.ones((4, 1), np.float32), label_fraction=0.5)
    assert (labels == 0).sum() == len(points) // 2 and (labels == -1).sum() == len(points) - len(points) // 2


def test_each_resolution_votes_once_whatever_its_cluster_sizes():
    """An image whose coarse centroid leans to class 0 by raw counts (60 vs 40) but whose fine centroid holds
    only class 1 takes class 1: each resolution contributes one class distribution; negative noise counts
    nothing."""
    points = np.array([[0.0, 1.0], [0.0, 1.1], [1.0, 0.0]], np.float32)
    query = cc.CoverageQuery(np.eye(2, dtype=np.float32), np.zeros(2, np.float32),
                             np.array([[0, 1], [0, 1], [1, 0]], np.float32), (1, 2))
    counts = np.array([[60, 40], [0, 10], [-5, 3]], np.float32)
    np.testing.assert_allclose(cc.class_distributions(counts), [[0.6, 0.4], [0.0, 1.0], [0.0, 1.0]], rtol=1e-6)
    assert cc.propagate_labels(query, points[:2], counts, alpha=0.0).tolist() == [1, 1]
    assert cc.class_distributions(np.array([[-1.0, -2.0]])).tolist() == [[0.0, 0.0]]
    assert cc.propagate_labels(query, points[:2], -np.abs(counts)).tolist() == [-1, -1]  # no evidence: no label


def test_class_histogram_refuses_bad_labels():
    rng = np.random.default_rng(3)
    query = cc.coverage_query(rng.normal(size=(10, 4)).astype(np.float32), clusters=3, whiten_dim=3)
    features = rng.normal(size=(5, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"client_labels must lie in \[0, 1\]"):
        cc.class_histogram(query, features, np.array([0, 1, 2, 0, 1]), 2)
    with pytest.raises(ValueError, match="client_labels must be integers"):
        cc.class_histogram(query, features, np.zeros(4, np.int64), 2)


# ------------------------------------------------------------------------------------------------ messages
def query_message(rng=None) -> CoverageQueryMessage:
    rng = rng or np.random.default_rng(4)
    query = cc.coverage_query(rng.normal(size=(80, 12)).astype(np.float32), clusters=(3, 5), whiten_dim=6)
    return query.to_message(ENCODER, "0123456789abcdef", "ab" * 32)


def histogram_message(query_blob: bytes, rows: int = 8, **changes) -> ClassHistogramMessage:
    fields = dict(counts=np.ones((rows, 2), np.float32), class_names=("a", "b"),
                  query_digest=hashlib.sha256(query_blob).hexdigest(), noise_multiplier=7.3, resolutions=2,
                  delta=1e-5, epsilon=0.5, total_epsilon=0.9)
    return ClassHistogramMessage(**{**fields, **changes})


def test_messages_round_trip_and_tie_the_chain():
    query = query_message()
    blob = query.to_bytes()
    back = CoverageQueryMessage.from_bytes(blob)
    assert back.feature_dim == 12 and back.clusters.tolist() == [3, 5] and back.proxy == "0123456789abcdef"
    assert cc.CoverageQuery.from_message(back).clusters == (3, 5)
    histogram = ClassHistogramMessage.from_bytes(histogram_message(blob).to_bytes())
    assert histogram.class_names == ("a", "b") and histogram.answers(blob, back)
    assert not histogram_message(blob, rows=9, counts=np.ones((9, 2), np.float32)).answers(blob, back)
    assert not histogram.answers(blob + b"x", back)
    assert ClassHistogramMessage.from_bytes(histogram_message(blob, epsilon=math.inf).to_bytes()).epsilon == math.inf


def _query_fields(message):
    return dict(projection=message.projection, bias=message.bias, centroids=message.centroids,
                clusters=message.clusters, encoder=message.encoder, proxy=message.proxy,
                features=message.features)


@pytest.mark.parametrize(("change", "field"), [
    (lambda f: {"projection": f["projection"].astype(np.float64)}, "projection"),
    (lambda f: {"projection": np.ones((3, 6), np.float32)}, "projection"),  # d' > d
    (lambda f: {"bias": f["bias"][:2]}, "bias"),
    (lambda f: {"centroids": f["centroids"][:7]}, "centroids"),
    (lambda f: {"centroids": np.full_like(f["centroids"], np.nan)}, "centroids"),
    (lambda f: {"centroids": f["centroids"] * np.float32(1e20)}, "centroids"),  # finite, but overflows distances
    (lambda f: {"clusters": np.array([3, 5, 0], np.int64)}, "clusters"),
    (lambda f: {"clusters": np.ones(MAX_RESOLUTIONS + 1, np.int64)}, "clusters"),
    (lambda f: {"encoder": {"name": "x"}}, "encoder"),
    (lambda f: {"proxy": "../../etc"}, "proxy"),
    (lambda f: {"features": "ab" * 31}, "features"),
    (lambda f: {"features": None}, "features"),
])
def test_hostile_queries_are_refused_naming_the_field(change, field):
    fields = _query_fields(query_message())
    with pytest.raises(MessageError, match=f"^{field}"):
        CoverageQueryMessage(**{**fields, **change(fields)})


def test_a_query_whose_distances_overflow_counts_no_sample_twice():
    """Centroids finite in float32 but too large for their squared distances (faiss answers index -1, which
    would land in another resolution's row) are refused before anything is counted."""
    rng = np.random.default_rng(2)
    query = cc.coverage_query(rng.normal(size=(80, 12)).astype(np.float32), clusters=(3, 5), whiten_dim=6)
    poisoned = query.centroids.copy()
    poisoned[:3] = 1e20
    hostile = cc.CoverageQuery(query.projection, query.bias, poisoned, query.clusters)
    with pytest.raises(ValueError, match="overflow"):
        cc.class_histogram(hostile, rng.normal(size=(20, 12)).astype(np.float32), np.zeros(20, np.int64), 2)


def test_a_proxy_of_identical_images_is_refused_in_one_line():
    with pytest.raises(ValueError, match="^proxy_features: all 30 proxy images have the same features"):
        cc.coverage_query(np.ones((30, 8), np.float32), clusters=(2, 3), whiten_dim=4)


def test_hostile_query_bytes_are_refused():
    fields = _query_fields(query_message())
    tensors = {k: fields[k] for k in ("projection", "bias", "centroids", "clusters")}
    extra = pack("coverage_query", tensors, {"encoder": ENCODER, "proxy": fields["proxy"],
                                                     "features": fields["features"], "path": "/x"})
    with pytest.raises(MessageError, match="unexpected fields"):
        CoverageQueryMessage.from_bytes(extra)
    missing = pack("coverage_query", {k: v for k, v in tensors.items() if k != "bias"},
                   {"encoder": ENCODER, "proxy": fields["proxy"], "features": fields["features"]})
    with pytest.raises(MessageError, match="tensors"):
        CoverageQueryMessage.from_bytes(missing)
    with pytest.raises(MessageError, match="kind"):
        CoverageQueryMessage.from_bytes(histogram_message(b"").to_bytes())
    with pytest.raises(MessageError, match="exceeds the limit"):
        CoverageQueryMessage.from_bytes(query_message().to_bytes(), max_bytes=100)


@pytest.mark.parametrize(("change", "field"), [
    ({"counts": np.ones((8, 3), np.float32)}, "counts"),  # 3 columns, 2 class names
    ({"counts": np.full((8, 2), np.inf, np.float32)}, "counts"),
    ({"counts": np.ones((8, 2), np.float64)}, "counts"),
    ({"class_names": ("a", "a")}, "class_names"),
    ({"query_digest": "abc"}, "query_digest"),
    ({"noise_multiplier": -1.0}, "noise_multiplier"),
    ({"noise_multiplier": True}, "noise_multiplier"),
    ({"resolutions": 0}, "resolutions"),
    ({"resolutions": MAX_RESOLUTIONS + 1}, "resolutions"),
    ({"delta": 1.0}, "delta"),
    ({"epsilon": -0.1}, "epsilon"),
    ({"total_epsilon": math.nan}, "total_epsilon"),
])
def test_hostile_histograms_are_refused_naming_the_field(change, field):
    with pytest.raises(MessageError, match=f"^{field}"):
        histogram_message(b"", **change)


# ---------------------------------------------------------------------------------------------- label source
def test_label_source_declares_its_releases_and_labels_a_proxy():
    source = get_label_source("class_coverage", clusters=[4, 12], noise_multiplier=2.0, label_fraction=1.0)
    assert source.releases(10) == source.releases(10_000) == [cc.release(2.0, 2)]
    rng = np.random.default_rng(5)
    pool, truth = blobs(rng, per=40)
    client, client_labels = blobs(np.random.default_rng(5), per=40)
    proxy = Proxy(list(range(0, 160, 2)), release_hash="f" * 64)
    inputs = Inputs(open_features=pool, client_features=client, client_labels=client_labels, client_size=160,
                    encoder=ENCODER,
                    num_classes=4)
    labelled = source.run(proxy, inputs, Run(budget=80, seed=0))
    assert (np.asarray(labelled.labels) == truth[::2]).mean() > 0.9 and labelled.class_names == ["0", "1", "2", "3"]
    assert labelled.release_hash != proxy.release_hash
    assert source.run(proxy, inputs, Run(budget=80, seed=0)).labels == labelled.labels  # seeded
