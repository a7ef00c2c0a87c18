"""The generic two-machine steps (ecos-cloud query, ecos-client answer, ecos-cloud absorb) over a label source
registered from a test file, and a sampler of two rounds (ecos-cloud refine): the same calls, the same messages,
the same labels and proxies as in one process, and the client's ledger holds exactly what it released."""

import dataclasses

import numpy as np
import pytest

from ecos_lightning import label_sources
from ecos_lightning.commands import client, cloud, parse_settings
from ecos_lightning.commands.cloud import CloudState
from ecos_lightning.components import Inputs, Run
from ecos_lightning.data.folders import PathImageDataset, scan_images, scan_labelled_images
from ecos_lightning.encoders import build_encoder, extract_features
from ecos_lightning.client.ledger import read_ledger
from ecos_lightning.protocol import CentroidsMessage
from ecos_lightning.protocol.encoder_spec import EncoderSpec
from ecos_lightning.protocol.label_messages import LabelsMessage
from ecos_lightning.proxy import Proxy
from ecos_lightning.samplers import get_sampler

import train_helpers


def one_error_line(err: str) -> bool:
    return err.strip().splitlines()[-1].startswith("error: ") and err.count("error:") == 1


@pytest.fixture
def toy_votes(monkeypatch):
    monkeypatch.setattr(label_sources, "LABEL_SOURCES", dict(label_sources.LABEL_SOURCES))
    label_sources.register_label_source(train_helpers.ToyVotes)


def test_a_label_source_from_a_test_file_runs_on_two_machines_as_in_one_process(cli, probed, folders, sampled,
                                                                                   toy_votes):
    cloud_dir, client_dir = sampled
    state = ["--state", probed / "cloud_state"]
    code, out, err = cli(cloud.main, "query", "--label-source", "toy_votes", "--proxy", cloud_dir / "proxy.json",
                         "--out", cloud_dir / "q.ecos", *state)
    assert code == 0 and "24 nearest-label queries" in out, err
    entries = len(read_ledger(client_dir / "ledger.json")["entries"])
    code, out, err = cli(client.main, "answer", "--query", cloud_dir / "q.ecos", "--label-source", "toy_votes",
                         "--set", "noise_multiplier=0", "--data", folders["labelled"], "--out", client_dir / "a.ecos",
                         "--ledger", client_dir / "ledger.json")
    assert code == 0 and "24 labels" in out, err
    [*_, entry] = read_ledger(client_dir / "ledger.json")["entries"]
    assert len(read_ledger(client_dir / "ledger.json")["entries"]) == entries + 1
    assert entry["releases"] == [{**train_helpers.ToyVotes(0.0).releases(24)[0], "delta": 1e-5}]
    code, out, err = cli(cloud.main, "absorb", "--proxy", cloud_dir / "proxy.json", "--query", cloud_dir / "q.ecos",
                         "--answer", client_dir / "a.ecos", "--label-source", "toy_votes",
                         "--out", cloud_dir / "labelled.json", *state)
    assert code == 0, err
    labelled = Proxy.read(cloud_dir / "labelled.json")
    assert labelled.class_names == ["circle", "square"] and len(labelled.labels) == 24

    # the same step in one process: the same query bytes, the same labels
    proxy, cloud_state = Proxy.read(cloud_dir / "proxy.json"), CloudState.load(probed / "cloud_state")
    scan = scan_labelled_images(folders["labelled"])
    encoder = cloud_state.sampler.message_.encoder
    features = extract_features(build_encoder(EncoderSpec.from_dict(encoder)), PathImageDataset(scan.paths))
    inputs = Inputs(open_features=cloud_state.features, client_features=features,
                    client_labels=np.asarray(scan.labels), client_size=len(scan.labels), num_classes=2, encoder=encoder)
    here = train_helpers.ToyVotes(0.0).run(Proxy(proxy.indices), inputs, Run(budget=24))
    assert here.labels == labelled.labels
    assert here.bytes_down == (cloud_dir / "q.ecos").stat().st_size
    answer = LabelsMessage.from_bytes((client_dir / "a.ecos").read_bytes())  # the client names its classes
    assert here.bytes_up == len(dataclasses.replace(answer, class_names=("0", "1")).to_bytes())


