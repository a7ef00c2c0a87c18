"""The on-disk feature store: chunked, resumable, shared by the ranks of a job, read memory-mapped."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ecos_lightning.features import cache as features
from ecos_lightning.encoders import spec_for_model
from ecos_lightning.features.store import FeatureStore, matrix_digest
from ecos_lightning.protocol import ClientResponder, CloudSampler

ROOT = Path(__file__).resolve().parents[3]
SPEC = spec_for_model("efficientnet_lite0", weights="offline", input_size=16)
IMAGES = np.random.default_rng(0).integers(0, 255, size=(37, 16, 16, 3), dtype=np.uint8)

RANK = textwrap.dedent("""
    import sys
    import numpy as np
    from ecos_lightning.encoders import spec_for_model
    from ecos_lightning.features.cache import cached_features

    rank, world_size, cache = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    images = np.random.default_rng(0).integers(0, 255, size=(37, 16, 16, 3), dtype=np.uint8)
    spec = spec_for_model("efficientnet_lite0", weights="offline", input_size=16)
    cached_features(spec, images, "toy", cache, progress=False, batch_size=4, chunk_rows=8, rank=rank, world_size=world_size)
""")


def single_process(tmp_path):
    return np.array(features.cached_features(SPEC, IMAGES, "toy", tmp_path / "one", progress=False, batch_size=4,
                                             chunk_rows=8))


def extract_in_processes(cache, world_size):
    """Run ``world_size`` extraction processes (one thread each, like the ranks of a job) to the end."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    ranks = [subprocess.Popen([sys.executable, "-c", RANK, str(r), str(world_size), str(cache)], env=env)
             for r in range(world_size)]
    assert [p.wait(timeout=300) for p in ranks] == [0] * world_size
    return features.cached_features(SPEC, IMAGES, "toy", cache, progress=False, batch_size=4, chunk_rows=8)


def test_two_processes_extract_their_shards_into_the_single_process_features(tmp_path):
    shared = extract_in_processes(tmp_path / "two", world_size=2)
    assert isinstance(shared, np.memmap) and not shared.flags.writeable
    np.testing.assert_array_equal(shared, extract_in_processes(tmp_path / "one", world_size=1))
    # nothing left over but the matrix and its record
    assert sorted(p.name.rsplit(".", 1)[-1] for p in (tmp_path / "two").iterdir()) == ["json", "npy"]


def test_an_interrupted_extraction_resumes_at_the_first_unfinished_chunk(tmp_path, monkeypatch):
    calls = []
    real = features.extract_features

    def dies_after_two_chunks(encoder, part, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill between chunks
        calls.append(len(part))
        return real(encoder, part, **kwargs)

    monkeypatch.setattr(features, "extract_features", dies_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        features.cached_features(SPEC, IMAGES, "toy", tmp_path / "cut", progress=False, batch_size=4, chunk_rows=8)
    assert calls == [8, 8] and not list((tmp_path / "cut").glob("*.npy"))
    monkeypatch.setattr(features, "extract_features", lambda e, part, **kw: calls.append(len(part)) or real(e, part, **kw))
    resumed = features.cached_features(SPEC, IMAGES, "toy", tmp_path / "cut", progress=False, batch_size=4,
                                       chunk_rows=8)
    assert calls == [8, 8, 8, 8, 5]  # only the three unfinished chunks ran again
    np.testing.assert_array_equal(resumed, single_process(tmp_path))


def test_a_chunk_written_but_not_marked_is_computed_again(tmp_path):
    store = FeatureStore(tmp_path / "f.npy", num_rows=10, dim=3, chunk_rows=4)
    ones = lambda rows: np.ones((len(rows), 3), np.float32)  # noqa: E731
    store._start()
    matrix = np.load(store.partial, mmap_mode="r+")
    matrix[0:4] = 7.0  # a kill after writing rows, before the marker
    matrix.flush()
    del matrix
    assert store.missing_chunks() == [0, 1, 2]
    assert store.fill(ones)
    np.testing.assert_array_equal(store.read(), np.ones((10, 3), np.float32))
    with pytest.raises(ValueError, match=r"chunk 0 must be \[4, 3\]"):
        FeatureStore(tmp_path / "g.npy", 10, 3, 4).fill(lambda rows: np.ones((2, 3), np.float32))


def test_a_resume_with_another_chunk_size_trusts_only_its_own_row_ranges(tmp_path):
    """Rank 0 of 2 marks rows 0-4 and 8-10 done with 4-row chunks; a resume with 8-row chunks must not take
    its chunk 0 (rows 0-8) for done, as rows 4-8 were never written; its chunk 1 (rows 8-10) is done."""
    rows_value = lambda rows: np.repeat(np.arange(rows.start, rows.stop, dtype=np.float32)[:, None], 3, 1)  # noqa: E731
    assert not FeatureStore(tmp_path / "f.npy", 10, 3, chunk_rows=4).fill(rows_value, rank=0, world_size=2)
    computed = []
    resumed = FeatureStore(tmp_path / "f.npy", 10, 3, chunk_rows=8)
    assert resumed.missing_chunks() == [0]
    assert resumed.fill(lambda rows: computed.append(rows) or rows_value(rows))
    assert computed == [range(0, 8)]
    np.testing.assert_array_equal(resumed.read()[:, 0], np.arange(10, dtype=np.float32))


def test_the_protocol_on_a_memory_mapped_store_gives_the_in_memory_proxy(tmp_path):
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(600, 8)).astype(np.float32)
    store = FeatureStore(tmp_path / "pool.npy", 600, 8, chunk_rows=128)
    assert store.fill(lambda rows: pool[rows.start:rows.stop])
    client = ClientResponder(noise_multiplier=1.0, q=1, delta=1e-5, seed=0)
    picks = []
    for open_features in (store.read(), pool):
        cloud = CloudSampler(num_clusters=12, seed=0)
        message = cloud.fit(open_features)
        scores = client.respond(message, pool[:50] + 0.01)
        picks.append(cloud.sample(scores, budget=60))
    np.testing.assert_array_equal(*picks)


def rows_value(rows):
    """Features whose every row names itself (row i holds i + 1, never 0)."""
    return np.repeat(np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] + 1, 3, 1)


