"""ecos-client in-process: the privacy ledger, dry runs, the encoder check, one-line errors."""

import os

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant

from ecos_lightning.client.ledger import ledger_epsilon, open_ledger, read_ledger
from ecos_lightning.commands import client
from ecos_lightning.protocol import CentroidsMessage, ScoresMessage
from ecos_lightning.protocol.label_messages import LabelsMessage, QueriesMessage
from ecos_lightning.protocol.privacy import gaussian_release, releases_epsilon


def respond(cli, probed, folders, work, *extra):
    return cli(client.main, "respond", "--centroids", probed / "centroids.ecos", "--data", folders["client"],
               "--out", work / "scores.ecos", "--ledger", work / "ledger.json", *extra)


def one_error_line(err: str) -> bool:
    return err.strip().splitlines()[-1].startswith("error: ") and err.count("error:") == 1


def test_ledger_composes_releases_and_refuses_the_one_past_the_budget(cli, probed, folders, tmp_path, monkeypatch):
    for sigma, q in ((3.0, 1), (5.0, 2), (8.0, 1)):
        code, out, err = respond(cli, probed, folders, tmp_path, "--noise-multiplier", sigma, "--q", q)
        assert code == 0, err
        assert "20 images" in out and "1 corrupt or unreadable skipped" in out
    releases = [gaussian_release(s) for s in (3.0, 5.0, 8.0)]
    accountant = PLDAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(s) for s in (3.0, 5.0, 8.0)]))
    expected = accountant.get_epsilon(1e-5)
    ledger = read_ledger(tmp_path / "ledger.json")
    assert [r["q"] for e in ledger["entries"] for r in e["releases"]] == [1, 2, 1]
    assert ledger_epsilon(tmp_path / "ledger.json") == pytest.approx(releases_epsilon(releases, 1e-5), rel=1e-9)
    assert ledger["epsilon"] == pytest.approx(expected, rel=1e-6)
    assert f"-> {expected:.3f}" in out
    rdp_before, rdp_after = releases_epsilon(releases[:2], 1e-5, "rdp"), releases_epsilon(releases, 1e-5, "rdp")
    assert ledger["epsilon_rdp"] == pytest.approx(rdp_after, rel=1e-9)
    assert f"(PLD; RDP {releases_epsilon(releases[2:], 1e-5, 'rdp'):.3f})" in out
    assert f"(PLD; RDP {rdp_before:.3f} -> {rdp_after:.3f})" in out

    def forbidden(*args, **kwargs):
        raise AssertionError("a refused release must not read images or extract features")

    monkeypatch.setattr(client, "scan_images", forbidden)
    monkeypatch.setattr(client, "extract_features", forbidden)
    ledger_bytes = (tmp_path / "ledger.json").read_bytes()
    (tmp_path / "scores.ecos").unlink()
    code, _, err = respond(cli, probed, folders, tmp_path, "--noise-multiplier", 8.0, "--max-epsilon", expected + 0.05)
    assert code == 2 and one_error_line(err) and "refused" in err
    assert (tmp_path / "ledger.json").read_bytes() == ledger_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json", "ledger.json.lock"]


def test_dry_run_writes_nothing_and_predicts_the_output(cli, probed, folders, tmp_path, tree):
    before = tree(folders["client"])
    code, dry, err = respond(cli, probed, folders, tmp_path, "--dry-run", "--max-epsilon", 1.0)
    assert code == 0, err
    assert list(tmp_path.iterdir()) == [] and tree(folders["client"]) == before
    assert "would write" in dry and "0.000 -> 0.434 (max 1)" in dry and "dry run: nothing written" in dry
    code, real, err = respond(cli, probed, folders, tmp_path, "--max-epsilon", 1.0)
    assert code == 0, err
    size = (tmp_path / "scores.ecos").stat().st_size
    assert f"would write {tmp_path / 'scores.ecos'}: {size:,} bytes up" in dry
    assert f"wrote {tmp_path / 'scores.ecos'}: {size:,} bytes up" in real
    message = ScoresMessage.from_bytes((tmp_path / "scores.ecos").read_bytes())
    assert message.num_clusters == CentroidsMessage.from_bytes((probed / "centroids.ecos").read_bytes()).num_clusters
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json", "ledger.json.lock", "scores.ecos"]


