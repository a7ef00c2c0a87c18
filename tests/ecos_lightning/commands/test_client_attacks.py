"""ecos-client against a hostile cloud and a clumsy user: encoder specs it must not run, ledgers it must not
let anyone bypass, concurrent releases through real processes."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from ecos_lightning.commands import client
from ecos_lightning.client.ledger import read_ledger
from ecos_lightning.protocol import CentroidsMessage, ScoresMessage
from ecos_lightning.protocol.container import MAX_MESSAGE_BYTES, MessageError


def one_error_line(err: str) -> bool:
    return err.strip().splitlines()[-1].startswith("error: ") and err.count("error:") == 1


def respond_argv(centroids, data, work, *extra):
    return ["respond", "--centroids", centroids, "--data", data, "--out", work / "scores.ecos",
            "--ledger", work / "ledger.json", *extra]


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fail the test if the client reads an image, builds an encoder or extracts a feature."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the client read images or built a model for a refused message")

    for name in ("scan_images", "scan_labelled_images", "build_encoder", "extract_features"):
        monkeypatch.setattr(client, name, forbidden)


def hostile(probed, tmp_path, **encoder) -> object:
    message = CentroidsMessage.from_bytes((probed / "centroids.ecos").read_bytes())
    path = tmp_path / "hostile.ecos"
    path.write_bytes(CentroidsMessage(message.centroids, encoder={**message.encoder, **encoder}).to_bytes())
    return path


@pytest.mark.parametrize("encoder, error", [
    ({"input_size": 4096}, "asks for input size 4096 px > this client's limit of 384"),
    ({"name": "vit_giant_patch14_224", "weights": "none"}, "asks for encoder 'vit_giant_patch14_224', which this "
                                                           "client does not run"),
    ({"weights": "/etc/passwd.pth"}, "weights '/etc/passwd.pth'"),
    ({"pooling": "avg"}, "carries 352-dimensional features, but efficientnet_lite0 with avg pooling"),
])
def test_a_message_asking_for_what_the_client_does_not_run_is_refused_first(
        cli, probed, folders, tmp_path, nothing_runs, encoder, error):
    centroids = hostile(probed, tmp_path, **encoder)
    assert centroids.stat().st_size < 16_000  # a small message
    code, _, err = cli(client.main, *respond_argv(centroids, folders["client"], tmp_path))
    assert code == 2 and one_error_line(err) and error in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.ecos"]


def test_every_message_kind_is_bounded_by_what_it_needs():
    assert MAX_MESSAGE_BYTES["scores"] < 512 * 1024  # 4 bytes per centroid, at most 65,536 centroids
    blob = ScoresMessage(np.ones(100, np.float32), 8.0, 1, 1e-5, 0.43, "ab" * 32).to_bytes()
    assert len(blob) < 1000
    with pytest.raises(MessageError, match="exceeds the limit of .* for a 'scores' message"):
        ScoresMessage.from_bytes(blob + b"\0" * MAX_MESSAGE_BYTES["scores"])
    with pytest.raises(MessageError, match="must hold 1 to 65536 scores"):
        ScoresMessage(np.ones(65537, np.float32), 8.0, 1, 1e-5, 0.43, "ab" * 32)
    with pytest.raises(MessageError, match="K <= 65536"):
        CentroidsMessage(np.ones((65537, 1), np.float16))


def test_the_delta_and_the_budget_of_a_ledger_cannot_be_changed_by_a_call(cli, probed, folders, tmp_path):
    code, out, err = cli(client.main, "budget", "--ledger", tmp_path / "ledger.json", "--max-epsilon", 2.5)
    assert code == 0 and "budget 2.5" in out and "delta 1e-05" in out, err
    argv = respond_argv(probed / "centroids.ecos", folders["client"], tmp_path, "--noise-multiplier", 2)
    assert cli(client.main, *argv)[0] == 0
    (tmp_path / "scores.ecos").unlink()
    before = (tmp_path / "ledger.json").read_bytes()
    for extra, error in ((["--delta", 0.01, "--max-epsilon", 3.3], "a ledger has one delta"),
                         (["--max-epsilon", 3.3], "may not raise it to 3.3"),
                         ([], "budget 2.5 at delta 1e-05; refused")):
        code, _, err = cli(client.main, *argv, *extra)
        assert code == 2 and one_error_line(err) and error in err, err
    assert (tmp_path / "ledger.json").read_bytes() == before and not (tmp_path / "scores.ecos").exists()
    code, _, err = cli(client.main, "budget", "--ledger", tmp_path / "ledger.json", "--max-epsilon", 5)
    assert code == 2 and "can only be lowered" in err
    code, out, _ = cli(client.main, "budget", "--ledger", tmp_path / "ledger.json")
    assert code == 0 and "1 release(s), total epsilon 1.993" in out


@pytest.mark.parametrize("edit", [
    lambda ledger: ledger.update(entries={}),
    lambda ledger: ledger["entries"][0]["releases"][0].update(count="1"),
    lambda ledger: ledger["entries"][0]["releases"][0].update(count=-1),
])
def test_a_corrupt_ledger_stops_the_client_before_it_reads_an_image(cli, probed, folders, tmp_path, edit):
    argv = respond_argv(probed / "centroids.ecos", folders["client"], tmp_path)
    assert cli(client.main, *argv)[0] == 0
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    edit(ledger)
    (tmp_path / "ledger.json").write_text(json.dumps(ledger))
    before = (tmp_path / "ledger.json").read_bytes()
    for extra in (["--dry-run"], []):
        code, _, err = cli(client.main, *argv, *extra)
        assert code == 2 and one_error_line(err) and "corrupt" in err and "never reset" in err, err
    assert (tmp_path / "ledger.json").read_bytes() == before


def test_concurrent_client_processes_release_only_what_the_budget_allows(probed, folders, tmp_path):
    """Three `ecos-client respond` processes, one ledger, room for one release: one wins, all are recorded."""
    ledger = tmp_path / "ledger.json"
    outs = [tmp_path / f"scores-{i}.ecos" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-m", "ecos_lightning.commands.client", "respond",
                               "--centroids", str(probed / "centroids.ecos"), "--data", str(folders["client"]),
                               "--out", str(out), "--ledger", str(ledger), "--noise-multiplier", "2",
                               "--max-epsilon", "2.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for out in outs]
    results = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2, 2], results
    assert all("refused" in err for (_, err), code in zip(results, codes) if code == 2)
    written = [out for out in outs if out.exists()]
    entries = read_ledger(ledger)["entries"]
    assert len(written) == 1 and [e["hash"] for e in entries] == [hashlib.sha256(written[0].read_bytes()).hexdigest()]
    assert read_ledger(ledger)["epsilon"] <= 2.5


def test_labels_carry_the_ledger_total_at_the_moment_of_recording(cli, probed, folders, tmp_path):
    from ecos_lightning.protocol.label_messages import LabelsMessage, QueriesMessage

    message = CentroidsMessage.from_bytes((probed / "centroids.ecos").read_bytes())
    features = np.random.default_rng(1).normal(size=(4, message.feature_dim)).astype(np.float32)
    queries = tmp_path / "q.ecos"
    queries.write_bytes(QueriesMessage(features, message.encoder, "0" * 16).to_bytes())
    argv = respond_argv(probed / "centroids.ecos", folders["client"], tmp_path, "--noise-multiplier", 4)
    assert cli(client.main, *argv)[0] == 0
    code, _, err = cli(client.main, "label", "--queries", queries, "--data", folders["labelled"],
                       "--out", tmp_path / "labels.ecos", "--ledger", tmp_path / "ledger.json", "--k", 3)
    assert code == 0, err
    labels = LabelsMessage.from_bytes((tmp_path / "labels.ecos").read_bytes())
    assert labels.total_epsilon == pytest.approx(read_ledger(tmp_path / "ledger.json")["epsilon"])
    assert labels.total_epsilon > labels.epsilon


@pytest.mark.parametrize("extra, error", [
    (["--noise-multiplier", "1e-300"], "noise_multiplier must be 0 (not private) or in [0.1, 1e+06]"),
    (["--noise-multiplier", "1e300"], "noise_multiplier must be 0 (not private) or in [0.1, 1e+06]"),
    (["--out", "LEDGER"], "is the privacy ledger or its lock"),
    (["--out", "LEDGER.lock"], "is the privacy ledger or its lock"),
])
def test_extreme_values_and_an_output_over_the_ledger_are_one_line_errors(cli, probed, folders, tmp_path, extra,
                                                                           error):
    ledger = tmp_path / "ledger.json"
    extra = [str(ledger) + e[len("LEDGER"):] if e.startswith("LEDGER") else e for e in extra]
    code, _, err = cli(client.main, *respond_argv(probed / "centroids.ecos", folders["client"], tmp_path), *extra,
                       "--dry-run")
    assert code == 2 and one_error_line(err) and error in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_queries_message_asking_for_too_many_labels_is_refused_before_accounting(cli, probed, folders, tmp_path,
                                                                                     nothing_runs):
    from ecos_lightning.protocol.label_messages import QueriesMessage

    message = CentroidsMessage.from_bytes((probed / "centroids.ecos").read_bytes())
    queries = tmp_path / "q.ecos"
    queries.write_bytes(QueriesMessage(np.ones((50, message.feature_dim), np.float32), message.encoder,
                                       "0" * 16).to_bytes())
    code, _, err = cli(client.main, "label", "--queries", queries, "--data", folders["labelled"], "--out",
                       tmp_path / "l.ecos", "--ledger", tmp_path / "ledger.json", "--max-queries", 10)
    assert code == 2 and one_error_line(err) and "asks for 50 labels > --max-queries 10" in err, err


def test_a_projection_that_adds_dimensions_is_refused():
    centroids = np.ones((4, 64), np.float32)
    with pytest.raises(MessageError, match="never adds dimensions"):
        CentroidsMessage(centroids, np.ones((8, 64), np.float32), np.zeros(64, np.float32))