def test_the_generic_steps_find_the_label_source_by_the_query_kind(cli, probed, folders, sampled):
    cloud_dir, client_dir = sampled
    state = ["--state", probed / "cloud_state"]
    code, _, err = cli(cloud.main, "query", "--label-source", "class_coverage", "--set", "clusters=[2, 4]", "--set",
                       "whiten_dim=2", "--proxy", cloud_dir / "proxy.json", "--out", cloud_dir / "q.ecos", *state)
    assert code == 0, err
    code, out, err = cli(client.main, "answer", "--query", cloud_dir / "q.ecos", "--noise-multiplier", 1.0, "--data",
                         folders["labelled"], "--out", client_dir / "a.ecos", "--ledger", client_dir / "ledger.json")
    assert code == 0 and "6 x 2 float32 noisy counts (2 histograms)" in out, err
    code, out, err = cli(cloud.main, "absorb", "--proxy", cloud_dir / "proxy.json", "--query", cloud_dir / "q.ecos",
                         "--answer", client_dir / "a.ecos", "--set", "label_fraction=0.5", "--out",
                         cloud_dir / "labelled.json", *state)
    assert code == 0 and "12 of 24 images labelled" in out, err


@pytest.mark.parametrize(("argv", "message"), [
    (["--label-source", "manual"], "label source 'manual' does not ask the client"),
    (["--label-source", "client_knn", "--set", "k"], "--set 'k': write KEY=VALUE"),
    (["--label-source", "client_knn", "--set", "kk=3"], "its parameters are ['k', 'noise_multiplier'"),
    (["--label-source", "class_coverage", "--set", "whiten_dim=0"], "whiten_dim must be"),
])
def test_bad_generic_query_options_are_one_error_line(cli, probed, sampled, argv, message):
    cloud_dir, _ = sampled
    code, _, err = cli(cloud.main, "query", *argv, "--proxy", cloud_dir / "proxy.json", "--out", cloud_dir / "q.ecos",
                       "--state", probed / "cloud_state")
    assert code == 2 and one_error_line(err) and message in err, err
    assert not (cloud_dir / "q.ecos").exists()


def test_an_answer_to_a_message_that_is_no_query_is_one_error_line(cli, probed, folders, sampled):
    cloud_dir, client_dir = sampled
    code, _, err = cli(client.main, "answer", "--query", client_dir / "scores.ecos", "--data", folders["labelled"],
                       "--out", client_dir / "a.ecos", "--ledger", client_dir / "ledger.json")
    assert code == 2 and one_error_line(err) and "a 'scores' message is not a query of any registered label source" \
        in err, err
    assert not (client_dir / "a.ecos").exists()


@pytest.mark.parametrize(("items", "expected"), [
    (["sampling_rate=1e-3", "k=20", "clusters=[10, 20]", "rule=nearest", "pca_dim=null", "fp16=true"],
     {"sampling_rate": 0.001, "k": 20, "clusters": [10, 20], "rule": "nearest", "pca_dim": None, "fp16": True}),
])
def test_set_values_read_as_json_writes_them(items, expected):
    assert parse_settings(items) == expected


@pytest.mark.parametrize(("items", "message"), [
    (["k=010"], "neither JSON"), (["k=0x14"], "neither JSON"), (["k=1:30"], "neither JSON"),
    (["k=1", "k=2"], "given twice"), (["k"], "write KEY=VALUE"), (["1k=2"], "write KEY=VALUE"),
])
def test_set_values_a_user_would_misread_are_refused(items, message):
    with pytest.raises(ValueError, match=message):
        parse_settings(items)


