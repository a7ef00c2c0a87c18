"""ProxyDataModule on a proxy file from ``ecos-cloud sample``: a bad file is one error line before any
training step, never a traceback or a read of a file outside the pool."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from ecos_lightning.data import PathImageDataset
from ecos_lightning.datamodules import ProxyDataModule
from train_helpers import CountingModel
from ecos_lightning.proxy import Proxy

ROOT = Path(__file__).resolve().parents[2]
NAMES = [f"{'ab'[i % 2]}/{i}.png" for i in range(10)]


@pytest.fixture
def pool(tmp_path) -> Path:
    """tmp/pool: 10 images in a/ and b/, a text file and a link to an image outside the pool."""
    for i, name in enumerate(NAMES):
        (tmp_path / "pool" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20 + i, 20 + i), (25 * i, 0, 0)).save(tmp_path / "pool" / name)
    Image.new("RGB", (20, 20)).save(tmp_path / "outside.png")
    (tmp_path / "pool" / "notes.png").write_text("not an image")
    (tmp_path / "pool" / "link.png").symlink_to(tmp_path / "outside.png")
    return tmp_path / "pool"


def proxy(pool_root, **changes) -> dict:
    valid = {"version": 2, "kind": "ecos-proxy", "indices": list(range(10)), "root": str(pool_root), "paths": NAMES,
             "clusters": [0] * 10, "scores": [1.0] * 10, "labels": [i % 2 for i in range(10)],
             "class_names": ["a", "b"], "epsilon": 0.5, "delta": 1e-5, "bytes_down": 100, "bytes_up": 10,
             "open": str(pool_root)}
    return {**valid, **changes}


def client_test_set(size=4):
    return TensorDataset(torch.rand(size, 3, 16, 16), torch.arange(size) % 2)


def fit(tmp_path, proxy_file, model=None, **kwargs) -> ProxyDataModule:
    dm = ProxyDataModule(proxy_file=str(proxy_file), client_test_dataset=client_test_set(), image_size=16,
                         batch_size=4, cache_dir=str(tmp_path / "cache"), **{"val_fraction": 0.2, **kwargs})
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               default_root_dir=tmp_path).fit(model or CountingModel(), datamodule=dm)
    return dm


def test_trains_on_the_images_of_a_proxy_file(tmp_path, pool):
    Proxy.from_dict(proxy(pool)).write(tmp_path / "proxy.json")
    model = CountingModel()
    dm = fit(tmp_path, tmp_path / "proxy.json", model)
    assert model.seen == 8 and dm.epsilon == 0.5
    assert not (tmp_path / "cache").exists()  # no protocol, no features, no artifact
    with pytest.raises(ValueError, match="max_epsilon"):
        ProxyDataModule(proxy_file=str(tmp_path / "proxy.json"), max_epsilon=0.1).prepare_data()


def test_labels_are_renumbered_by_class_name_to_the_client_test_set(tmp_path, pool):
    """A client without class "a" numbers "b" and "c" 0 and 1; training on a test set of "a", "b", "c" reads
    them as 1 and 2. A class the test set lacks is one error line."""
    test_set = PathImageDataset([pool / NAMES[0], pool / NAMES[1]], [0, 2], class_names=("a", "b", "c"))
    Proxy.from_dict(proxy(pool, class_names=["b", "c"])).write(tmp_path / "proxy.json")
    dm = ProxyDataModule(proxy_file=str(tmp_path / "proxy.json"), client_test_dataset=test_set, image_size=16,
                         batch_size=4, cache_dir=str(tmp_path / "cache"))
    assert dm.proxy.label_list() == [1 + i % 2 for i in range(10)] and dm.proxy.class_names == ["a", "b", "c"]
    assert [dm.sources()[0][i][1] for i in range(3)] == [1, 2, 1]  # the images' labels, too

    Proxy.from_dict(proxy(pool, class_names=["b", "z"])).write(tmp_path / "other.json")
    dm = ProxyDataModule(proxy_file=str(tmp_path / "other.json"), client_test_dataset=test_set, image_size=16,
                         batch_size=4, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="class 'z' is not a class of the client test set"):
        dm.proxy


def test_a_checkpoints_proxy_replaces_the_one_the_module_holds(tmp_path, pool):
    """The checkpoint's images and labels win over whatever the module already holds, even under the same
    settings."""
    Proxy.from_dict(proxy(pool)).write(tmp_path / "proxy.json")
    dm = ProxyDataModule(proxy_file=str(tmp_path / "proxy.json"), client_test_dataset=client_test_set(),
                         image_size=16, batch_size=4, cache_dir=str(tmp_path / "cache"))
    state = dm.state_dict() or {"proxy_json": dm.proxy.to_json()}
    dm.load_state_dict({"proxy_json": dm.proxy.replace(labels=[0] * 10).to_json()})  # same hash, other labels
    assert dm.proxy.label_list() == [0] * 10
    dm.load_state_dict(state)
    assert dm.proxy.label_list() == [i % 2 for i in range(10)]


def hand_edit(tmp_path, pool, edit: str) -> tuple[Path, str]:
    """Write a proxy file with one hand edit (bypassing the writer's checks): (its path, the expected error)."""
    path = tmp_path / "proxy.json"
    value = proxy(pool)
    if edit == "directory":
        return pool, "is not a file"
    if edit == "same image twice":
        (pool / "c").symlink_to(pool / "a")
    if edit == "a fifo":
        os.mkfifo(pool / "fifo.png")
    if edit == "bad JSON":
        path.write_text(json.dumps(value)[:-20])
        return path, "not valid UTF-8 JSON"
    edits = {
        "index 2**63": ({"indices": [2 ** 63] + value["indices"][1:]}, "'indices'"),
        "index -1": ({"indices": [-1] + value["indices"][1:]}, "'indices'"),
        "repeated index": ({"indices": [1] + value["indices"][1:]}, "'indices' must be unique"),
        "/etc/passwd": ({"paths": ["/etc/passwd"] + NAMES[1:]}, "'paths'"),
        "../": ({"paths": ["../outside.png"] + NAMES[1:]}, "'paths'"),
        "link outside": ({"paths": ["link.png"] + NAMES[1:]}, "'link.png' leads outside the pool root"),
        "not an image": ({"paths": ["notes.png"] + NAMES[1:]}, "'notes.png' is not a readable image"),
        "a folder": ({"paths": ["a"] + NAMES[1:]}, "'a' is not a regular file"),
        "missing image": ({"paths": ["gone.png"] + NAMES[1:]}, "'gone.png' does not exist"),
        "root elsewhere": ({"root": str(tmp_path / "nowhere")}, "is not a folder"),
        "relative root": ({"root": "pool"}, "'root'"),
        "aliased path": ({"paths": ["a/0.png", "a//2.png", "./a/4.png"] + NAMES[3:]}, "'paths'"),
        "same image twice": ({"paths": ["c/2.png"] + NAMES[1:]}, "two paths lead to the same image"),
        "a fifo": ({"paths": ["fifo.png"] + NAMES[1:]}, "'fifo.png' is not a regular file"),
        "version 1": ({"version": 1, "paths": [str(pool / n) for n in NAMES]}, "run `ecos-cloud sample` again"),
    }
    change, error = edits[edit]
    path.write_text(json.dumps({**value, **change}))
    return path, error


EDITS = ["directory", "bad JSON", "index 2**63", "index -1", "repeated index", "/etc/passwd", "../", "link outside",
         "not an image", "a folder", "missing image", "root elsewhere", "relative root", "version 1", "aliased path",
         "same image twice", "a fifo"]


@pytest.mark.parametrize("edit", EDITS)
def test_a_hand_edited_proxy_file_is_one_error_before_training(tmp_path, pool, edit):
    path, error = hand_edit(tmp_path, pool, edit)
    model = CountingModel()
    with pytest.raises(ValueError) as failure:
        fit(tmp_path, path, model)
    message = str(failure.value)
    assert message.startswith(f"proxy file {path}") and error in message and "\n" not in message, message
    assert model.seen == 0


def test_indices_beyond_the_open_dataset_are_refused(tmp_path):
    pool = TensorDataset(torch.rand(20, 3, 16, 16), torch.arange(20) % 2)
    indexed = proxy(None, root=None, paths=None, indices=list(range(9)) + [19], open="my-pool")
    Proxy.from_dict(indexed).write(tmp_path / "proxy.json")
    model = CountingModel()
    fit(tmp_path, tmp_path / "proxy.json", model, open_dataset=pool)
    assert model.seen == 8
    Proxy.from_dict({**indexed, "indices": list(range(9)) + [20]}).write(tmp_path / "proxy.json")
    model = CountingModel()
    with pytest.raises(ValueError, match=r"index 20 is beyond the open pool of 20 images"):
        fit(tmp_path, tmp_path / "proxy.json", model, open_dataset=pool)
    assert model.seen == 0


def test_indices_beyond_the_digits_lite_pool_are_refused(tmp_path):
    Proxy.from_dict(proxy(None, root=None, paths=None, indices=[0, 10 ** 9] + list(range(1, 9)),
                          open="digits-lite:handwritten")).write(tmp_path / "proxy.json")
    with pytest.raises(ValueError, match=r"index 1000000000 is beyond the open pool of \d+ images"):
        fit(tmp_path, tmp_path / "proxy.json")


@pytest.mark.parametrize("edit", ["directory", "link outside"])
def test_train_py_prints_one_error_line_for_a_bad_proxy_file(tmp_path, pool, edit):
    path, error = hand_edit(tmp_path, pool, edit)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", ECOS_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--config",
                           str(ROOT / "configs/finetune_digits.yaml"), "--data.proxy_file", str(path),
                           "--data.max_epsilon", "null", "--trainer.callbacks.init_args.max_epsilon", "null",
                           "--model.init_args.num_classes", "2", "--model.init_args.input_size", "16",
                           "--trainer.max_epochs", "1", "--test_after_fit", "false"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: proxy file {path}") and error in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("*.ckpt"))


def test_a_resume_that_finds_the_images_another_way_is_refused(tmp_path, pool):
    """The same proxy file read by its paths, then by its indices into an open_dataset: another proxy."""
    Proxy.from_dict(proxy(pool)).write(tmp_path / "proxy.json")
    first = ProxyDataModule(proxy_file=str(tmp_path / "proxy.json"), client_test_dataset=client_test_set(),
                            image_size=16, batch_size=4, cache_dir=str(tmp_path / "cache"))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                         callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    trainer.fit(CountingModel(), datamodule=first)
    open_ds = TensorDataset(torch.rand(10, 3, 16, 16), torch.zeros(10, dtype=torch.long))
    by_index = ProxyDataModule(open_dataset=open_ds, proxy_file=str(tmp_path / "proxy.json"),
                               client_test_dataset=client_test_set(), image_size=16, batch_size=4,
                               cache_dir=str(tmp_path / "cache"))
    resumed = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    resumed.ckpt_path = str(tmp_path / "ckpt" / "last.ckpt")
    model = CountingModel()
    with pytest.raises(ValueError, match="was trained on proxy .*, but these settings give proxy"):
        resumed.fit(model, datamodule=by_index)
    assert model.seen == 0


class NoMinusOne(CountingModel):
    """A foreign module with a plain cross-entropy: a -1 label would crash it."""

    def training_step(self, batch, batch_idx):
        assert (batch[1] >= 0).all(), "a -1 label reached a module that does not accept it"
        return super().training_step(batch, batch_idx)


class MaskedCounting(CountingModel):
    """A module whose loss leaves label -1 out."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen += len(x)
        return torch.nn.functional.cross_entropy(self.net(x), y, ignore_index=-1)


def test_unlabelled_images_never_reach_a_foreign_module_unless_asked(tmp_path, pool, caplog):
    """Labels -1 (no label) are left out of a foreign module's batches, kept for a module that declares
    ``accepts_unlabelled`` or when ``keep_unlabelled=True``."""
    labels = [-1 if i % 5 == 0 else i % 2 for i in range(10)]  # 2 of 10 unlabelled
    Proxy.from_dict(proxy(pool, labels=labels)).write(tmp_path / "proxy.json")
    plain = NoMinusOne()
    with caplog.at_level("INFO", logger="ecos_lightning"):
        fit(tmp_path, tmp_path / "proxy.json", plain, val_fraction=0.0)
    assert plain.seen == 8 and "2 of 10 proxy images carry no label" in caplog.text
    kept = MaskedCounting()
    fit(tmp_path, tmp_path / "proxy.json", kept, val_fraction=0.0, keep_unlabelled=True)
    assert kept.seen == 10
    declared = MaskedCounting()
    declared.accepts_unlabelled = True
    fit(tmp_path, tmp_path / "proxy.json", declared, val_fraction=0.0)
    assert declared.seen == 10
    Proxy.from_dict(proxy(pool, labels=[-1] * 10)).write(tmp_path / "none.json")
    with pytest.raises(ValueError, match="none of the proxy's 10 training images has a label"):
        fit(tmp_path, tmp_path / "none.json", NoMinusOne(), val_fraction=0.0)


def test_the_class_count_comes_from_the_proxy_files_class_names(tmp_path, pool):
    """A proxy of three classes over a pool whose folders name two: three classes, and a label beyond a
    file's classes is one error line before training."""
    Proxy.from_dict(proxy(pool, labels=[i % 3 for i in range(10)], class_names=["x", "y", "z"])).write(
        tmp_path / "three.json")
    dm = fit(tmp_path, tmp_path / "three.json", CountingModel(classes=3))
    assert dm.num_classes == 3
    (tmp_path / "beyond.json").write_text(json.dumps(proxy(pool, labels=[i % 3 for i in range(10)])))  # by hand
    with pytest.raises(ValueError, match=r"'labels' must be a list of 10 integers in \[-1, 1\]") as error:
        fit(tmp_path, tmp_path / "beyond.json", CountingModel(classes=3))
    assert len(str(error.value).splitlines()) == 1
