"""The whole protocol through files, with the cloud and the client as separate processes and folders."""

import shutil
import subprocess
import sys
from pathlib import Path

from ecos_lightning.client.ledger import ledger_epsilon, read_ledger
from ecos_lightning.protocol.privacy import gaussian_release, releases_epsilon
from ecos_lightning.proxy import Proxy

BUDGET = 15


def run(side: str, cwd: Path, *argv) -> str:
    """``python -m ecos_lightning.commands.<side> argv`` in ``cwd``; returns its stdout."""
    proc = subprocess.run([sys.executable, "-m", f"ecos_lightning.commands.{side}", *map(str, argv)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def train(cwd: Path, proxy_file: str, *overrides) -> subprocess.CompletedProcess:
    """``train.py fit`` of the default config on ``proxy_file`` in ``cwd`` (no budget: a real client's file)."""
    root = Path(__file__).resolve().parents[3]
    return subprocess.run([sys.executable, str(root / "train.py"), "fit", "--config",
                           str(root / "configs/finetune_digits.yaml"), "--data.proxy_file", proxy_file,
                           "--data.max_epsilon", "null", "--trainer.callbacks.init_args.max_epsilon", "null",
                           "--trainer.max_epochs", "1", *overrides], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def send(source: Path, machine: Path) -> None:
    shutil.copy(source, machine / source.name)


def test_probe_respond_sample_queries_label_attach(folders, tmp_path, tree):
    cloud_dir, client_dir = tmp_path / "cloud", tmp_path / "client"
    cloud_dir.mkdir()
    client_dir.mkdir()
    data_before = {name: tree(folders[name]) for name in ("client", "labelled")}

    out = run("cloud", cloud_dir, "probe", "--open", folders["open"], "--out", "centroids.ecos", "--num-clusters", 6,
              "--input-size", 32, "--fp16", "--pca-dim", 16)
    assert "K=6 centroids, d=16 float16" in out and "60 images" in out
    send(cloud_dir / "centroids.ecos", client_dir)

    out = run("client", client_dir, "respond", "--centroids", "centroids.ecos", "--data", folders["client"],
              "--out", "scores.ecos", "--ledger", "ledger.json", "--noise-multiplier", 1.0, "--encoder",
              "efficientnet_lite0")
    assert "20 images" in out and "1 corrupt or unreadable skipped" in out
    send(client_dir / "scores.ecos", cloud_dir)

    out = run("cloud", cloud_dir, "sample", "--scores", "scores.ecos", "--budget", BUDGET, "--out", "proxy.json")
    assert f"{BUDGET} of 60 open images" in out
    run("cloud", cloud_dir, "queries", "--proxy", "proxy.json", "--out", "queries.ecos")
    send(cloud_dir / "queries.ecos", client_dir)

    run("client", client_dir, "label", "--queries", "queries.ecos", "--data", folders["labelled"], "--out",
        "labels.ecos", "--ledger", "ledger.json", "--k", 5, "--noise-multiplier", 4.0, "--sampling-rate", 0.5)
    send(client_dir / "labels.ecos", cloud_dir)
    run("cloud", cloud_dir, "attach-labels", "--proxy", "proxy.json", "--queries", "queries.ecos", "--labels",
        "labels.ecos", "--out", "proxy.json")

    proxy = Proxy.read(cloud_dir / "proxy.json")
    assert len(set(proxy.indices)) == BUDGET and proxy.open == str(folders["open"])
    assert proxy.root == str(folders["open"].resolve()) and all(Path(proxy.root, p).is_file()
                                                                   for p in proxy.paths)
    assert sum(p.startswith("green/") for p in proxy.paths) > BUDGET // 2  # the client's domain dominates
    assert proxy.class_names == ["circle", "square"] and len(proxy.labels) == BUDGET
    size = {name: (cloud_dir / name).stat().st_size for name in ("centroids.ecos", "scores.ecos", "queries.ecos",
                                                                 "labels.ecos")}
    assert proxy.bytes_down == size["centroids.ecos"] + size["queries.ecos"]
    assert proxy.bytes_up == size["scores.ecos"] + size["labels.ecos"]

    releases = [gaussian_release(1.0), gaussian_release(4.0, BUDGET, 0.5)]
    ledger = client_dir / "ledger.json"
    assert [r["count"] for e in read_ledger(ledger)["entries"] for r in e["releases"]] == [1, BUDGET]
    assert ledger_epsilon(ledger) == releases_epsilon(releases, 1e-5) == proxy.epsilon

    # the client wrote its two messages and the ledger (and its lock file), nothing else, and nothing in its data
    # folders
    assert sorted(p.name for p in client_dir.rglob("*") if p.suffix != ".lock") == [
        "centroids.ecos", "labels.ecos", "ledger.json", "queries.ecos", "scores.ecos"]
    assert {name: tree(folders[name]) for name in ("client", "labelled")} == data_before

    # the cloud trains on the proxy from the real client: one fast epoch through train.py
    proc = train(cloud_dir, "proxy.json", "--model.init_args.num_classes", "2", "--model.init_args.input_size", "32",
                 "--test_after_fit", "false", "--data.batch_size", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (cloud_dir / "runs/finetune_digits/checkpoints/last.ckpt").exists()


def test_an_unlabelled_shard_pool_trains_on_the_classes_the_client_labelled(folders, tmp_path):
    """The README flow on an unlabelled WebDataset pool: probe, respond, sample, coverage-query,
    class-coverage, attach-coverage, then train.py on the proxy file: the classes are the proxy's own."""
    import webdataset as wds

    cloud_dir, client_dir = tmp_path / "cloud", tmp_path / "client"
    for folder in (cloud_dir, client_dir, tmp_path / "shards"):
        folder.mkdir()
    with wds.ShardWriter(str(tmp_path / "shards" / "pool-%06d.tar"), maxcount=25, verbose=0) as sink:
        for i, path in enumerate(sorted(p for p in folders["open"].rglob("*") if p.suffix in (".png", ".jpg"))):
            sink.write({"__key__": f"{i:04d}", path.suffix[1:]: path.read_bytes()})  # no class: unlabelled
    pool = f"wds:{tmp_path / 'shards'}"
    run("cloud", cloud_dir, "probe", "--open", pool, "--out", "centroids.ecos", "--num-clusters", 6, "--input-size", 32)
    send(cloud_dir / "centroids.ecos", client_dir)
    run("client", client_dir, "respond", "--centroids", "centroids.ecos", "--data", folders["client"], "--out",
        "scores.ecos", "--ledger", "ledger.json", "--noise-multiplier", 1.0)
    send(client_dir / "scores.ecos", cloud_dir)
    run("cloud", cloud_dir, "sample", "--scores", "scores.ecos", "--budget", BUDGET, "--out", "proxy.json")
    run("cloud", cloud_dir, "coverage-query", "--proxy", "proxy.json", "--out", "query.ecos", "--clusters", 2, 4,
        "--whiten-dim", 2)
    send(cloud_dir / "query.ecos", client_dir)
    run("client", client_dir, "class-coverage", "--query", "query.ecos", "--data", folders["labelled"], "--out",
        "histogram.ecos", "--ledger", "ledger.json", "--noise-multiplier", 1.0)
    send(client_dir / "histogram.ecos", cloud_dir)
    run("cloud", cloud_dir, "attach-coverage", "--proxy", "proxy.json", "--query", "query.ecos", "--histogram",
        "histogram.ecos", "--out", "labelled.json")
    proxy = Proxy.read(cloud_dir / "labelled.json")
    assert proxy.paths is None and proxy.class_names == ["circle", "square"]

    proc = train(cloud_dir, "labelled.json", "--model.init_args.num_classes", "2", "--model.init_args.input_size",
                 "32", "--test_after_fit", "false", "--data.batch_size", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = train(cloud_dir, "labelled.json", "--model.init_args.num_classes", "3")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: The data module has 2 classes but the model was built with num_classes=3")
