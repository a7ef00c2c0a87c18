"""ecos-cloud in-process: poisoned client responses, the sampling rule, one-line errors."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from ecos_lightning.commands import cloud
from ecos_lightning.files import stable_hash
from ecos_lightning.protocol import CentroidsMessage, ScoresMessage
from ecos_lightning.protocol.container import pack
from ecos_lightning.protocol.label_messages import LabelsMessage, QueriesMessage
from ecos_lightning.proxy import Proxy

POOL = 60


def centroids(probed) -> CentroidsMessage:
    return CentroidsMessage.from_bytes((probed / "centroids.ecos").read_bytes())


def scores_file(path, probed, scores, noise_multiplier=1.0):
    message = centroids(probed)
    blob = ScoresMessage(np.asarray(scores, np.float32), noise_multiplier, 1, 1e-5, 4.38, message.digest()).to_bytes()
    path.write_bytes(blob)
    return path


def raw_scores_file(path, probed, scores):
    """A scores message packed without the class's checks (a hostile client)."""
    meta = {"noise_multiplier": 1.0, "q": 1, "delta": 1e-5, "epsilon": 1.0,
            "centroids_digest": centroids(probed).digest(), "radius": None}
    path.write_bytes(pack("scores", {"scores": np.asarray(scores, np.float32)}, meta))
    return path


def sample(cli, probed, tmp_path, scores_path, budget):
    out = tmp_path / "proxy.json"
    code, stdout, err = cli(cloud.main, "sample", "--scores", scores_path, "--budget", budget, "--out", out,
                            "--state", probed / "cloud_state")
    return code, stdout, err, out


def read_state(folder) -> tuple[dict, dict]:
    """(tensors, info) of ``folder/state.safetensors``."""
    with safe_open(folder / "state.safetensors", framework="np") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, json.loads(handle.metadata()["info"])


def write_state(folder, tensors: dict, info: dict) -> None:
    save_file(tensors, folder / "state.safetensors", metadata={"info": json.dumps(info)})


def cluster_of(probed) -> np.ndarray:
    return read_state(probed / "cloud_state")[0]["assignment"]


def one_error_line(err: str) -> bool:
    """stderr ends with one ``error: ...`` line (progress bars may precede it)."""
    return err.strip().splitlines()[-1].startswith("error: ") and err.count("error:") == 1


def check_valid(out, budget):
    proxy = Proxy.read(out)
    assert len(proxy.indices) == len(set(proxy.indices)) == budget
    assert all(s >= 0 for s in proxy.scores)
    return proxy


def test_probe_state_is_one_file_next_to_the_features(probed, folders):
    state = probed / "cloud_state"
    # the features (beside their store record) and the state
    assert sorted(p.suffix for p in state.iterdir()) == [".json", ".npy", ".safetensors"]
    tensors, info = read_state(state)
    assert centroids(probed).num_clusters == 6
    assert tensors["centroids"].tobytes() == (probed / "centroids.ecos").read_bytes()
    assert sorted(tensors["members"].tolist()) == list(range(POOL)) and len(tensors["assignment"]) == POOL
    assert info["root"] == str(folders["open"].resolve()) and info["open"] == str(folders["open"])
    assert len(info["paths"]) == POOL and not any(p.startswith("/") for p in info["paths"])


def test_negative_scores_are_clipped_to_zero(cli, probed, tmp_path):
    k = centroids(probed).num_clusters
    scores = -np.arange(1, k + 1, dtype=np.float32) * 5
    scores[2] = 40.0
    code, _, err, out = sample(cli, probed, tmp_path, scores_file(tmp_path / "s.ecos", probed, scores), 10)
    assert code == 0, err
    proxy = check_valid(out, 10)
    size = int((cluster_of(probed) == 2).sum())
    assert sum(c == 2 for c in proxy.clusters) == min(10, size)
    assert set(proxy.scores) <= {40.0, 0.0}


def test_all_negative_scores_fall_back_with_a_one_line_warning(cli, probed, tmp_path):
    k = centroids(probed).num_clusters
    code, _, err, out = sample(cli, probed, tmp_path, scores_file(tmp_path / "s.ecos", probed, -np.ones(k)), 12)
    assert code == 0
    assert err.startswith("warning: ") and len(err.strip().splitlines()) == 1
    check_valid(out, 12)


def test_an_enormous_score_takes_at_most_its_cluster(cli, probed, tmp_path):
    k = centroids(probed).num_clusters
    scores = np.full(k, 30.0, np.float32)
    scores[1] = np.finfo(np.float32).max
    budget = 40
    code, _, err, out = sample(cli, probed, tmp_path, scores_file(tmp_path / "s.ecos", probed, scores), budget)
    assert code == 0, err
    proxy = check_valid(out, budget)
    members = set(np.flatnonzero(cluster_of(probed) == 1).tolist())
    assert len(members) < budget  # the cluster is exhausted, the rest goes to the others
    assert members <= set(proxy.indices)


