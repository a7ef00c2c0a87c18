"""ProxyDataModule with plain tensor datasets, inside a LightningModule that is not this project's."""

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from ecos_lightning.datamodules import ProxyDataModule
from train_helpers import CountingModel


def _domain_images(n, colour, seed, size=16):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 0.3
    images[:, colour] += 0.7
    return images.clamp(0, 1)


@pytest.fixture()
def datasets():
    # open pool: 3 "domains" (dominant colour channel), the client holds the green one
    open_images = torch.cat([_domain_images(60, c, seed=c) for c in range(3)])
    open_labels = torch.arange(180) % 4
    client_images = _domain_images(40, 1, seed=10, size=24)  # another size: resized, not rejected
    client_labels = torch.arange(40) % 4
    test = TensorDataset(_domain_images(20, 1, seed=11), torch.arange(20) % 4)
    return TensorDataset(open_images, open_labels), TensorDataset(client_images, client_labels), test


def _module(tmp_path, datasets, **kwargs):
    open_ds, client_ds, test_ds = datasets
    args = dict(open_dataset=open_ds, client_dataset=client_ds, client_test_dataset=test_ds, encoder_weights="offline",
                encoder_input_size=32, encoder_pooling="style", num_clusters=6, budget=40, noise_multiplier=0.0,
                image_size=16, batch_size=8, cache_dir=str(tmp_path), dataset_id="toy")
    args.update(kwargs)
    return ProxyDataModule(**args)


def test_plugs_into_a_foreign_lightning_module(tmp_path, datasets):
    dm = _module(tmp_path, datasets)
    model = CountingModel()
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               default_root_dir=tmp_path).fit(model, datamodule=dm)
    assert model.seen == 36  # 40 selected, 10% held out for validation
    open_ds = datasets[0]
    # the proxy comes mostly from the client's (green) domain of the open pool
    assert (dm.proxy_indices() // 60 == 1).mean() >= 0.9
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    labels = np.asarray(dm.proxy.labels)
    np.testing.assert_array_equal(labels, open_ds.tensors[1].numpy()[dm.proxy_indices()])


def test_artifact_is_reused_and_state_restores_the_proxy(tmp_path, datasets):
    dm = _module(tmp_path, datasets)
    assert dm.state_dict() == {}  # nothing is made before the proxy is needed
    dm.prepare_data()
    assert not list(tmp_path.glob("proxy-*"))
    indices = dm.proxy_indices()
    path = dm.artifact_path()
    stamp = path.stat().st_mtime_ns
    state = dm.state_dict()
    again = _module(tmp_path, datasets)
    np.testing.assert_array_equal(again.proxy_indices(), indices)
    assert path.stat().st_mtime_ns == stamp
    restored = _module(tmp_path / "elsewhere", datasets)
    restored.load_state_dict(json.loads(json.dumps(state)))
    restored.setup("fit")  # no artifact there: the restored proxy is used
    np.testing.assert_array_equal(restored.proxy_indices(), dm.proxy_indices())
    assert not (tmp_path / "elsewhere").exists() or not list((tmp_path / "elsewhere").glob("proxy-*"))


def test_client_knn_labels_and_composed_epsilon(tmp_path, datasets):
    dm = _module(tmp_path, datasets, label_source="client_knn", noise_multiplier=8.0, knn_k=5,
                 knn_noise_multiplier=1.0, knn_sampling_rate=1.0)
    dm.prepare_data()
    dm.setup("fit")
    summary = dm.summary()
    assert dm.epsilon > summary["epsilon"] - 1e-9 and dm.epsilon > 0.434
    assert 0.0 <= dm.proxy_label_accuracy <= 1.0
    assert len(dm.proxy.releases) == 2


def test_local_sampler_trains_on_client_data(tmp_path, datasets):
    dm = _module(tmp_path, datasets, sampler="local")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.proxy.source == "client" and len(dm.proxy_indices()) == 40
    assert dm.epsilon == float("inf")


def test_fixmatch_stream_yields_two_views(tmp_path, datasets):
    dm = _module(tmp_path, datasets, unlabelled_batch_size=4, sampler="random")
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    batch, _, _ = next(iter(loader))
    weak, strong = batch["unlabelled"]
    assert weak.shape == strong.shape == (4, 3, 16, 16)
    assert not torch.equal(weak, strong)


@pytest.mark.parametrize("kwargs, match", [
    ({"sampler": "nope"}, "sampler must be one of"),
    ({"label_source": "nope"}, "label_source must be one of"),
    ({"budget": 0}, "budget"),
    ({"max_epsilon": 0.1, "noise_multiplier": 1.0}, "max_epsilon"),
])
def test_bad_arguments_fail_before_anything_is_written(tmp_path, datasets, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dm = _module(tmp_path, datasets, **kwargs)
        dm.prepare_data()
    assert not list(tmp_path.glob("proxy-*"))


def test_empty_client_dataset_is_an_error(tmp_path, datasets):
    empty = TensorDataset(torch.zeros(0, 3, 16, 16), torch.zeros(0, dtype=torch.long))
    dm = _module(tmp_path, (datasets[0], empty, datasets[2]))
    with pytest.raises(ValueError, match="client_dataset is empty"):
        dm.prepare_data()


def test_budget_is_checked_even_when_the_artifact_exists(tmp_path, datasets):
    dm = _module(tmp_path, datasets, noise_multiplier=1.0)
    dm.prepare_data()
    with pytest.raises(ValueError, match="max_epsilon=0.1"):
        _module(tmp_path, datasets, noise_multiplier=1.0, max_epsilon=0.1).prepare_data()


def test_trains_on_a_proxy_file_of_image_paths(tmp_path, datasets):
    from PIL import Image

    from ecos_lightning.proxy import Proxy

    paths = []
    for i in range(10):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (20 + i, 20 + i), (25 * i, 0, 0)).save(path)
        paths.append(path.name)
    Proxy.from_dict({
        "version": 2, "kind": "ecos-proxy", "indices": list(range(10)), "root": str(tmp_path), "paths": paths,
        "clusters": [0] * 10,
        "scores": [1.0] * 10, "labels": [i % 2 for i in range(10)], "class_names": ["a", "b"], "epsilon": 0.5,
        "delta": 1e-5, "bytes_down": 100, "bytes_up": 10, "open": str(tmp_path)}).write(tmp_path / "proxy.json")
    dm = ProxyDataModule(proxy_file=str(tmp_path / "proxy.json"), client_test_dataset=datasets[2], image_size=16,
                         batch_size=4, val_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    model = CountingModel()
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               default_root_dir=tmp_path).fit(model, datamodule=dm)
    assert model.seen == 8 and dm.epsilon == 0.5
    assert not (tmp_path / "cache").exists()  # no protocol, no features, no artifact
    with pytest.raises(ValueError, match="max_epsilon"):
        ProxyDataModule(proxy_file=str(tmp_path / "proxy.json"), max_epsilon=0.1).prepare_data()


def _trainer(tmp_path, epochs, **kwargs):
    from pytorch_lightning.callbacks import ModelCheckpoint

    return pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                      callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)], **kwargs)