def test_the_noise_multiplier_given_twice_is_refused_before_anything_is_released(cli, probed, folders, sampled):
    cloud_dir, client_dir = sampled
    assert cli(cloud.main, "queries", "--proxy", cloud_dir / "proxy.json", "--out", cloud_dir / "q.ecos",
               "--state", probed / "cloud_state")[0] == 0
    ledger = (client_dir / "ledger.json").read_bytes()
    code, _, err = cli(client.main, "answer", "--query", cloud_dir / "q.ecos", "--set", "noise_multiplier=0",
                       "--noise-multiplier", 5, "--data", folders["labelled"], "--out", client_dir / "a.ecos",
                       "--ledger", client_dir / "ledger.json")
    assert code == 2 and one_error_line(err) and "both given" in err
    assert (client_dir / "ledger.json").read_bytes() == ledger and not (client_dir / "a.ecos").exists()


def test_a_setting_the_step_does_not_read_is_refused(cli, probed, folders, sampled):
    """The client never reads the query's clusters from --set (the query fixes them), the cloud never reads the
    client's noise: a user setting one there would believe they changed something."""
    cloud_dir, client_dir = sampled
    assert cli(cloud.main, "coverage-query", "--proxy", cloud_dir / "proxy.json", "--out", cloud_dir / "q.ecos",
               "--clusters", 2, 4, "--whiten-dim", 2, "--state", probed / "cloud_state")[0] == 0
    code, _, err = cli(client.main, "answer", "--query", cloud_dir / "q.ecos", "--set", "clusters=[1000]", "--data",
                       folders["labelled"], "--out", client_dir / "a.ecos", "--ledger", client_dir / "ledger.json")
    assert code == 2 and one_error_line(err) and "--set clusters: the answer step of ClassCoverage does not read it"         in err, err
    code, _, err = cli(cloud.main, "query", "--label-source", "client_knn", "--set", "k=3", "--proxy",
                       cloud_dir / "proxy.json", "--out", cloud_dir / "k.ecos", "--state", probed / "cloud_state")
    assert code == 2 and one_error_line(err) and "(it reads no parameter)" in err, err


def test_a_sampler_from_a_test_file_runs_on_two_machines_as_in_one_process(cli, folders, tmp_path):
    state = ["--state", tmp_path / "state"]
    code, out, err = cli(cloud.main, "probe", "--sampler", "train_helpers.TopClusters", "--open", folders["open"],
                         "--out", tmp_path / "c.ecos", "--input-size", "32", *state)
    assert code == 0 and "K=4 centroids" in out, err
    code, out, err = cli(client.main, "respond", "--centroids", tmp_path / "c.ecos", "--data", folders["client"],
                         "--noise-multiplier", "0", "--out", tmp_path / "s.ecos", "--ledger", tmp_path / "ledger.json")
    assert code == 0, err
    [entry] = read_ledger(tmp_path / "ledger.json")["entries"]
    assert [r["noise_multiplier"] for r in entry["releases"]] == [0.0]
    code, out, err = cli(cloud.main, "sample", "--scores", tmp_path / "s.ecos", "--budget", "10", "--out",
                         tmp_path / "proxy.json", *state)
    assert code == 0 and "(top_clusters)" in out, err
    across = Proxy.read(tmp_path / "proxy.json")

    # the same steps in one process: the same centroids, the same proxy
    cloud_state = CloudState.load(tmp_path / "state")
    assert cloud_state.info["sampler"] == train_helpers.TopClusters(8.0).config()
    encoder = cloud_state.sampler.message_.encoder
    features = extract_features(build_encoder(EncoderSpec.from_dict(encoder)),
                                PathImageDataset(scan_images(folders["client"]).paths))
    inputs = Inputs(open_features=cloud_state.features, client_features=features, client_size=len(features),
                    encoder=encoder)
    here = train_helpers.TopClusters(0.0).run(inputs, Run(budget=10))
    assert here.indices == across.indices and here.clusters == across.clusters
    assert here.bytes_down == (tmp_path / "c.ecos").stat().st_size == across.bytes_down
    assert here.bytes_up == (tmp_path / "s.ecos").stat().st_size == across.bytes_up


