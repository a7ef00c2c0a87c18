"""``ecos-cloud probe --num-clusters auto``: K from the pool, the announced client size and sigma."""

from ecos_lightning.commands import cloud
from ecos_lightning.protocol import CentroidsMessage
from ecos_lightning.protocol.num_clusters import auto_num_clusters

ENCODER_ARGS = ["--input-size", "32"]


def test_probe_chooses_k_from_the_client_size_and_sigma(cli, folders, tmp_path, tree):
    out = tmp_path / "centroids.ecos"
    code, text, err = cli(cloud.main, "probe", "--open", folders["open"], "--out", out, "--num-clusters", "auto",
                          "--client-size", 20, "--noise-multiplier", 0, *ENCODER_ARGS)
    assert code == 0, err
    k = CentroidsMessage.from_bytes(out.read_bytes()).num_clusters
    assert k == auto_num_clusters(60, 20, 0.0) == 60 // 39  # a 60-image pool: faiss's 39 points per centroid
    assert f"K={k} centroids" in text


def test_auto_without_a_client_size_is_one_error_line_and_writes_nothing(cli, folders, tmp_path, tree):
    code, _, err = cli(cloud.main, "probe", "--open", folders["open"], "--out", tmp_path / "c.ecos",
                       "--num-clusters", "auto", *ENCODER_ARGS)
    assert code == 2 and err.count("\n") == 1 and "--client-size" in err
    assert tree(tmp_path) == {}


def test_num_clusters_must_be_auto_or_a_positive_integer(cli, folders, tmp_path):
    code, _, err = cli(cloud.main, "probe", "--open", folders["open"], "--out", tmp_path / "c.ecos",
                       "--num-clusters", "many")
    assert code == 2 and "--num-clusters" in err
