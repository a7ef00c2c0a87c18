"""Class-coverage labels across two machines: ecos-cloud coverage-query, ecos-client class-coverage,
ecos-cloud attach-coverage; the ledger, what the client writes, hostile messages."""

import dataclasses
import hashlib
import shutil

import numpy as np
import pytest

from ecos_lightning import label_sources
from ecos_lightning.protocol import class_coverage
from ecos_lightning.commands import client, cloud
from ecos_lightning.files import stable_hash
from ecos_lightning.client.ledger import ledger_epsilon, read_ledger
from ecos_lightning.protocol.container import pack
from ecos_lightning.protocol.coverage_messages import ClassHistogramMessage, CoverageQueryMessage
from ecos_lightning.protocol.privacy import gaussian_release, releases_epsilon
from ecos_lightning.proxy import Proxy

BUDGET = 24  # the proxy size of the sampled fixture (conftest.SAMPLED_BUDGET)


def one_error_line(err: str) -> bool:
    return err.strip().splitlines()[-1].startswith("error: ") and err.count("error:") == 1


def query(cli, probed, cloud_dir, *extra):
    return cli(cloud.main, "coverage-query", "--proxy", cloud_dir / "proxy.json", "--out", cloud_dir / "query.ecos",
               "--clusters", 2, 4, "--whiten-dim", 2, "--state", probed / "cloud_state", *extra)


def answer(cli, folders, cloud_dir, client_dir, *extra):
    return cli(client.main, "class-coverage", "--query", cloud_dir / "query.ecos", "--data", folders["labelled"],
               "--out", client_dir / "histogram.ecos", "--ledger", client_dir / "ledger.json",
               "--noise-multiplier", 1.0, *extra)


def attach(cli, probed, cloud_dir, histogram, *extra):
    return cli(cloud.main, "attach-coverage", "--proxy", cloud_dir / "proxy.json", "--query", cloud_dir / "query.ecos",
               "--histogram", histogram, "--out", cloud_dir / "labelled.json", "--state", probed / "cloud_state",
               *extra)


def test_two_machines_label_the_proxy_and_the_ledger_counts_the_histograms(cli, probed, folders, sampled, tree):
    cloud_dir, client_dir = sampled
    data_before = {name: tree(folders[name]) for name in ("client", "labelled")}
    code, out, err = query(cli, probed, cloud_dir)
    assert code == 0, err
    assert f"6 centroids of the proxy's {BUDGET} images at resolutions [2, 4], d'=2" in out
    message = CoverageQueryMessage.from_bytes((cloud_dir / "query.ecos").read_bytes())
    assert message.proxy == stable_hash(Proxy.read(cloud_dir / "proxy.json").indices)

    code, out, err = answer(cli, folders, cloud_dir, client_dir)
    assert code == 0, err
    assert "6 x 2 float32 noisy counts (2 histograms)" in out
    record = {**class_coverage.release(1.0, 2), "delta": 1e-5}
    histogram = ClassHistogramMessage.from_bytes((client_dir / "histogram.ecos").read_bytes())
    assert histogram.class_names == ("circle", "square") and histogram.counts.shape == (6, 2)
    assert histogram.epsilon == releases_epsilon([record], 1e-5)
    ledger = read_ledger(client_dir / "ledger.json")
    [scores_entry, entry] = ledger["entries"]
    digest = hashlib.sha256((cloud_dir / "query.ecos").read_bytes()).hexdigest()
    assert entry["releases"] == [{**record, "what": f"class coverage histograms, query {digest[:16]}"}]
    total = releases_epsilon([gaussian_release(8.0), record], 1e-5)
    assert histogram.total_epsilon == pytest.approx(total) and ledger_epsilon(client_dir / "ledger.json") == \
        pytest.approx(total)
    # the client wrote its messages and its ledger (and the ledger's lock), nothing else, nothing in its data
    assert sorted(p.name for p in client_dir.iterdir()) == ["histogram.ecos", "ledger.json", "ledger.json.lock",
                                                           "scores.ecos"]
    assert {name: tree(folders[name]) for name in ("client", "labelled")} == data_before

    code, out, err = attach(cli, probed, cloud_dir, client_dir / "histogram.ecos")
    assert code == 0, err
    proxy = Proxy.read(cloud_dir / "labelled.json")
    assert proxy.class_names == ["circle", "square"] and len(proxy.labels) == BUDGET and set(proxy.labels) <= {0, 1}
    assert proxy.epsilon == histogram.total_epsilon and proxy.delta == 1e-5
    sizes = [(cloud_dir / "query.ecos").stat().st_size, (client_dir / "histogram.ecos").stat().st_size]
    before = Proxy.read(cloud_dir / "proxy.json")
    assert (proxy.bytes_down, proxy.bytes_up) == (before.bytes_down + sizes[0], before.bytes_up + sizes[1])

    code, _, err = attach(cli, probed, cloud_dir, client_dir / "histogram.ecos", "--label-fraction", 0.5)
    assert code == 0, err
    assert Proxy.read(cloud_dir / "labelled.json").labels.count(-1) == BUDGET // 2