def test_sample_help_documents_the_score_rule(cli):
    code, out, _ = cli(cloud.main, "sample", "--help")
    assert code == 0 and "an enormous score can at most give its cluster all of its members" in " ".join(out.split())


@pytest.mark.parametrize("bad,error", [
    (lambda k: np.where(np.arange(k) == 0, np.nan, 1.0), "NaN or Inf"),
    (lambda k: np.where(np.arange(k) == 0, np.inf, 1.0), "NaN or Inf"),
    (lambda k: np.ones(k + 1), "length"),
    (lambda k: np.ones(k - 1), "length"),
])
def test_poisoned_scores_are_rejected_at_read(cli, probed, tmp_path, bad, error):
    path = raw_scores_file(tmp_path / "s.ecos", probed, bad(centroids(probed).num_clusters))
    code, _, err, out = sample(cli, probed, tmp_path, path, 10)
    assert code == 2 and error in err and one_error_line(err)
    assert not out.exists()


def test_scores_for_other_centroids_are_rejected(cli, probed, tmp_path):
    k = centroids(probed).num_clusters
    blob = ScoresMessage(np.ones(k, np.float32), 1.0, 1, 1e-5, 4.0, "ab" * 32).to_bytes()
    (tmp_path / "s.ecos").write_bytes(blob)
    code, _, err, out = sample(cli, probed, tmp_path, tmp_path / "s.ecos", 10)
    assert code == 2 and "centroids_digest" in err and not out.exists()


@pytest.mark.parametrize("argv,error", [
    (["sample", "--scores", "{s}", "--budget", POOL + 1, "--out", "{out}", "--state", "{state}"],
     "larger than the open"),
    (["sample", "--scores", "{s}", "--budget", 0, "--out", "{out}", "--state", "{state}"], "must be > 0"),
    (["sample", "--scores", "{tmp}/missing.ecos", "--budget", 5, "--out", "{out}", "--state", "{state}"],
     "file not found"),
    (["sample", "--scores", "{s}", "--budget", 5, "--out", "{out}", "--state", "{tmp}/nostate"], "cloud state"),
    (["queries", "--proxy", "{tmp}/missing.json", "--out", "{out}", "--state", "{state}"], "not found"),
    (["queries", "--proxy", "{tmp}", "--out", "{out}", "--state", "{state}"], "is not a file"),
    (["probe", "--open", "{tmp}/nowhere", "--out", "{out}", "--input-size", 32], "data folder not found"),
    (["probe", "--open", "{s}", "--out", "{out}", "--input-size", 32], "not a folder"),
    (["probe", "--open", "digits-lite:moon", "--out", "{out}"], "client_domain 'moon' is unknown"),
    (["probe", "--open", "{tmp}", "--out", "{out}", "--encoder", "resnet_nope"], "Unknown timm model"),
    (["probe", "--open", "{tmp}", "--out", "{out}"], "no readable image"),
    (["sample"], "required"),
])
def test_bad_command_lines_are_one_line_errors(cli, probed, tmp_path, argv, error):
    s = scores_file(tmp_path / "s.ecos", probed, np.ones(centroids(probed).num_clusters))
    out = tmp_path / "out" / "result"
    fill = {"s": s, "out": out, "state": probed / "cloud_state", "tmp": tmp_path}
    code, _, err = cli(cloud.main, *[str(a).format(**fill) for a in argv])
    assert code == 2
    assert one_error_line(err) and error in err, err
    assert not (tmp_path / "out").exists()


def labelled_chain(cli, probed, tmp_path):
    """sample -> queries -> a labels message answering them (as a client would)."""
    k = centroids(probed).num_clusters
    _, _, _, proxy_path = sample(cli, probed, tmp_path, scores_file(tmp_path / "s.ecos", probed, np.full(k, 9.0)), 8)
    code, _, err = cli(cloud.main, "queries", "--proxy", proxy_path, "--out", tmp_path / "q.ecos",
                       "--state", probed / "cloud_state")
    assert code == 0, err
    query_blob = (tmp_path / "q.ecos").read_bytes()
    query = QueriesMessage.from_bytes(query_blob)
    assert query.proxy == stable_hash(Proxy.read(proxy_path).indices) and query.features.shape[0] == 8
    digest = hashlib.sha256(query_blob).hexdigest()
    labels = LabelsMessage(np.arange(8, dtype=np.int64) % 2, ("circle", "square"), digest, 1.0, 5, 1.0, 1e-5, 3.0, 7.5)
    (tmp_path / "l.ecos").write_bytes(labels.to_bytes())
    return proxy_path


