"""Label sources in a simulation: the client's label noise is its own stream, and the bytes it costs are counted."""

import numpy as np

from ecos_lightning.protocol import class_coverage
from ecos_lightning.label_sources import get_label_source
from ecos_lightning.protocol.encoder_spec import EncoderSpec
from ecos_lightning.protocol.coverage_messages import ClassHistogramMessage, CoverageQueryMessage
from ecos_lightning.protocol.label_messages import LabelsMessage, QueriesMessage
from ecos_lightning.proxy import Proxy
from ecos_lightning.samplers import Inputs, Run

ENCODER = EncoderSpec(input_size=32).to_dict()
RUN = Run(budget=20, seed=3)
COVERAGE = dict(clusters=[3, 5], noise_multiplier=2.0, label_fraction=1.0)
KNN = dict(k=5, noise_multiplier=2.0, sampling_rate=1.0)


def _inputs(rng):
    return Inputs(open_features=rng.normal(size=(60, 8)).astype(np.float32), encoder=ENCODER,
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
    knn = get_label_source("client_knn", **KNN)
    knn_seed = knn.labeler(knn.noise_seed(RUN)).seed
    draws["client_knn"] = np.random.default_rng(knn_seed).normal(size=500)
    names = list(draws)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert abs(np.corrcoef(draws[a], draws[b])[0, 1]) < 0.2, (a, b)


def test_label_releases_add_their_messages_bytes_to_the_proxys(monkeypatch):
    """In one process the label sources exchange the two-machine messages, and the bytes counted are those
    messages' lengths: the payload (float32 queries, int64 labels, float32 counts) plus the frame."""
    proxy = Proxy(list(range(20)), bytes_down=100, bytes_up=10)
    inputs = _inputs(np.random.default_rng(1))
    sent = []
    for cls in (QueriesMessage, LabelsMessage, CoverageQueryMessage, ClassHistogramMessage):
        monkeypatch.setattr(cls, "to_bytes", _recording(cls.to_bytes, sent))
    coverage = get_label_source("class_coverage", **COVERAGE).run(proxy, inputs, RUN)
    knn = get_label_source("client_knn", **KNN).run(proxy, inputs, RUN)
    sizes = {kind: len(blob) for kind, blob in sent}
    assert knn.bytes_down == 100 + sizes["queries"] and knn.bytes_up == 10 + sizes["labels"]
    assert coverage.bytes_down == 100 + sizes["coverage_query"] and coverage.bytes_up == 10 + sizes["class_histogram"]
    rows = 3 + 5
    assert sizes["queries"] > 20 * 8 * 4 and sizes["labels"] > 20 * 8 and sizes["class_histogram"] > rows * 3 * 4
    assert sizes["coverage_query"] > rows * 4  # the whitening map and the centroids


def _recording(to_bytes, sent: list):
    def record(message):
        blob = to_bytes(message)
        sent.append((message.KIND, blob))
        return blob
    return record