def test_the_ledger_records_the_release_before_the_message_is_written(cli, probed, folders, sampled, monkeypatch):
    cloud_dir, client_dir = sampled
    assert query(cli, probed, cloud_dir)[0] == 0

    def crash(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(client, "atomic_write_bytes", crash)
    code, _, err = answer(cli, folders, cloud_dir, client_dir)
    assert code == 2 and one_error_line(err) and "disk full" in err
    assert not (client_dir / "histogram.ecos").exists()
    assert len(read_ledger(client_dir / "ledger.json")["entries"]) == 2  # the charge stays


def test_dry_run_and_refusals_read_no_image(cli, probed, folders, sampled, monkeypatch, tree):
    cloud_dir, client_dir = sampled
    assert query(cli, probed, cloud_dir)[0] == 0
    ledger_bytes = (client_dir / "ledger.json").read_bytes()

    def forbidden(*args, **kwargs):
        raise AssertionError("no feature may be extracted")

    monkeypatch.setattr(client, "extract_features", forbidden)
    code, out, err = answer(cli, folders, cloud_dir, client_dir, "--dry-run")
    assert code == 0, err
    assert "would write" in out and not (client_dir / "histogram.ecos").exists()
    code, _, err = answer(cli, folders, cloud_dir, client_dir, "--max-epsilon", 0.5)
    assert code == 2 and one_error_line(err) and "refused" in err
    monkeypatch.setattr(label_sources, "MAX_CELLS", 11)  # 6 centroids x 2 classes = 12 cells
    code, _, err = answer(cli, folders, cloud_dir, client_dir)
    assert code == 2 and one_error_line(err) and "6 centroids x 2 classes > 11 cells" in err
    monkeypatch.undo()
    monkeypatch.setattr(client, "extract_features", forbidden)
    scan = client.scan_labelled_images
    long_names = ["\u6f22" * 85 + f"{i:04d}" for i in range(2300)]  # legal folder names; a 1.1 MB header
    monkeypatch.setattr(client, "scan_labelled_images", lambda root: dataclasses.replace(
        scan(root), class_names=long_names))
    code, _, err = answer(cli, folders, cloud_dir, client_dir)
    assert code == 2 and one_error_line(err) and "header" in err and "exceeds the limit" in err
    assert (client_dir / "ledger.json").read_bytes() == ledger_bytes
    assert sorted(p.name for p in client_dir.iterdir()) == ["ledger.json", "scores.ecos"]


def test_hostile_or_mismatched_messages_are_one_line_errors(cli, probed, folders, sampled, tmp_path):
    cloud_dir, client_dir = sampled
    assert query(cli, probed, cloud_dir)[0] == 0
    blob = (cloud_dir / "query.ecos").read_bytes()
    tampered = tmp_path / "tampered.ecos"
    tampered.write_bytes(blob[:-40] + bytes([blob[-40] ^ 1]) + blob[-39:])
    code, _, err = cli(client.main, "class-coverage", "--query", tampered, "--data", folders["labelled"], "--out",
                       client_dir / "h.ecos", "--ledger", client_dir / "ledger.json")
    assert code == 2 and one_error_line(err) and "checksum" in err

    message = CoverageQueryMessage.from_bytes(blob)
    other = CoverageQueryMessage(message.projection, message.bias, message.centroids, message.clusters,
                                 {**message.encoder, "name": "resnet18", "weights": "hub"}, message.proxy,
                                 message.features)
    foreign = tmp_path / "foreign.ecos"
    foreign.write_bytes(other.to_bytes())
    code, _, err = cli(client.main, "class-coverage", "--query", foreign, "--data", folders["labelled"], "--out",
                       client_dir / "h.ecos", "--ledger", client_dir / "ledger.json")
    assert code == 2 and one_error_line(err) and "resnet18" in err

    # centroids finite in float32 whose squared distances overflow (faiss would answer index -1)
    ledger_bytes = (client_dir / "ledger.json").read_bytes()
    huge = tmp_path / "huge.ecos"
    huge.write_bytes(pack(CoverageQueryMessage.KIND, {
        "projection": message.projection, "bias": message.bias, "centroids": message.centroids * np.float32(1e20),
        "clusters": message.clusters}, {"encoder": message.encoder, "proxy": message.proxy,
                                             "features": message.features}))
    code, _, err = cli(client.main, "class-coverage", "--query", huge, "--data", folders["labelled"], "--out",
                       client_dir / "h.ecos", "--ledger", client_dir / "ledger.json")
    assert code == 2 and one_error_line(err) and "centroids: a row has L2 norm above" in err
    assert (client_dir / "ledger.json").read_bytes() == ledger_bytes and not (client_dir / "h.ecos").exists()

    # histograms that answer another query, or with rows the query does not have
    stranger = ClassHistogramMessage(np.zeros((6, 2), np.float32), ("circle", "square"), "0" * 64, 1.0, 2, 1e-5,
                                     0.5, 0.9)
    wrong_rows = ClassHistogramMessage(np.zeros((5, 2), np.float32), ("circle", "square"),
                                       hashlib.sha256(blob).hexdigest(), 1.0, 2, 1e-5, 0.5, 0.9)
    for bad in (stranger, wrong_rows):
        path = tmp_path / "bad.ecos"
        path.write_bytes(bad.to_bytes())
        code, _, err = attach(cli, probed, cloud_dir, path)
        assert code == 2 and one_error_line(err) and "does not answer" in err
    assert not (cloud_dir / "labelled.json").exists()

    # a query made for another proxy set
    proxy = Proxy.read(cloud_dir / "proxy.json")
    proxy.replace(indices=list(reversed(proxy.indices))).write(cloud_dir / "proxy.json")
    path = tmp_path / "ok.ecos"
    path.write_bytes(ClassHistogramMessage(np.zeros((6, 2), np.float32), ("circle", "square"),
                                           hashlib.sha256(blob).hexdigest(), 1.0, 2, 1e-5, 0.5, 0.9).to_bytes())
    code, _, err = attach(cli, probed, cloud_dir, path)
    assert code == 2 and one_error_line(err) and "another proxy set" in err


def test_attach_refuses_a_state_probed_again_with_another_encoder(cli, probed, folders, sampled, tmp_path):
    """The query names the encoder and the features digest it was made from; a state re-probed in between
    (same pool, same feature length, other weights) would label the proxy from other features."""
    cloud_dir, client_dir = sampled
    reprobed = tmp_path / "reprobed"
    shutil.copytree(probed, reprobed)
    assert query(cli, reprobed, cloud_dir)[0] == 0
    assert answer(cli, folders, cloud_dir, client_dir)[0] == 0
    code, _, err = cli(cloud.main, "probe", "--open", folders["open"], "--out", reprobed / "centroids.ecos",
                       "--num-clusters", 6, "--input-size", 32, "--encoder-weights", "none",
                       "--state", reprobed / "cloud_state")
    assert code == 0, err
    code, _, err = attach(cli, reprobed, cloud_dir, client_dir / "histogram.ecos")
    assert code == 2 and one_error_line(err) and "coverage-query` again" in err
    assert not (cloud_dir / "labelled.json").exists()