def test_attach_labels_and_its_checks(cli, probed, tmp_path):
    proxy_path = labelled_chain(cli, probed, tmp_path)
    args = ["attach-labels", "--proxy", proxy_path, "--queries", tmp_path / "q.ecos", "--labels", tmp_path / "l.ecos"]
    code, _, err = cli(cloud.main, *args, "--out", tmp_path / "labelled.json")
    assert code == 0, err
    before, after = Proxy.read(proxy_path), Proxy.read(tmp_path / "labelled.json")
    assert after.labels == [0, 1] * 4 and after.class_names == ["circle", "square"] and after.epsilon == 7.5
    assert after.bytes_down == before.bytes_down + (tmp_path / "q.ecos").stat().st_size
    assert after.bytes_up == before.bytes_up + (tmp_path / "l.ecos").stat().st_size
    # already labelled; queries for another proxy; a message of another kind; labels for other queries
    code, _, err = cli(cloud.main, "attach-labels", "--proxy", tmp_path / "labelled.json", *args[3:], "--out",
                       tmp_path / "x.json")
    assert code == 2 and "already carries labels" in err
    other = Proxy.read(proxy_path)
    other.replace(indices=sorted(set(range(POOL)) - set(other.indices))[:len(other)]).write(tmp_path / "other.json")
    code, _, err = cli(cloud.main, "attach-labels", "--proxy", tmp_path / "other.json", *args[3:], "--out",
                       tmp_path / "x.json")
    assert code == 2 and "another proxy set" in err
    code, _, err = cli(cloud.main, *args[:5], "--labels", tmp_path / "q.ecos", "--out", tmp_path / "x.json")
    assert code == 2 and "kind" in err
    stray = LabelsMessage.from_bytes((tmp_path / "l.ecos").read_bytes())
    (tmp_path / "l2.ecos").write_bytes(LabelsMessage(stray.labels, stray.class_names, "ef" * 32, 1.0, 5, 1.0, 1e-5,
                                                     3.0, 7.5).to_bytes())
    code, _, err = cli(cloud.main, *args[:5], "--labels", tmp_path / "l2.ecos", "--out", tmp_path / "x.json")
    assert code == 2 and "does not answer" in err
    assert not (tmp_path / "x.json").exists()


def test_queries_refuse_a_proxy_from_another_pool(cli, probed, tmp_path):
    proxy_path = labelled_chain(cli, probed, tmp_path)
    proxy = Proxy.read(proxy_path)
    proxy.replace(open="digits-lite:handwritten").write(proxy_path)
    code, _, err = cli(cloud.main, "queries", "--proxy", proxy_path, "--out", tmp_path / "q3.ecos",
                       "--state", probed / "cloud_state")
    assert code == 2 and "was sampled from" in err and not (tmp_path / "q3.ecos").exists()


def copy_cloud(probed, tmp_path):
    """A copy of the probed cloud folder (its features file is reused by a later probe)."""
    shutil.copytree(probed / "cloud_state", tmp_path / "cloud_state")
    shutil.copy(probed / "centroids.ecos", tmp_path / "centroids.ecos")
    return tmp_path / "cloud_state"


@pytest.mark.parametrize("writes", range(6))
def test_a_probe_killed_after_any_write_never_lets_sample_mix_clusters(cli, probed, folders, tmp_path, monkeypatch,
                                                                       writes):
    """probe again (K=4) into a copy of a K=6 cloud, killed after ``writes`` file replacements; the client
    scores whatever centroids file it finds; sample must refuse or use the clusters of those centroids."""
    state = copy_cloud(probed, tmp_path)
    real_replace, done = os.replace, []

    def replace_then_die(*args):
        if len(done) == writes:
            raise KeyboardInterrupt
        real_replace(*args)
        done.append(args)

    monkeypatch.setattr(os, "replace", replace_then_die)
    try:
        cloud.main(["probe", "--open", str(folders["open"]), "--out", str(tmp_path / "centroids.ecos"),
                    "--num-clusters", "4", "--seed", "1", "--input-size", "32"])
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(os, "replace", real_replace)
    scored = centroids(tmp_path)
    code, _, err, out = sample(cli, tmp_path, tmp_path, scores_file(tmp_path / "s.ecos", tmp_path,
                                                                    np.full(scored.num_clusters, 9.0)), 12)
    if code != 0:
        assert code == 2 and one_error_line(err) and not out.exists()
        return
    proxy = check_valid(out, 12)
    features = np.load(next(state.glob("features-*.npy")))[proxy.indices]
    nearest = ((features[:, None, :] - scored.centroids[None].astype(np.float32)) ** 2).sum(-1).argmin(1)
    assert proxy.clusters == nearest.tolist()