def test_markers_of_a_deleted_partial_are_ignored(tmp_path):
    """Deleting an unfinished matrix (to free disk, to start over) leaves its chunk markers behind: a new
    matrix gets a new id, so none of them counts and no chunk of zeros is ever finished."""
    first = FeatureStore(tmp_path / "f.npy", 10, 3, chunk_rows=4)
    assert not first.fill(rows_value, rank=0, world_size=2)  # chunks 0 and 2 marked
    first.partial.unlink()
    computed = []
    again = FeatureStore(tmp_path / "f.npy", 10, 3, chunk_rows=4)
    assert again.fill(lambda rows: computed.append(rows.start) or rows_value(rows))
    assert computed == [0, 4, 8]
    np.testing.assert_array_equal(again.read(), rows_value(range(10)))


def test_stale_markers_beside_a_removed_finished_matrix_are_ignored(tmp_path):
    store = FeatureStore(tmp_path / "f.npy", 10, 3, chunk_rows=4)
    assert not store.fill(rows_value, rank=0, world_size=2)
    stale = {p.name: p.read_bytes() for p in store.done_dir.iterdir()}
    assert store.fill(rows_value, rank=1, world_size=2)
    store.path.unlink()
    store.done_dir.mkdir()
    for name, data in stale.items():  # markers that outlived their matrix
        (store.done_dir / name).write_bytes(data)
    assert store.missing_chunks() == [0, 1, 2]
    assert store.fill(rows_value)
    np.testing.assert_array_equal(store.read(), rows_value(range(10)))


def test_a_chunk_edited_after_its_marker_is_computed_again(tmp_path):
    store = FeatureStore(tmp_path / "f.npy", 10, 3, chunk_rows=4)
    assert not store.fill(rows_value, rank=0, world_size=2)
    matrix = np.load(store.partial, mmap_mode="r+")
    matrix[1] = 0.25  # a hand edit under a valid marker
    matrix.flush()
    del matrix
    computed = []
    assert store.fill(lambda rows: computed.append(rows.start) or rows_value(rows))
    assert computed == [4, 0]  # rank 1's chunk, then the edited chunk the finishing check refused
    np.testing.assert_array_equal(store.read(), rows_value(range(10)))


def test_the_digest_of_a_finished_store_is_the_digest_of_its_matrix(tmp_path):
    store = FeatureStore(tmp_path / "f.npy", 10, 3, chunk_rows=4)
    assert store.fill(rows_value)
    assert store.digest == matrix_digest(rows_value(range(10))) == matrix_digest(store.read())
    assert matrix_digest(rows_value(range(10)) * 2) != store.digest


def test_a_finished_matrix_without_its_record_is_extracted_again(tmp_path):
    first = np.array(features.cached_features(SPEC, IMAGES, "toy", tmp_path, progress=False, batch_size=4,
                                              chunk_rows=8))
    path = features.feature_path(SPEC, "toy", tmp_path)
    np.save(path, np.zeros_like(first))  # a matrix no store finished (copied in, or its record lost)
    path.with_name(path.name + ".json").unlink()
    again = features.cached_features(SPEC, IMAGES, "toy", tmp_path, progress=False, batch_size=4, chunk_rows=8)
    np.testing.assert_array_equal(again, first)


def test_two_whole_extractions_of_one_store_at_once_both_end_complete(tmp_path):
    """Two runs sharing a cache extract the same store at the same time (each as a single process): both
    finish, and the store holds the features of one such process (one thread each: float sums depend on
    the thread count)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    runs = [subprocess.Popen([sys.executable, "-c", RANK, "0", "1", str(tmp_path / "shared")], env=env,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [p.wait(timeout=300) for p in runs] == [0, 0], [p.stderr.read()[-1000:] for p in runs]
    shared = features.cached_features(SPEC, IMAGES, "toy", tmp_path / "shared", progress=False, batch_size=4,
                                      chunk_rows=8)
    np.testing.assert_array_equal(shared, extract_in_processes(tmp_path / "one", world_size=1))
