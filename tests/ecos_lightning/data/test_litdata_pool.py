"""A litdata pool from an untrusted source: its index is checked, and nothing it holds runs or blows up memory."""

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecos_lightning.data import open_source, parse_source
from ecos_lightning.data.litdata_pool import LitDataSource
from ecos_lightning.data.shards import MAX_PIXELS
from published_formats import write_litdata


class Payload:
    """An object whose unpickling creates the file ``marker`` (what a hostile pool's author would run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def image(i: int) -> Image.Image:
    return Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8))


def png_bytes(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pools(tmp_path_factory) -> dict[str, Path]:
    """litdata pools written by ``litdata.optimize``: ``plain`` (PIL image, label), ``pickled`` (the same
    with a ``meta`` field litdata pickles, whose unpickling creates ``marker``), ``bomb`` (PNG bytes
    declaring 8192x8192)."""
    root = tmp_path_factory.mktemp("pools")
    marker = root / "marker"
    bomb = png_bytes((8192, 8192))
    pools = {"marker": marker,
             "plain": write_litdata(root / "plain", lambda i: {"image": image(i), "label": i % 3}, 6),
             "pickled": write_litdata(root / "pickled", lambda i: {"image": image(i), "label": i % 3,
                                                                   "meta": Payload(marker)}, 6),
             "bomb": write_litdata(root / "bomb", lambda i: {"png": bomb, "label": 0}, 1)}
    assert not marker.exists()
    return pools


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ECOS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def copy(pool: Path, to: Path, edit=None) -> Path:
    """A copy of ``pool`` in ``to``; ``edit(index)`` changes its parsed index.json in place."""
    shutil.copytree(pool, to)
    if edit is not None:
        index = json.loads((to / "index.json").read_text())
        edit(index)
        (to / "index.json").write_text(json.dumps(index))
    return to


def test_the_allow_pickle_option_is_parsed():
    assert parse_source("litdata:allow_pickle=true:/data/x") == LitDataSource(Path("/data/x"), allow_pickle=True)
    assert parse_source("litdata:/data/x").allow_pickle is False


@pytest.mark.parametrize("data_format", [None, "graph", "graph:pickle", "file:pickle", "numpy:pickle"])
def test_a_pickle_backed_field_is_refused_before_any_item_is_read(pools, cache, tmp_path, data_format):
    def edit(index):
        index["config"]["data_format"][2] = data_format
    pool = pools["pickled"] if data_format is None else copy(pools["pickled"], tmp_path / "pool", edit)
    with pytest.raises(ValueError) as failure:
        open_source(f"litdata:{pool}", progress=False)
    message = str(failure.value)
    assert "\n" not in message and str(pool / "index.json") in message and "'meta'" in message, message
    assert f"litdata:allow_pickle=true:{pool}" in message
    assert not pools["marker"].exists()


def test_probe_refuses_a_pickle_backed_pool_in_one_error_line(pools, cache, tmp_path, capsys):
    from ecos_lightning.commands import cloud

    with pytest.raises(SystemExit) as exit_:
        cloud.main(["probe", "--open", f"litdata:{pools['pickled']}", "--out", str(tmp_path / "c.ecos")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: litdata dataset"), err
    assert not pools["marker"].exists() and not (tmp_path / "c.ecos").exists()


def test_a_pool_swapped_for_a_pickle_backed_one_after_opening_is_never_unpickled(pools, cache, tmp_path):
    pool = copy(pools["plain"], tmp_path / "pool")
    dataset = open_source(f"litdata:{pool}", progress=False).open
    shutil.rmtree(pool)
    shutil.copytree(pools["pickled"], pool)
    for reader in (dataset, pickle.loads(pickle.dumps(dataset))):  # each process builds its own stream
        with pytest.raises(ValueError, match=f"litdata dataset {pool} changed since the pool was opened"):
            reader[0]
    assert not pools["marker"].exists()


def test_an_allowed_pickle_backed_pool_is_read(pools, cache, tmp_path):
    marker = pools["marker"]
    try:
        data = open_source(f"litdata:allow_pickle=true:{pools['pickled']}", progress=False)
        assert data.open[4][1] == 1 and np.array_equal(np.asarray(data.open[4][0]), np.asarray(image(4)))
        assert marker.exists()  # the payload ran: the option does what it says
    finally:
        marker.unlink(missing_ok=True)


def swapped(index):
    index["config"]["data_format"].reverse()


CORRUPT = {
    "no config": lambda index: index.pop("config"),
    "a chunk without chunk_size": lambda index: index["chunks"][0].pop("chunk_size"),
    "a string chunk size": lambda index: index["chunks"][0].update(chunk_size="4"),
    "no chunks": lambda index: index.update(chunks=[]),
    "an unknown data_format": lambda index: index["config"].update(data_format=["pil", "bogus"]),
    "a swapped data_format": swapped,
    "one data_format too many": lambda index: index["config"]["data_format"].append("int"),
    "a chunk outside the folder": lambda index: index["chunks"][0].update(filename="../plain/chunk-0-0.bin"),
    "a chunk longer than its file": lambda index: index["chunks"][0].update(chunk_bytes=10 ** 6),
    "compression": lambda index: index["config"].update(compression="zstd"),
    "a defaultdict item, which imports a module": lambda index: index["config"].update(data_spec=json.dumps(
        [1, {"type": "collections.defaultdict", "context": json.dumps(
            {"default_factory_module": "os", "default_factory_name": "system", "dict_context": ["image", "label"]}),
             "children_spec": [{"type": None, "context": None, "children_spec": []}] * 2}])),
    "not JSON": None,
}


@pytest.mark.parametrize("how", list(CORRUPT))
def test_a_corrupt_index_is_one_error_line_naming_it(pools, cache, tmp_path, how):
    pool = copy(pools["plain"], tmp_path / "pool", CORRUPT[how])
    if how == "not JSON":
        (pool / "index.json").write_text('{"chunks": [')
    with pytest.raises(ValueError) as failure:
        open_source(f"litdata:{pool}", progress=False)
    message = str(failure.value)
    assert str(pool / "index.json") in message and "\n" not in message, message


def test_a_chunk_rewritten_with_its_mtime_restored_gives_a_new_data_id(pools, cache, tmp_path):
    pool = copy(pools["plain"], tmp_path / "pool")
    first = open_source(f"litdata:{pool}", progress=False)
    assert first.open.labels.tolist() == [0, 1, 2, 0, 1, 2]
    chunk = pool / "chunk-0-0.bin"
    stat = chunk.stat()
    chunk.write_bytes(chunk.read_bytes())
    os.utime(chunk, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert chunk.stat().st_mtime_ns == stat.st_mtime_ns and chunk.stat().st_size == stat.st_size
    assert open_source(f"litdata:{pool}", progress=False).data_id != first.data_id
    with pytest.raises(ValueError, match="changed since the pool was opened"):
        pickle.loads(pickle.dumps(first.open))[0]


def test_an_image_declaring_too_many_pixels_is_refused_before_it_is_decoded(pools, cache):
    pool = open_source(f"litdata:{pools['bomb']}", progress=False).open
    with pytest.raises(ValueError) as failure:
        pool[0]
    message = str(failure.value)
    assert f"{pools['bomb']} item 0" in message and "8192x8192" in message and str(MAX_PIXELS) in message
    assert "\n" not in message


def test_litdata_image_serializers_refuse_too_many_pixels_before_decoding(cache, tmp_path):
    """A JPEG whose header declares 8192x8192 (a few hundred bytes), stored with litdata's jpeg serializer."""
    small = tmp_path / "small.jpg"
    Image.new("RGB", (16, 16)).save(small)
    data = bytearray(small.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (8192).to_bytes(2, "big") * 2  # height, width
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(bytes(data))
    pool = write_litdata(tmp_path / "pool", lambda i: {"image": Image.open(bomb), "label": 0}, 1)
    assert json.loads((pool / "index.json").read_text())["config"]["data_format"][0] == "jpeg"
    with pytest.raises(ValueError, match="8192x8192") as failure:
        open_source(f"litdata:{pool}", progress=False)
    assert "\n" not in str(failure.value)