def queries_file(probed, path, rows=5):
    """A queries message for ``rows`` unit feature vectors in the space of the probed centroids."""
    centroids = CentroidsMessage.from_bytes((probed / "centroids.ecos").read_bytes())
    features = np.random.default_rng(0).normal(size=(rows, centroids.feature_dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    path.write_bytes(QueriesMessage(features, centroids.encoder, "0" * 16).to_bytes())
    return path


def test_label_dry_run_then_label(cli, probed, folders, tmp_path):
    queries = queries_file(probed, tmp_path / "queries.ecos")
    argv = ["label", "--queries", queries, "--data", folders["labelled"], "--out", tmp_path / "labels.ecos",
            "--ledger", tmp_path / "ledger.json", "--k", 3, "--noise-multiplier", 4, "--sampling-rate", 1]
    code, dry, err = cli(client.main, *argv, "--dry-run")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["queries.ecos"]
    code, real, err = cli(client.main, *argv)
    assert code == 0, err
    blob = (tmp_path / "labels.ecos").read_bytes()
    labels = LabelsMessage.from_bytes(blob)
    assert labels.class_names == ("circle", "square") and labels.labels.shape == (5,)
    assert labels.answers(queries.read_bytes())
    assert f"{len(blob):,} bytes up" in dry and f"{len(blob):,} bytes up" in real
    assert labels.epsilon == labels.total_epsilon == pytest.approx(
        releases_epsilon([gaussian_release(4.0, 5, 1.0)], 1e-5))


def test_encoder_other_than_the_clients_own_is_refused(cli, probed, folders, tmp_path):
    code, _, err = respond(cli, probed, folders, tmp_path, "--encoder", "resnet18", "--encoder-weights", "none")
    assert code == 2 and one_error_line(err)
    assert "asks for encoder 'efficientnet_lite0', which this client does not run (allowed: resnet18)" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case,error", [
    ("missing_centroids", "file not found"),
    ("missing_data", "data folder not found"),
    ("data_is_a_file", "not a folder"),
    ("only_corrupt_images", "no readable image"),
    ("garbage_message", "magic"),
    ("oversized_message", "larger than the size limit of a centroids message"),
    ("scores_as_centroids", "kind: expected a 'centroids' message"),
    ("labels_without_classes", "no class sub-folders"),
    ("bad_noise", "noise_multiplier must be a finite number >= 0"),
    ("missing_argument", "the following arguments are required: --data"),
])
def test_bad_command_lines_are_one_line_errors(cli, probed, folders, tmp_path, case, error):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    centroids, data = probed / "centroids.ecos", folders["client"]
    argv = ["respond"]
    if case == "missing_centroids":
        centroids = inputs / "nope.ecos"
    elif case == "missing_data":
        data = inputs / "nowhere"
    elif case == "data_is_a_file":
        data = centroids
    elif case == "only_corrupt_images":
        data = inputs / "bad"
        data.mkdir()
        (data / "x.jpg").write_bytes(b"\xff\xd8\xff garbage")
    elif case == "garbage_message":
        centroids = inputs / "garbage.ecos"
        centroids.write_bytes(os.urandom(300))
    elif case == "oversized_message":
        centroids = inputs / "huge.ecos"
        with open(centroids, "wb") as handle:
            handle.truncate(3 << 30)  # sparse
    elif case == "scores_as_centroids":
        centroids = inputs / "scores.ecos"
        centroids.write_bytes(ScoresMessage(np.ones(3, np.float32), 1.0, 1, 1e-5, 1.0, "ab" * 32).to_bytes())
    elif case == "labels_without_classes":
        argv = ["label", "--queries", queries_file(probed, inputs / "q.ecos")]
        data = inputs / "flat"
        data.mkdir()
        (data / "0.png").write_bytes(next(folders["labelled"].rglob("*.png")).read_bytes())
    out = tmp_path / "out"
    argv += ["--centroids", centroids] if argv == ["respond"] else []
    argv += ["--data", data] if case != "missing_argument" else []
    argv += ["--out", out / "result.ecos", "--ledger", out / "ledger.json"]
    argv += ["--noise-multiplier", "nan"] if case == "bad_noise" else []
    code, _, err = cli(client.main, *argv)
    assert code == 2 and one_error_line(err) and error in err, err
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permissions")
def test_unreadable_folder_is_an_error(cli, probed, tmp_path):
    data = tmp_path / "data"
    (data / "locked").mkdir(parents=True)
    (data / "locked").chmod(0)
    try:
        code, _, err = cli(client.main, "respond", "--centroids", probed / "centroids.ecos", "--data", data,
                           "--out", tmp_path / "s.ecos", "--ledger", tmp_path / "l.json")
    finally:
        (data / "locked").chmod(0o755)
    assert code == 2 and "cannot read folder" in err and not (tmp_path / "s.ecos").exists()


def test_an_out_that_is_a_folder_is_refused_before_any_charge(cli, probed, folders, tmp_path):
    (tmp_path / "scores.ecos").mkdir()
    code, _, err = respond(cli, probed, folders, tmp_path)
    assert code == 2 and one_error_line(err) and "is a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.ecos"]


def test_a_ledger_whose_delta_changes_mid_run_is_not_charged_at_the_old_delta(cli, probed, folders, tmp_path,
                                                                                monkeypatch):
    extract = client.extract_features

    def extract_while_another_client_creates_the_ledger(*args, **kwargs):
        with open_ledger(tmp_path / "ledger.json", delta=1e-6) as book:
            book.record("ab" * 32, [gaussian_release(20.0)])
        return extract(*args, **kwargs)

    monkeypatch.setattr(client, "extract_features", extract_while_another_client_creates_the_ledger)
    code, _, err = respond(cli, probed, folders, tmp_path)
    assert code == 2 and one_error_line(err) and "delta 1e-06, not 1e-05" in err
    ledger = read_ledger(tmp_path / "ledger.json")
    assert ledger["delta"] == 1e-6 and [e["hash"] for e in ledger["entries"]] == ["ab" * 32]
    assert not (tmp_path / "scores.ecos").exists()
