"""Pools that ship as streams: WebDataset tar shards and litdata optimized datasets, read by index."""

import gzip
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Subset, TensorDataset

from ecos_lightning.data import open_source, parse_source
from ecos_lightning.data.litdata_pool import LitDataImageDataset, LitDataSource
from ecos_lightning.data.shards import TarShardDataset, WebDatasetSource
from ecos_lightning.datamodules import ProxyDataModule
from ecos_lightning.proxy import Proxy
from published_formats import write_litdata
from train_helpers import CountingModel

COLOURS = [(200, 40, 40), (40, 180, 60), (40, 60, 200)]


def picture(i: int, size: int = 20) -> Image.Image:
    """Image ``i``: a jittered background of colour ``i % 3`` with a light square or disc."""
    rng = np.random.default_rng(i)
    pixels = np.clip(np.array(COLOURS[i % 3]) + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = getattr(__import__("PIL.ImageDraw", fromlist=["Draw"]).Draw(image), "ellipse" if i % 2 else "rectangle")
    draw([size // 4, size // 4, size - size // 4, size - size // 4], fill=(240, 240, 240))
    return image


def encoded(i: int, size: int = 20) -> tuple[str, bytes]:
    """(extension, file bytes) of picture ``i``: every third a JPEG, the others PNG."""
    fmt = "jpeg" if i % 3 == 0 else "png"
    buffer = io.BytesIO()
    picture(i, size).save(buffer, format=fmt.upper())
    return ("jpg" if fmt == "jpeg" else "png"), buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def write_shards(folder: Path, n: int, per_shard: int = 4, labelled: bool = True, size: int = 20) -> list[bytes]:
    """``folder/pool-000000.tar`` ...: samples ``{i:03d}`` (image, and ``cls`` = i % 3 when labelled), written
    by WebDataset's ShardWriter; the image bytes in order."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    with wds.ShardWriter(str(folder / "pool-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(n):
            ext, data = encoded(i, size)
            images.append(data)
            sink.write({"__key__": f"{i:03d}", ext: data, **({"cls": i % 3} if labelled else {})})
    return images


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ECOS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def one_item(item):
    """A DataLoader collate function for unbatched items (picklable for any start method)."""
    return item


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


# ------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name,source", [
    ("wds:/data/shards", WebDatasetSource("/data/shards")),
    ("wds:/data/pool-{000000..000099}.tar", WebDatasetSource("/data/pool-{000000..000099}.tar")),
    ("wds:image=png:label=cls2:/mnt/c:x/shards", WebDatasetSource("/mnt/c:x/shards", "png", "cls2")),
    ("litdata:/data/optimized", LitDataSource(Path("/data/optimized"))),
    ("litdata:label=target:/data/optimized", LitDataSource(Path("/data/optimized"), label="target")),
])
def test_stream_source_names(name, source):
    assert parse_source(name) == source


@pytest.mark.parametrize("name,error", [
    ("wds:seed=1:/data/shards", "unknown key 'seed'; wds takes image, label"),
    ("wds:image=:/data/shards", "image needs a value"),
    ("litdata:", "the data folder is missing"),
])
def test_malformed_stream_source_names(name, error):
    with pytest.raises(ValueError, match=error):
        parse_source(name)


# ------------------------------------------------------------------------------------------ WebDataset
def test_a_shard_pool_reads_every_sample_by_index_across_shards(tmp_path, cache):
    images = write_shards(tmp_path / "shards", 10)
    before = snapshot(tmp_path / "shards")
    data = open_source(f"wds:{tmp_path / 'shards'}", progress=False)
    assert isinstance(data.open, TarShardDataset) and len(data.open) == 10 and len(data.open.shards) == 3
    assert (data.client, data.client_test, data.root, data.paths, data.skipped) == (None, None, None, None, [])
    assert data.open.labels.tolist() == [i % 3 for i in range(10)] and data.open.domains is None
    for i in [9, 0, 5, 4, 3, 8, 1]:  # out of order, across shard boundaries
        image, label = data.open[i]
        assert image.mode == "RGB" and label == i % 3 and np.array_equal(np.asarray(image), decoded(images[i]))
    assert data.open[-1][1] == 0 and data.open.key(7) == "007"
    with pytest.raises(IndexError):
        data.open[10]
    # the index lives in the cache folder; nothing was written beside the shards
    assert snapshot(tmp_path / "shards") == before and len(list((cache / "wds-index").glob("*.npz"))) == 3


def test_brace_pattern_single_file_and_unlabelled_shards(tmp_path, cache):
    images = write_shards(tmp_path / "shards", 9, per_shard=3, labelled=False)
    folder = open_source(f"wds:{tmp_path / 'shards'}", progress=False)
    pattern = open_source(f"wds:{tmp_path / 'shards'}/pool-{{000000..000002}}.tar", progress=False)
    assert folder.data_id == pattern.data_id and len(pattern.open) == 9
    assert pattern.open.labels.tolist() == [-1] * 9 and pattern.open[4][1] == -1
    single = open_source(f"wds:{tmp_path / 'shards' / 'pool-000001.tar'}", progress=False)
    assert len(single.open) == 3 and np.array_equal(np.asarray(single.open[0][0]), decoded(images[3]))
    assert single.data_id != folder.data_id


def test_image_and_label_choice_skipped_samples_and_metadata_members(tmp_path, cache):
    path = tmp_path / "mixed.tar"
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "a/000", "png": encoded(1)[1], "jpg": encoded(0)[1], "cls": 1, "cls2": 2})
        sink.write({"__key__": "a/001", "txt": "a caption only"})
        sink.write({"__key__": "b/002", "png": encoded(2)[1], "cls": 0, "cls2": 0})
    with tarfile.open(path, "a") as tar:  # members WebDataset skips as metadata
        for name in ("__meta__/003.png", "__index__"):
            info = tarfile.TarInfo(name)
            info.size = len(encoded(3)[1])
            tar.addfile(info, io.BytesIO(encoded(3)[1]))
    data = open_source(f"wds:{path}", progress=False)
    assert len(data.open) == 2 and [str(p) for p in data.skipped] == [f"{path.resolve()}#a/001"]
    assert np.array_equal(np.asarray(data.open[0][0]), decoded(encoded(0)[1]))  # jpg before png
    png = open_source(f"wds:image=png:label=cls2:{path}", progress=False)
    assert np.array_equal(np.asarray(png.open[0][0]), decoded(encoded(1)[1])) and png.open.labels.tolist() == [2, 0]
    assert png.data_id != data.data_id


def test_data_id_and_index_follow_the_shards(tmp_path, cache, monkeypatch):
    from ecos_lightning.data import shards

    write_shards(tmp_path / "shards", 8)
    calls = []
    index_shard = shards.index_shard
    monkeypatch.setattr(shards, "index_shard", lambda *a: calls.append(a[0]) or index_shard(*a))
    first = open_source(f"wds:{tmp_path / 'shards'}", progress=False)
    again = open_source(f"wds:{tmp_path / 'shards'}", progress=False)
    assert first.data_id == again.data_id and len(calls) == 2  # the second opening reads the cached indexes
    shard = tmp_path / "shards" / "pool-000001.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i in range(3):
            sink.write({"__key__": f"new{i}", "png": encoded(i + 20)[1], "cls": 2})
    with pytest.raises(ValueError, match=f"shard {shard} changed since the pool was opened"):
        first.open[5]
    changed = open_source(f"wds:{tmp_path / 'shards'}", progress=False)
    assert changed.data_id != first.data_id and len(changed.open) == 7 and calls[-1] == shard
    assert changed.open.labels.tolist() == [0, 1, 2, 0, 2, 2, 2]


def test_many_shards_are_indexed_in_processes_alike(tmp_path, cache, monkeypatch):
    from ecos_lightning.data import shards

    write_shards(tmp_path / "shards", 10, per_shard=3)
    serial = open_source(f"wds:{tmp_path / 'shards'}", cache_dir=tmp_path / "serial", progress=False).open
    monkeypatch.setattr(shards, "PARALLEL_SHARDS", 2)
    monkeypatch.setattr(shards, "INDEX_PROCESSES", 2)
    parallel = open_source(f"wds:{tmp_path / 'shards'}", progress=False).open
    assert len(list((cache / "wds-index").glob("*.npz"))) == 4
    for name in ("starts", "offsets", "sizes", "labels"):
        assert np.array_equal(getattr(parallel, name), getattr(serial, name)), name


def corrupt(folder: Path, how: str) -> tuple[str, str]:
    """A source name for shards broken ``how`` and the path the error must name."""
    shard = folder / "pool-000001.tar"
    body = shard.read_bytes()
    if how == "missing from the pattern":
        return f"wds:{folder}/pool-{{000000..000003}}.tar", str(folder / "pool-000003.tar")
    if how == "no shards":
        empty = folder / "empty"
        empty.mkdir()
        return f"wds:{empty}", str(empty)
    if how == "not a tar":
        shard.write_bytes(b"these are not the bytes of a tar file" * 30)
    if how == "truncated":
        shard.write_bytes(body[:1000])
    if how == "gzip-compressed":
        shard.write_bytes(gzip.compress(body))
    if how == "bad header mid-shard":  # tarfile alone would stop there silently, losing the rest of the shard
        with tarfile.open(shard) as tar:
            start = tar.getmembers()[2].offset
        shard.write_bytes(body[:start] + b"\x7f" * 512 + body[start + 512:])
    if how in ("bad class", "23-digit class"):
        with wds.TarWriter(str(shard)) as sink:
            sink.write({"__key__": "bad", "png": encoded(1)[1], "cls": "cat" if how == "bad class" else "9" * 23})
    if how == "cut at a member boundary":  # what an interrupted copy leaves: no end-of-archive blocks
        with tarfile.open(shard) as tar:
            last = tar.getmembers()[-1]
        shard.write_bytes(body[:last.offset_data + -(-last.size // 512) * 512])
    return f"wds:{folder}", str(shard)


@pytest.mark.parametrize("how", ["missing from the pattern", "no shards", "not a tar", "truncated", "gzip-compressed",
                                 "bad header mid-shard", "bad class", "23-digit class", "cut at a member boundary"])
def test_a_broken_shard_is_one_error_line_naming_it(tmp_path, cache, how):
    write_shards(tmp_path / "shards", 10)
    name, where = corrupt(tmp_path / "shards", how)
    with pytest.raises((ValueError, FileNotFoundError)) as failure:
        open_source(name, progress=False)
    message = str(failure.value)
    assert where in message and "\n" not in message, message
    if how == "23-digit class":
        assert "sample 'bad'" in message and "'cls'" in message and "2**31" in message, message


def test_a_refused_shard_ends_the_progress_bar_before_the_error_line(tmp_path):
    """``ecos-cloud probe`` on shards one of which is refused: the bar is closed, then one ``error:`` line."""
    write_shards(tmp_path / "shards", 10)
    corrupt(tmp_path / "shards", "bad class")
    result = subprocess.run([sys.executable, "-m", "ecos_lightning.commands.cloud", "probe", "--open",
                             f"wds:{tmp_path / 'shards'}", "--out", str(tmp_path / "c.ecos")], capture_output=True,
                            text=True, env={**os.environ, "ECOS_CACHE_DIR": str(tmp_path / "cache")}, timeout=300)
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert result.returncode == 2 and lines[-1].startswith("error: shard "), result.stderr
    assert [line for line in lines if "error:" in line] == lines[-1:], result.stderr
    assert "indexing" in result.stderr and not (tmp_path / "c.ecos").exists()


def test_a_shard_rewritten_with_its_mtime_restored_is_indexed_again(tmp_path, cache):
    """The shard keeps its size, its members' sizes and (``os.utime``) its modification time, but its classes
    change: the new classes are read, the data id changes, and the pool opened before refuses the shard."""
    write_shards(tmp_path / "shards", 8)
    first = open_source(f"wds:{tmp_path / 'shards'}", progress=False)
    assert first.open.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    shard = tmp_path / "shards" / "pool-000001.tar"
    stat, body = shard.stat(), bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        for info in tar:
            if info.name.endswith(".cls"):
                body[info.offset_data] = ord("0") + (int(chr(body[info.offset_data])) + 1) % 3
    shard.write_bytes(bytes(body))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (shard.stat().st_size, shard.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    again = open_source(f"wds:{tmp_path / 'shards'}", progress=False)
    assert again.open.labels.tolist() == [0, 1, 2, 0, 2, 0, 1, 2] and again.data_id != first.data_id
    with pytest.raises(ValueError, match=f"shard {shard} changed since the pool was opened"):
        first.open[5]
    assert first.open[1][1] == 1  # the shards that did not change still read


def big_image(path: Path, size: tuple[int, int], fmt: str) -> bytes:
    """A shard ``path`` whose one sample ``big`` is a blank ``fmt`` image of ``size``; its bytes."""
    buffer = io.BytesIO()
    Image.new("L", size).save(buffer, format=fmt)
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "big", "png" if fmt == "PNG" else "jpg": buffer.getvalue(), "cls": 0})
    return buffer.getvalue()


def test_an_image_declaring_too_many_pixels_is_refused_before_it_is_decoded(tmp_path, cache):
    data = big_image(tmp_path / "bomb.tar", (8192, 8192), "PNG")
    assert len(data) < 300_000  # a few hundred KB that would decode to 64 MB per channel
    pool = open_source(f"wds:{tmp_path / 'bomb.tar'}", progress=False).open
    with pytest.raises(ValueError) as failure:
        pool[0]
    message = str(failure.value)
    assert f"shard {tmp_path / 'bomb.tar'}: sample 'big'" in message and "8192x8192" in message, message
    assert "\n" not in message


def test_a_large_jpeg_is_decoded_at_a_scale_within_the_pixel_limit(tmp_path, cache):
    big_image(tmp_path / "photo.tar", (4200, 4100), "JPEG")
    image, label = open_source(f"wds:{tmp_path / 'photo.tar'}", progress=False).open[0]
    assert image.size == (2100, 2050) and image.mode == "RGB" and label == 0


def test_a_shard_pool_pickles_and_reads_in_dataloader_workers(tmp_path, cache):
    images = write_shards(tmp_path / "shards", 10)
    pool = open_source(f"wds:{tmp_path / 'shards'}", progress=False).open
    pool[0]  # an open descriptor in this process is not pickled
    clone = pickle.loads(pickle.dumps(pool))
    assert np.array_equal(np.asarray(clone[6][0]), decoded(images[6]))
    order = [8, 1, 6, 3, 0, 9]
    loader = DataLoader(Subset(pool, order), batch_size=None, num_workers=2, collate_fn=one_item)
    got = [(np.asarray(image), label) for image, label in loader]
    assert [label for _, label in got] == [i % 3 for i in order]
    assert all(np.array_equal(image, decoded(images[i])) for (image, _), i in zip(got, order))


# ------------------------------------------------------------------------------------------ litdata
def dict_item(i: int) -> dict:
    return {"image": picture(i, 16), "label": i % 3}


def tuple_item(i: int) -> tuple:
    return np.asarray(picture(i, 16)), i % 4


@pytest.fixture(scope="module")
def optimized(tmp_path_factory) -> dict[str, Path]:
    """Two litdata optimized datasets of 10 items in chunks of 4: dict items (PIL image, label) and
    tuple items (uint8 array, label), written by ``litdata.optimize``."""
    root = tmp_path_factory.mktemp("litdata")
    return {name: write_litdata(root / name, fn, 10) for name, fn in (("dicts", dict_item), ("tuples", tuple_item))}


def test_a_litdata_pool_reads_items_by_index(optimized, cache, tmp_path):
    before = snapshot(optimized["dicts"])
    data = open_source(f"litdata:{optimized['dicts']}", progress=False)
    pool = data.open
    assert isinstance(pool, LitDataImageDataset) and len(pool) == 10 and (data.client, data.paths) == (None, None)
    for i in [9, 2, 7, 0]:
        image, label = pool[i]
        assert image.mode == "RGB" and label == i % 3 and np.array_equal(np.asarray(image), np.asarray(picture(i, 16)))
    assert pool.labels.tolist() == [i % 3 for i in range(10)]
    assert len(list(cache.glob("litdata-labels-*.npy"))) == 1  # read once, then from the cache
    assert open_source(f"litdata:{optimized['dicts']}").open.labels.tolist() == pool.labels.tolist()
    loader = DataLoader(Subset(pickle.loads(pickle.dumps(pool)), [5, 1, 8]), batch_size=None, num_workers=2,
                        collate_fn=one_item)
    assert [label for _, label in loader] == [2, 1, 2]
    assert snapshot(optimized["dicts"]) == before  # read in place: nothing copied, unpacked or deleted
    tuples = open_source(f"litdata:{optimized['tuples']}", progress=False).open
    assert tuples[6][1] == 2 and np.array_equal(np.asarray(tuples[6][0]), np.asarray(picture(6, 16)))
    unlabelled = open_source(f"litdata:label=0:image=0:{optimized['tuples']}", progress=False).open
    with pytest.raises(ValueError, match="is not an integer"):
        unlabelled[0]


def test_litdata_data_id_and_errors(optimized, cache, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(optimized["dicts"], copy)
    first = open_source(f"litdata:{copy}").data_id
    assert open_source(f"litdata:{copy}").data_id == first
    chunk = sorted(copy.glob("chunk-*.bin"))[1]
    os.utime(chunk, ns=(chunk.stat().st_atime_ns, chunk.stat().st_mtime_ns + 10 ** 9))
    assert open_source(f"litdata:{copy}").data_id != first
    for name, where in ((f"litdata:image=picture:{copy}", "'picture'"),):
        with pytest.raises(ValueError, match=where):
            open_source(name)
    chunk.unlink()
    with pytest.raises(FileNotFoundError, match=f"litdata chunk {chunk} is missing"):
        open_source(f"litdata:{copy}")
    (copy / "index.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{copy / 'index.json'} is missing"):
        open_source(f"litdata:{copy}")


# ------------------------------------------------------------------------------------------ end to end
def run(main, *argv) -> None:
    main([str(a) for a in argv])


def test_a_shard_pool_and_a_folder_of_the_same_images_give_the_same_proxy(tmp_path, cache, capsys):
    """probe + client respond + sample on a WebDataset pool and on a folder holding the same image files
    (the folder's sorted names = the shards' order): the same centroids and the same proxy; the shard
    pool's proxy file then trains through ProxyDataModule."""
    from ecos_lightning.commands import client, cloud

    n, budget = 24, 8
    images = write_shards(tmp_path / "shards", n, per_shard=10, size=24)
    (tmp_path / "folder").mkdir()
    for i, data in enumerate(images):
        (tmp_path / "folder" / f"{i:03d}.{'jpg' if i % 3 == 0 else 'png'}").write_bytes(data)
    (tmp_path / "client").mkdir()
    for i in range(8):
        picture(3 * i + 1, 24).save(tmp_path / "client" / f"{i}.png")  # the green domain
    pools = {"wds": f"wds:{tmp_path / 'shards'}", "folder": str(tmp_path / "folder")}
    for name, pool in pools.items():
        work = tmp_path / f"cloud-{name}"
        work.mkdir()
        run(cloud.main, "probe", "--open", pool, "--out", work / "centroids.ecos", "--num-clusters", 3,
            "--input-size", 32)
    centroids = [(tmp_path / f"cloud-{name}" / "centroids.ecos").read_bytes() for name in pools]
    assert centroids[0] == centroids[1]
    run(client.main, "respond", "--centroids", tmp_path / "cloud-wds/centroids.ecos", "--data", tmp_path / "client",
        "--out", tmp_path / "scores.ecos", "--ledger", tmp_path / "ledger.json", "--noise-multiplier", 1.0,
        "--encoder", "efficientnet_lite0")
    proxies = {}
    for name in pools:
        work = tmp_path / f"cloud-{name}"
        run(cloud.main, "sample", "--scores", tmp_path / "scores.ecos", "--budget", budget, "--out",
            work / "proxy.json")
        proxies[name] = Proxy.read(work / "proxy.json")
    shard_proxy, folder_proxy = proxies["wds"], proxies["folder"]
    assert shard_proxy.indices == folder_proxy.indices and shard_proxy.clusters == folder_proxy.clusters
    assert shard_proxy.scores == folder_proxy.scores and shard_proxy.epsilon == folder_proxy.epsilon
    assert shard_proxy.open == pools["wds"] and shard_proxy.paths is None and shard_proxy.root is None
    assert folder_proxy.paths == [f"{i:03d}.{'jpg' if i % 3 == 0 else 'png'}" for i in folder_proxy.indices]
    capsys.readouterr()

    labelled = shard_proxy.replace(labels=[i % 3 for i in shard_proxy.indices], class_names=["r", "g", "b"])
    labelled.write(tmp_path / "labelled.json")
    test_set = TensorDataset(torch.rand(4, 3, 16, 16), torch.arange(4) % 3)
    dm = ProxyDataModule(proxy_file=str(tmp_path / "labelled.json"), client_test_dataset=test_set, image_size=16,
                         batch_size=4, val_fraction=0.25, cache_dir=str(tmp_path / "dm-cache"), num_workers=0)
    model = CountingModel(size=16, classes=3)
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               default_root_dir=tmp_path).fit(model, datamodule=dm)
    assert model.seen == budget - 2 and dm.proxy.indices == shard_proxy.indices


def test_a_stream_pool_named_as_the_data_module_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"is an open pool without a client"):
        ProxyDataModule(dataset=f"wds:{tmp_path}")


def test_a_shard_pool_given_as_a_dataset_is_identified_without_decoding(tmp_path, cache, monkeypatch):
    """ProxyDataModule's identity of a shard pool passed as open_dataset reads no image, and a shard rewritten
    with its mtime restored changes it."""
    import ecos_lightning.data.shards as shards_module
    from ecos_lightning.datamodules.images import fingerprint

    write_shards(tmp_path / "shards", 8)
    pool = open_source(f"wds:{tmp_path / 'shards'}", progress=False).open
    monkeypatch.setattr(shards_module, "decode_image", lambda *a: pytest.fail("an image was decoded"))
    before = fingerprint(pool)
    shard = tmp_path / "shards" / "pool-000000.tar"
    stat = shard.stat()
    shard.write_bytes(shard.read_bytes())
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint(open_source(f"wds:{tmp_path / 'shards'}", progress=False).open) != before