def corrupt(tensors, info, change):
    """Apply one named corruption to a state's tensors and info."""
    if change == "paths []":
        info["paths"] = []
    elif change == "path ../":
        info["paths"][3] = "../elsewhere.png"
    elif change == "root relative":
        info["root"] = "open"
    elif change == "member out of range":
        tensors["members"][0] = 10 ** 6
    elif change == "member repeated":
        tensors["members"][1] = tensors["members"][0]
    elif change == "assignment out of range":
        tensors["assignment"][0] = 99
    elif change == "assignment short":
        tensors["assignment"] = tensors["assignment"][:-1]
    elif change == "assignment float":
        tensors["assignment"] = tensors["assignment"].astype(np.float32)
    elif change == "centroids tampered":
        tensors["centroids"] = tensors["centroids"].copy()
        tensors["centroids"][100] ^= 1
    elif change == "info version 1":
        info["version"] = 1
    elif change == "info key missing":
        del info["features_sha256"]
    elif change == "features elsewhere":
        info["features"] = "../features-0123456789abcdef.npy"
    return tensors, info


@pytest.mark.parametrize("change", ["paths []", "path ../", "root relative", "member out of range", "member repeated",
                                    "assignment out of range", "assignment short", "assignment float",
                                    "centroids tampered", "info version 1", "info key missing", "features elsewhere"])
def test_a_corrupt_cloud_state_is_one_line(cli, probed, tmp_path, change):
    state = copy_cloud(probed, tmp_path)
    write_state(state, *corrupt(*read_state(state), change))
    code, _, err, out = sample(cli, tmp_path, tmp_path, scores_file(tmp_path / "s.ecos", tmp_path, np.ones(6)), 10)
    assert code == 2 and one_error_line(err) and "cloud state" in err and "run `ecos-cloud probe` again" in err, err
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "features changed", "features missing",
                                    "features truncated", "features of another shape", "features header huge",
                                    "old format"])
def test_a_damaged_state_or_features_file_is_one_line(cli, probed, tmp_path, damage):
    state = copy_cloud(probed, tmp_path)
    state_file, features_file = state / "state.safetensors", next(state.glob("features-*.npy"))
    if damage == "truncated":
        state_file.write_bytes(state_file.read_bytes()[:-50])
    elif damage == "garbage":
        state_file.write_bytes(os.urandom(4096))
    elif damage == "empty":
        state_file.write_bytes(b"")
    elif damage == "features changed":  # another pool's features of the same shape
        features = np.load(features_file)
        np.save(features_file, features[::-1].copy())
    elif damage == "features missing":
        features_file.unlink()
    elif damage == "features truncated":
        features_file.write_bytes(features_file.read_bytes()[:200])
    elif damage == "features of another shape":
        np.save(features_file, np.load(features_file)[:5])
    elif damage == "features header huge":  # a header declaring 1e11 rows over a small file
        raw = features_file.read_bytes()
        shape = str(np.load(features_file).shape).encode()
        features_file.write_bytes(raw.replace(shape, b"(100000000000, " + shape.split(b", ")[1], 1))
    elif damage == "old format":  # a state folder from an earlier version: separate files, no state.safetensors
        state_file.unlink()
        (state / "state.json").write_text("{}")
    code, _, err, out = sample(cli, tmp_path, tmp_path, scores_file(tmp_path / "s.ecos", tmp_path, np.ones(6)), 10)
    assert code == 2 and one_error_line(err) and "cloud state" in err and "ecos-cloud probe" in err, err
    assert not out.exists()


def test_queries_refuse_paths_that_are_not_the_indices_images(cli, probed, tmp_path):
    proxy_path = labelled_chain(cli, probed, tmp_path)
    proxy = Proxy.read(proxy_path)
    proxy.replace(paths=proxy.paths[::-1]).write(proxy_path)
    code, _, err = cli(cloud.main, "queries", "--proxy", proxy_path, "--out", tmp_path / "q3.ecos",
                       "--state", probed / "cloud_state")
    assert code == 2 and one_error_line(err) and "its paths are not the images" in err
    assert not (tmp_path / "q3.ecos").exists()


def test_sample_writes_paths_relative_to_the_pool_root(cli, probed, folders, tmp_path):
    k = centroids(probed).num_clusters
    code, _, err, out = sample(cli, probed, tmp_path, scores_file(tmp_path / "s.ecos", probed, np.full(k, 9.0)), 10)
    assert code == 0, err
    proxy = Proxy.read(out)
    assert json.loads(out.read_text())["version"] == 2 and proxy.root == str(folders["open"].resolve())
    _, info = read_state(probed / "cloud_state")
    assert proxy.paths == [info["paths"][i] for i in proxy.indices]
    assert all((folders["open"] / p).is_file() and not p.startswith("/") for p in proxy.paths)
