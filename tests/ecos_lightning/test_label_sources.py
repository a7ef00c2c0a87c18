"""Label sources in a simulation: the client's label noise is its own stream, and the bytes it costs are counted."""

import numpy as np

from ecos_lightning import class_coverage
from ecos_lightning.label_sources import get_label_source
from ecos_lightning.proxy import Proxy
from ecos_lightning.samplers import Inputs, Run

RUN = Run(budget=20, seed=3)
COVERAGE = dict(clusters=[3, 5], noise_multiplier=2.0, label_fraction=1.0)
KNN = dict(k=5, noise_multiplier=2.0, sampling_rate=1.0)


def _inputs(rng):
    return Inputs(open_features=rng.normal(size=(60, 8)).astype(np.float32),
                  client_features=rng.normal(size=(40, 8)).astype(np.float32),
                  client_labels=np.arange(40) % 3, client_size=40, num_classes=3)


def test_simulated_label_noise_shares_no_draw_with_the_ecos_query(monkeypatch):
    """The ECOS responder draws its noise from ``default_rng(seed)``; a label release drawn from the same stream
    would let the cloud subtract the two releases' noise and read exact private counts."""
    draws = {"ecos": np.random.default_rng(RUN.seed).normal(size=500)}
    real = class_coverage.release_histogram

    def spy(counts, noise_multiplier, rng):
        draws["class_coverage"] = np.random.default_rng(rng.bit_generator.seed_seq).normal(size=500)
        return real(counts, noise_multiplier, rng)

    monkeypatch.setattr(class_coverage, "release_histogram", spy)
    proxy = Proxy(list(range(20)), bytes_down=100, bytes_up=10)
    get_label_source("class_coverage", **COVERAGE).run(proxy, _inputs(np.random.default_rng(0)), RUN)
    knn_seed = get_label_source("client_knn", **KNN).labeler(RUN).seed
    draws["client_knn"] = np.random.default_rng(knn_seed).normal(size=500)
    names = list(draws)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert abs(np.corrcoef(draws[a], draws[b])[0, 1]) < 0.2, (a, b)


def test_label_releases_add_their_bytes_to_the_proxys():
    proxy = Proxy(list(range(20)), bytes_down=100, bytes_up=10)
    inputs = _inputs(np.random.default_rng(1))
    coverage = get_label_source("class_coverage", **COVERAGE).run(proxy, inputs, RUN)
    knn = get_label_source("client_knn", **KNN).run(proxy, inputs, RUN)
    assert knn.bytes_down == 100 + 20 * 8 * 4 and knn.bytes_up == 10 + 20 * 8  # float32 queries, int64 labels
    rows = 3 + 5
    assert coverage.bytes_up == 10 + rows * 3 * 4  # float32 (centroid, class) counts
    assert coverage.bytes_down > 100 + rows * 4  # the whitening map and the centroids