def test_a_resume_takes_the_proxy_from_the_checkpoint_and_never_runs_the_protocol(tmp_path, datasets, monkeypatch):
    import ecos_lightning.datamodules.proxy as proxy_module
    import ecos_lightning.datamodules.simulation as simulation

    first = _module(tmp_path, datasets)
    _trainer(tmp_path, 1).fit(CountingModel(), datamodule=first)
    for artifact in tmp_path.glob("proxy-*.json"):
        artifact.unlink()

    def no_protocol(*args, **kwargs):
        raise AssertionError("a resumed run ran the protocol")

    monkeypatch.setattr(proxy_module, "simulated_inputs", no_protocol)
    monkeypatch.setattr(simulation, "cached_features", no_protocol)
    resumed = _module(tmp_path, datasets)
    trainer = _trainer(tmp_path, 2)
    trainer.ckpt_path = str(tmp_path / "checkpoints/last.ckpt")
    model = CountingModel()
    trainer.fit(model, datamodule=resumed)
    assert trainer.current_epoch == 2 and model.seen == 36  # one more epoch on the checkpoint's proxy
    assert resumed.proxy == first.proxy
    assert not list(tmp_path.glob("proxy-*.json"))


def test_a_resume_with_another_proxy_file_is_refused_naming_both_hashes(tmp_path, datasets):
    from ecos_lightning.proxy import Proxy

    open_ds, _, test_ds = datasets
    files = {}
    for name, indices in (("a", list(range(0, 20, 2))), ("b", list(range(18, -1, -2)))):
        files[name] = tmp_path / f"{name}.json"
        Proxy.from_dict({
            "version": 2, "kind": "ecos-proxy", "indices": indices, "root": None, "paths": None,
            "clusters": [0] * 10, "scores": [1.0] * 10, "labels": [i % 4 for i in indices],
            "class_names": list("abcd"), "epsilon": 0.5, "delta": 1e-5, "bytes_down": 1, "bytes_up": 1,
            "open": "toy"}).write(files[name])

    def module(name):
        return ProxyDataModule(open_dataset=open_ds, client_test_dataset=test_ds, proxy_file=str(files[name]),
                               image_size=16, batch_size=4, cache_dir=str(tmp_path / "cache"))

    hashes = {name: module(name).proxy_hash() for name in files}
    assert hashes["a"] != hashes["b"]

    _trainer(tmp_path, 1).fit(CountingModel(), datamodule=module("a"))
    last = str(tmp_path / "checkpoints/last.ckpt")
    trainer = _trainer(tmp_path, 2)
    trainer.ckpt_path = last
    with pytest.raises(ValueError, match=f"proxy {hashes['a']}.*proxy {hashes['b']}"):
        trainer.fit(CountingModel(), datamodule=module("b"))
    with pytest.raises(ValueError, match=f"proxy {hashes['a']}.*proxy {hashes['b']}"):  # resumed by fit's ckpt_path
        _trainer(tmp_path, 2).fit(CountingModel(), datamodule=module("b"), ckpt_path=last)


