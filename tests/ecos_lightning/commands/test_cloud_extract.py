"""``ecos-cloud extract``: n processes fill the open pool's features file, then ``probe`` reads it."""

import numpy as np

from ecos_lightning.commands import cloud

ENCODER_ARGS = ["--input-size", "32"]
SHARDS = ["--batch-size", "16", "--chunk-rows", "32"]  # 60 images: 2 chunks


def features_files(state):
    return sorted(state.glob("features-*.npy"))


def test_two_ranks_fill_the_features_file_and_probe_reuses_it(cli, folders, tmp_path, tree):
    state = tmp_path / "state"
    code, out, err = cli(cloud.main, "extract", "--open", folders["open"], "--state", state, "--rank", 1,
                         "--world-size", 2, *SHARDS, *ENCODER_ARGS)
    assert code == 0, err
    assert "rank 1 of 2: its chunks" in out and features_files(state) == []  # rank 0's chunk is still missing
    code, out, err = cli(cloud.main, "extract", "--open", folders["open"], "--state", state, "--rank", 0,
                         "--world-size", 2, *SHARDS, *ENCODER_ARGS)
    assert code == 0, err
    [path] = features_files(state)
    assert "features of all 60 images" in out and "complete" in out and str(path) in out
    before = tree(state)[path.name]

    code, out, err = cli(cloud.main, "probe", "--open", folders["open"], "--out", tmp_path / "c.ecos", "--state",
                         state, "--num-clusters", 3, *ENCODER_ARGS)
    assert code == 0, err
    assert tree(state)[path.name] == before  # read, not extracted again
    single = tmp_path / "single"
    code, _, err = cli(cloud.main, "probe", "--open", folders["open"], "--out", tmp_path / "s.ecos", "--state",
                       single, "--num-clusters", 3, *ENCODER_ARGS)
    assert code == 0, err
    [alone] = features_files(single)
    assert alone.name == path.name
    np.testing.assert_allclose(np.load(path), np.load(alone), rtol=1e-5, atol=1e-5)


def test_bad_ranks_and_chunks_are_one_error_line_and_write_nothing(cli, folders, tmp_path, tree):
    for extra, problem in ((["--rank", 2, "--world-size", 2], "--rank 2 must be in [0, --world-size 2)"),
                           (["--rank", 0, "--world-size", 1, "--batch-size", 16, "--chunk-rows", 40],
                            "--chunk-rows 40 must be a multiple of --batch-size 16")):
        code, _, err = cli(cloud.main, "extract", "--open", folders["open"], "--state", tmp_path / "state", *extra,
                           *ENCODER_ARGS)
        assert code == 2 and err.count("\n") == 1 and problem in err
    assert tree(tmp_path) == {}


def test_probe_finishes_an_unfinished_extract_in_its_chunks(cli, folders, tmp_path, tree):
    """Only rank 0 of 2 ran: probe extracts the missing rows itself (never taking unwritten rows for done) and
    the features equal a single process's."""
    state = tmp_path / "state"
    code, _, err = cli(cloud.main, "extract", "--open", folders["open"], "--state", state, "--rank", 0,
                       "--world-size", 2, *SHARDS, *ENCODER_ARGS)
    assert code == 0, err
    code, _, err = cli(cloud.main, "probe", "--open", folders["open"], "--out", tmp_path / "c.ecos", "--state",
                       state, "--num-clusters", 3, *ENCODER_ARGS)
    assert code == 0, err
    [path] = features_files(state)
    assert not any(name.endswith((".partial", ".extract.json", ".extract.lock")) for name in tree(state))
    code, _, err = cli(cloud.main, "probe", "--open", folders["open"], "--out", tmp_path / "s.ecos", "--state",
                       tmp_path / "single", "--num-clusters", 3, *ENCODER_ARGS)
    assert code == 0, err
    np.testing.assert_allclose(np.load(path), np.load(features_files(tmp_path / "single")[0]), rtol=1e-5,
                               atol=1e-5)


def test_a_rank_with_another_split_is_refused_naming_the_recorded_one(cli, folders, tmp_path):
    state = tmp_path / "state"
    code, _, err = cli(cloud.main, "extract", "--open", folders["open"], "--state", state, "--rank", 0,
                       "--world-size", 2, *SHARDS, *ENCODER_ARGS)
    assert code == 0, err
    code, _, err = cli(cloud.main, "extract", "--open", folders["open"], "--state", state, "--rank", 1,
                       "--world-size", 3, *SHARDS, *ENCODER_ARGS)
    assert code == 2 and err.count("error:") == 1  # one error line, after the pool's progress bar
    assert "is being extracted with --world-size 2 --chunk-rows 32 --batch-size 16" in err.splitlines()[-1]
    code, out, err = cli(cloud.main, "extract", "--open", folders["open"], "--state", state, "--rank", 1,
                         "--world-size", 2, *SHARDS, *ENCODER_ARGS)
    assert code == 0 and "complete" in out, err