@pytest.mark.parametrize(("args", "message"), [
    (["--sampler", "random"], "sampler 'random' does not ask the client for coverage scores"),
    (["--sampler", "train_helpers.TopClusters", "--set", "threshold=2"],
     "--set threshold: the sampler 'top_clusters' takes ['noise_multiplier']"),
    (["--set", "num_clusters=5"], "--set num_clusters: give it as --num-clusters"),
])
def test_a_probe_sampler_that_cannot_probe_is_one_line(cli, folders, tmp_path, args, message):
    code, _, err = cli(cloud.main, "probe", "--open", folders["open"], "--out", tmp_path / "c.ecos", *args)
    assert code == 2 and one_error_line(err) and message in err, err
    assert not (tmp_path / "c.ecos").exists()


def test_two_rounds_run_on_two_machines_as_in_one_process(cli, folders, tmp_path):
    state = ["--state", tmp_path / "state"]
    ledger = ["--ledger", tmp_path / "ledger.json"]
    code, out, err = cli(cloud.main, "probe", "--open", folders["open"], "--out", tmp_path / "c1.ecos",
                         "--input-size", "32", "--num-clusters", "2", "--noise-multiplier", "0", "--set", "rounds=2",
                         "--set", "sub_clusters=3", *state)
    assert code == 0 and "round 1 of 2: the client answers with --noise-multiplier 0" in out, err
    code, _, err = cli(client.main, "respond", "--centroids", tmp_path / "c1.ecos", "--data", folders["client"],
                       "--noise-multiplier", "0", "--out", tmp_path / "s1.ecos", *ledger)
    assert code == 0, err
    code, _, err = cli(cloud.main, "sample", "--scores", tmp_path / "s1.ecos", "--budget", "10", "--out",
                       tmp_path / "proxy.json", *state)
    assert code == 2 and one_error_line(err) and "run `ecos-cloud refine" in err and not (tmp_path / "proxy.json").exists()
    code, out, err = cli(cloud.main, "refine", "--scores", tmp_path / "s1.ecos", "--out", tmp_path / "c2.ecos", *state)
    assert code == 0 and "round 2 of 2" in out and "then `ecos-cloud sample`" in out, err
    code, _, err = cli(cloud.main, "refine", "--scores", tmp_path / "s1.ecos", "--out", tmp_path / "c3.ecos", *state)
    assert code == 2 and one_error_line(err) and "does not answer the centroids of the state's round 2" in err
    code, _, err = cli(client.main, "respond", "--centroids", tmp_path / "c2.ecos", "--data", folders["client"],
                       "--noise-multiplier", "0", "--out", tmp_path / "s2.ecos", *ledger)
    assert code == 0, err
    assert len(read_ledger(tmp_path / "ledger.json")["entries"]) == 2
    code, _, err = cli(cloud.main, "refine", "--scores", tmp_path / "s2.ecos", "--out", tmp_path / "c3.ecos", *state)
    assert code == 2 and one_error_line(err) and "answers round 2 of the sampler's 2" in err
    code, out, err = cli(cloud.main, "sample", "--scores", tmp_path / "s2.ecos", "--budget", "10", "--out",
                         tmp_path / "proxy.json", *state)
    assert code == 0, err
    across = Proxy.read(tmp_path / "proxy.json")

    # the same rounds in one process: the same centroids in each round, the same proxy
    cloud_state = CloudState.load(tmp_path / "state")
    assert cloud_state.message_bytes == (tmp_path / "c2.ecos").read_bytes()
    assert CentroidsMessage.from_bytes(cloud_state.message_bytes).num_clusters > 2
    encoder = cloud_state.sampler.message_.encoder
    features = extract_features(build_encoder(EncoderSpec.from_dict(encoder)),
                                PathImageDataset(scan_images(folders["client"]).paths))
    inputs = Inputs(open_features=cloud_state.features, client_features=features, client_size=len(features),
                    encoder=encoder)
    here = get_sampler(cloud_state.info["sampler"]).run(inputs, Run(budget=10))
    assert here.indices == across.indices and here.clusters == across.clusters