def test_the_proxy_is_keyed_on_the_labels(tmp_path):
    from torchvision.datasets import FakeData

    def module(num_classes):
        return ProxyDataModule(
            open_dataset=FakeData(60, (3, 16, 16), num_classes=num_classes),
            client_dataset=FakeData(20, (3, 16, 16), num_classes=num_classes, random_offset=1000),
            encoder_input_size=32, num_clusters=4, budget=20, sampler="random", label_source="open",
            image_size=16, cache_dir=str(tmp_path))

    ten, five = module(10), module(5)
    for dm in (ten, five):
        dm.prepare_data()
        dm.setup("fit")
    assert ten.artifact_path() != five.artifact_path()
    assert max(ten.proxy.labels) >= 5 and max(five.proxy.labels) < 5
    assert five.num_classes == 5


def test_labels_go_through_target_transform(tmp_path):
    from PIL import Image
    from torchvision.datasets import ImageFolder

    for cls in ("a", "b"):
        (tmp_path / "pool" / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (16, 16), (40 * i, 200 * (cls == "a"), 0)).save(tmp_path / "pool" / cls / f"{i}.png")

    def module(target_transform):
        pool = ImageFolder(str(tmp_path / "pool"), target_transform=target_transform)
        return ProxyDataModule(open_dataset=pool, client_dataset=pool, client_test_dataset=pool,
                               encoder_input_size=32, num_clusters=2, budget=8, sampler="random",
                               label_source="open", image_size=16, batch_size=12, cache_dir=str(tmp_path / "cache"))

    plain, swapped = module(None), module(lambda y: 1 - y)
    for dm in (plain, swapped):
        dm.prepare_data()
        dm.setup("fit")
    assert plain.artifact_path() != swapped.artifact_path()
    folder_labels = np.asarray(ImageFolder(str(tmp_path / "pool")).targets)
    np.testing.assert_array_equal(plain.proxy.labels, folder_labels[plain.proxy_indices()])
    np.testing.assert_array_equal(swapped.proxy.labels, 1 - folder_labels[swapped.proxy_indices()])
    _, test_labels = next(iter(swapped.test_dataloader()))
    np.testing.assert_array_equal(test_labels.numpy(), 1 - folder_labels)


def test_training_is_the_same_whatever_the_cache_holds(tmp_path, datasets):
    def train():
        pl.seed_everything(0)
        model = CountingModel()
        pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   default_root_dir=tmp_path).fit(model, datamodule=_module(tmp_path / "cache", datasets))
        return model.state_dict()

    cold = train()
    assert list((tmp_path / "cache").glob("proxy-*.json"))
    warm = train()
    assert all(torch.equal(cold[name], warm[name]) for name in cold)


@pytest.mark.parametrize("content", ["no proxy", "proxy is a list", "proxy is a number", "labels do not match",
                                     "another proxy"])
def test_a_checkpoint_without_a_sound_proxy_is_refused_never_rebuilt(tmp_path, datasets, monkeypatch, content):
    import ecos_lightning.datamodules.proxy as proxy_module

    _trainer(tmp_path / "run", 1).fit(CountingModel(), datamodule=_module(tmp_path, datasets))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    saved = json.loads(checkpoint["ProxyDataModule"]["proxy_json"])
    state = {"no proxy": None, "proxy is a list": "[]", "proxy is a number": 5,
             "labels do not match": json.dumps({**saved, "labels": [0]}),
             "another proxy": json.dumps({**saved, "hash": "a" * 16})}[content]
    if state is None:
        del checkpoint["ProxyDataModule"]
    else:
        checkpoint["ProxyDataModule"]["proxy_json"] = state
    torch.save(checkpoint, tmp_path / "bad.ckpt")

    def no_protocol(*args, **kwargs):
        raise AssertionError("a resumed run ran the protocol")

    monkeypatch.setattr(proxy_module, "simulated_inputs", no_protocol)
    with pytest.raises(ValueError, match="bad.ckpt") as error:
        _trainer(tmp_path, 2).fit(CountingModel(), datamodule=_module(tmp_path / "cold", datasets),
                                  ckpt_path=tmp_path / "bad.ckpt")
    assert len(str(error.value).splitlines()) == 1


def test_the_ledger_entry_is_keyed_on_what_the_client_released(tmp_path, datasets):
    """Changed client data behind the same settings is a new release, never taken for the old one."""
    from ecos_lightning.callbacks import PrivacyLedger, read_ledger

    open_ds, client_ds, test_ds = datasets
    ledger = tmp_path / "ledger.json"
    for run, shift in enumerate((0.0, 0.2)):
        changed = TensorDataset(client_ds.tensors[0].roll(1, dims=1) if shift else client_ds.tensors[0],
                                client_ds.tensors[1])
        dm = _module(tmp_path / f"cache{run}", (open_ds, changed, test_ds), noise_multiplier=8.0)
        pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                   default_root_dir=tmp_path, callbacks=[PrivacyLedger(str(ledger))]).fit(CountingModel(), datamodule=dm)
    assert len(read_ledger(ledger)["entries"]) == 2


def test_changing_only_the_client_reextracts_nothing_of_the_pool(tmp_path, datasets):
    open_ds, client_ds, test_ds = datasets
    _module(tmp_path, datasets, dataset_id=None).proxy_indices()
    first = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("features-*.npy")}
    assert len(first) == 2  # the pool's and the client's
    other_client = TensorDataset(client_ds.tensors[0][:30], client_ds.tensors[1][:30])
    _module(tmp_path, (open_ds, other_client, test_ds), dataset_id=None).proxy_indices()
    second = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("features-*.npy")}
    assert len(second) == 3 and all(second[name] == stamp for name, stamp in first.items())


def test_each_dataset_is_fingerprinted_once(tmp_path, datasets, monkeypatch):
    import ecos_lightning.datamodules.proxy as proxy_module

    seen = []
    real = proxy_module.fingerprint
    monkeypatch.setattr(proxy_module, "fingerprint", lambda ds: seen.append(id(ds)) or real(ds))
    dm = _module(tmp_path, datasets, dataset_id=None)
    dm.prepare_data()
    dm.proxy_indices()
    assert sorted(seen) == sorted(id(ds) for ds in datasets)


def test_loader_workers_default_to_the_cpus_and_are_checked(tmp_path, datasets):
    import os

    dm = _module(tmp_path, datasets)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == dm.num_workers() == max(1, min(8, len(os.sched_getaffinity(0)) - 1))
    assert loader.persistent_workers and not loader.pin_memory  # no GPU here
    assert _module(tmp_path, datasets, num_workers=0).num_workers() == 0
    with pytest.raises(ValueError, match="num_workers must be 'auto' or an integer >= 0"):
        _module(tmp_path, datasets, num_workers=-1)


def test_a_proxy_chosen_on_a_gpu_is_keyed_apart_from_the_cpus(tmp_path, datasets):
    cpu = _module(tmp_path, datasets, faiss_gpu=False).artifact_path()
    assert _module(tmp_path, datasets).artifact_path() == cpu  # no GPU here: None means the CPU
    assert _module(tmp_path, datasets, faiss_gpu=True).artifact_path() != cpu


def test_a_client_named_twice_differently_is_one_error(tmp_path):
    with pytest.raises(ValueError, match="client_domain='handwritten' contradicts dataset 'digits-lite:printed'"):
        ProxyDataModule(dataset="digits-lite:printed", client_domain="handwritten", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="data_seed=2 contradicts dataset 'digits-lite:printed:1'"):
        ProxyDataModule(dataset="digits-lite:printed:1", data_seed=2, cache_dir=str(tmp_path))
    agreed = ProxyDataModule(dataset="digits-lite:printed", client_domain="printed", cache_dir=str(tmp_path))
    assert agreed.source.domain == "printed"
    assert ProxyDataModule(dataset="digits-lite", client_domain="street", cache_dir=str(tmp_path)).source.domain == \
        "street"
