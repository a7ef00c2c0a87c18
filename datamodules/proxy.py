"""ProxyDataModule: the ECOS proxy set as a LightningDataModule, usable in any Lightning project.

``prepare_data`` (once per node) extracts features, runs the protocol (or a baseline) and writes a
JSON artifact keyed by a hash of everything that determines it (labels included); a second run
reuses it. ``setup`` (every rank) reads the artifact, so every rank trains on the same proxy. The
proxy is also part of the module's ``state_dict``: when the trainer resumes from a checkpoint
(``trainer.ckpt_path``, which ``train.py`` sets from ``--ckpt_path``), ``prepare_data`` and
``setup`` take the proxy from that checkpoint and never run the protocol; a checkpoint whose proxy
is not the one this module's settings give is refused.

In this simulation the client's side (its features, coverage counts and kNN votes) runs in the
same process; only the messages and the released labels cross to the cloud's side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.transforms import v2

from ecos_lightning.data.digits_lite import default_cache_dir
from ecos_lightning.encoders import EncoderSpec
from ecos_lightning.features import cached_features, stable_hash
from ecos_lightning.files import atomic_write_bytes
from ecos_lightning.knn_labels import PrivateKnnLabeler
from ecos_lightning.protocol.privacy import epsilon_from_json, epsilon_to_json, gaussian_release, releases_epsilon
from ecos_lightning.protocol.validation import positive_int
from ecos_lightning.proxy import SAMPLERS, select_proxy
from ecos_lightning.proxy_file import proxy_image_files, read_proxy_file

from .digits import digits_lite_sources
from .images import ImageSubset, PathImageDataset, TwoViewSubset, dataset_domains, dataset_labels, fingerprint

log = logging.getLogger(__name__)

LABEL_SOURCES = ("open", "manual", "client_knn", "none")
ARTIFACT_VERSION = 1


class ProxyDataModule(pl.LightningDataModule):
    """Selects a proxy set from an open pool for a client and serves it for training.

    Args:
        open_dataset, client_dataset, client_test_dataset: map-style datasets of ``(image, label)``
            (image: PIL, uint8 HWC array or tensor CHW); None = digits-lite split for ``client_domain``.
            Labels are read through the items (so a ``target_transform`` applies; see
            ``dataset_labels`` for the datasets read without images) and hashed into the artifact's
            key; the proxy carries the labels of the selected images only (``manual``/``open``).
        client_domain, data_seed: digits-lite client domain and split seed.
        encoder, encoder_weights, encoder_input_size, encoder_pooling: the feature encoder both sides use.
        num_clusters, q, noise_multiplier, delta: the ECOS query (K centroids, q nearest, sigma, delta).
        budget: proxy size B.
        sampler: ecos | random | kcenter | full | upload | local (train on the client's own data).
        label_source: open | manual (labels of the selected images only) | client_knn (Private kNN by
            the client) | none (unlabelled; labels are -1).
        knn_k, knn_noise_multiplier, knn_sampling_rate: Private kNN labelling parameters.
        max_epsilon: refuse, before any query, a run whose composed epsilon would exceed this.
        val_fraction: share of the proxy held out for validation.
        image_size: images are resized to this square side.
        augment: random crop/affine augmentation of training images.
        unlabelled_batch_size: > 0 adds a FixMatch stream of (weak, strong) views of the unselected pool.
        batch_size, num_workers: loader settings. cache_dir: features and artifacts.
        seed: seeds the protocol, the noise, the validation split.
        dataset_id: names custom datasets in the artifact hash (default: a content fingerprint).
        proxy_file: train on a proxy chosen by ``ecos-cloud sample`` with a real client instead of
            running the protocol here. Its images are its ``paths`` (an image-folder pool) or its indices
            into ``open_dataset`` / the digits-lite pool it names; its labels are used as they are.
    """

    def __init__(self, open_dataset: Dataset | None = None, client_dataset: Dataset | None = None,
                 client_test_dataset: Dataset | None = None, client_domain: str = "handwritten",
                 data_seed: int = 0, encoder: str = "efficientnet_lite0", encoder_weights: str = "offline",
                 encoder_input_size: int = 64, encoder_pooling: str = "style", num_clusters: int = 100,
                 q: int = 1, noise_multiplier: float = 8.0, delta: float = 1e-5, budget: int = 1000,
                 sampler: str = "ecos", label_source: str = "manual", knn_k: int = 20,
                 knn_noise_multiplier: float = 2.0, knn_sampling_rate: float = 0.3,
                 max_epsilon: float | None = None, val_fraction: float = 0.1, image_size: int = 32,
                 augment: bool = True, unlabelled_batch_size: int = 0, batch_size: int = 64,
                 num_workers: int = 0, cache_dir: str | None = None, seed: int = 0,
                 dataset_id: str | None = None, proxy_file: str | None = None):
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {label_source!r}")
        if sampler == "local" and label_source not in ("open", "manual"):
            raise ValueError("sampler='local' trains on the client's own labels: use label_source='manual'")
        positive_int(budget, "budget")
        positive_int(batch_size, "batch_size")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        if max_epsilon is not None and not max_epsilon > 0:
            raise ValueError(f"max_epsilon must be > 0, got {max_epsilon!r}")
        self.save_hyperparameters(ignore=["open_dataset", "client_dataset", "client_test_dataset"])
        self.spec = EncoderSpec.for_model(encoder, weights=encoder_weights, input_size=encoder_input_size,
                                          pooling=encoder_pooling)
        self._datasets = (open_dataset, client_dataset, client_test_dataset)
        self._sources = None
        self._label_cache: dict[int, np.ndarray] = {}
        self.proxy: dict | None = None  # the artifact's content, from setup or a restored checkpoint

    # --------------------------------------------------------------- sources
    @property
    def cache_dir(self) -> Path:
        return Path(self.hparams.cache_dir) if self.hparams.cache_dir else default_cache_dir()

    def sources(self):
        """(open, client, client_test, data_id): the given datasets or the digits-lite split."""
        if self._sources is None:
            open_ds, client_ds, test_ds = self._datasets
            if self.hparams.proxy_file and open_ds is None:
                self._sources = self._file_sources(test_ds)
            elif open_ds is None and client_ds is None and test_ds is None:
                src = digits_lite_sources(self.hparams.client_domain, self.hparams.data_seed, self.hparams.cache_dir)
                self._sources = (src.open, src.client, src.client_test, src.data_id)
            else:
                if open_ds is None or (client_ds is None and not self.hparams.proxy_file):
                    raise ValueError("pass both open_dataset and client_dataset (client_test_dataset optional), "
                                     "or none of them for digits-lite")
                for name, ds in (("open_dataset", open_ds), ("client_dataset", client_ds)):
                    if ds is not None and len(ds) == 0:
                        raise ValueError(f"{name} is empty: it must hold at least one image")
                data_id = self.hparams.dataset_id or "/".join(
                    fingerprint(ds) for ds in (open_ds, client_ds, test_ds) if ds is not None)
                self._sources = (open_ds, client_ds, test_ds, data_id)
        return self._sources

    def _file_sources(self, test_ds):
        """Sources of a proxy file: its images (each checked to lie inside the pool root and to open as an
        image), or the digits-lite pool it was drawn from."""
        proxy = read_proxy_file(self.hparams.proxy_file)
        if proxy["paths"] is not None:
            files = proxy_image_files(proxy, f"proxy file {self.hparams.proxy_file}")
            labels = proxy["labels"] or [-1] * len(files)
            return (PathImageDataset(files, labels), None, test_ds, f"file:{proxy['open']}")
        domain, _, seed = proxy["open"].removeprefix("digits-lite:").partition(":")
        if not proxy["open"].startswith("digits-lite:") or not (not seed or seed.isdecimal()):
            raise ValueError(f"proxy file {self.hparams.proxy_file} indexes the pool {proxy['open']!r}: pass that "
                             "pool as open_dataset")
        src = digits_lite_sources(domain, int(seed or 0), self.hparams.cache_dir)
        return (src.open, None, test_ds if test_ds is not None else src.client_test, src.data_id)

    def labels(self, dataset: Dataset) -> np.ndarray:
        """Every label int64 [N] of one of this module's datasets (see ``dataset_labels``), read once."""
        key = id(dataset)  # the module holds its datasets, so an id names one for the module's lifetime
        if key not in self._label_cache:
            self._label_cache[key] = dataset_labels(dataset)
        return self._label_cache[key]

    @property
    def num_classes(self) -> int:
        open_ds, client_ds, _, _ = self.sources()
        labels = [self.labels(ds) for ds in (open_ds, client_ds) if ds is not None]
        return int(getattr(open_ds, "num_classes", 0) or max(int(x.max()) for x in labels) + 1)

    def config(self) -> dict:
        """Everything that determines the proxy artifact: settings, encoder, data and labels."""
        h = self.hparams
        keys = ("num_clusters", "q", "noise_multiplier", "delta", "budget", "sampler", "label_source", "seed")
        cfg = {k: h[k] for k in keys}
        if h.label_source == "client_knn":
            cfg.update(knn_k=h.knn_k, knn_noise_multiplier=h.knn_noise_multiplier,
                       knn_sampling_rate=h.knn_sampling_rate)
        open_ds, client_ds, _, data_id = self.sources()
        labels = [hashlib.sha256(self.labels(ds).astype("<i8").tobytes()).hexdigest() for ds in (open_ds, client_ds)]
        cfg.update(encoder=self.spec.to_dict(), data=data_id, labels=labels, version=ARTIFACT_VERSION)
        return cfg

    def proxy_hash(self) -> str:
        """The hash of the proxy these settings give (the proxy file's, else the artifact's), found
        without running the protocol."""
        if self.hparams.proxy_file:
            return self._proxy_from_file()["hash"]
        return stable_hash(self.config())

    def artifact_path(self) -> Path:
        return self.cache_dir / f"proxy-{stable_hash(self.config())}.json"

    def planned_releases(self) -> list[dict]:
        """What the client will release in this run (known before any query is made)."""
        h = self.hparams
        releases = []
        if h.sampler == "ecos":
            releases.append(gaussian_release(h.noise_multiplier, what="ecos_coverage_scores"))
        elif h.sampler in ("upload", "local"):
            releases.append({"mechanism": "non_private", "count": 1, "what": f"{h.sampler}: client data"})
        if h.label_source == "client_knn":
            queries = len(self.sources()[0]) if h.sampler == "full" else h.budget
            releases.append(self._knn().release(queries))
        return releases

    def _knn(self) -> PrivateKnnLabeler:
        h = self.hparams
        return PrivateKnnLabeler(h.knn_k, h.knn_noise_multiplier, h.knn_sampling_rate, seed=h.seed)

    # --------------------------------------------------------- prepare / setup
    def prepare_data(self) -> None:
        """Run the protocol once per node and write the artifact.

        Skipped when the artifact exists, when the module already holds its proxy, and when the
        trainer resumes from a checkpoint (whose proxy ``setup`` takes). The global torch random
        stream is left as it was, so training is the same whatever the cache held.
        """
        if self.proxy is None:
            with torch.random.fork_rng(devices=[]):
                self._prepare()

    def _prepare(self) -> None:
        if self.hparams.proxy_file:
            epsilon = epsilon_from_json(self._proxy_from_file()["epsilon"])
            if self.hparams.max_epsilon is not None and epsilon > self.hparams.max_epsilon:
                raise ValueError(f"privacy budget: the proxy file reports epsilon={epsilon:.3g} > max_epsilon="
                                 f"{self.hparams.max_epsilon:g}")
            self._resumed_proxy()  # refuses, before training, a checkpoint trained on another proxy
            return
        planned = releases_epsilon(self.planned_releases(), self.hparams.delta)
        if self.hparams.max_epsilon is not None and planned > self.hparams.max_epsilon:
            raise ValueError(f"privacy budget: this run would spend epsilon={planned:.3g} at delta="
                             f"{self.hparams.delta:g} > max_epsilon={self.hparams.max_epsilon:g}; raise "
                             "noise_multiplier (or knn_noise_multiplier) or max_epsilon")
        if self._resumed_proxy() is not None:
            return
        path = self.artifact_path()
        if path.exists():
            log.info("proxy artifact %s exists: reusing it", path)
            return
        artifact = self._build_artifact()
        atomic_write_bytes(path, json.dumps(artifact).encode())
        log.info("proxy artifact written: %s", path)

    def _build_artifact(self) -> dict:
        h = self.hparams
        open_ds, client_ds, _, data_id = self.sources()
        cache = self.cache_dir
        extract = dict(cache_dir=cache, progress=True)
        if h.sampler == "local":
            indices = np.arange(len(client_ds), dtype=np.int64)
            labels = self.labels(client_ds)
            result = None
        else:
            open_features = cached_features(self.spec, open_ds, f"{data_id}/open", desc="open-pool features",
                                            **extract)
            client_features = None
            if h.sampler in ("ecos", "upload") or h.label_source == "client_knn":
                client_features = cached_features(self.spec, client_ds, f"{data_id}/client",
                                                  desc="client features", **extract)
            result = select_proxy(h.sampler, open_features, h.budget, client_features=client_features,
                                  num_clusters=h.num_clusters, q=h.q, noise_multiplier=h.noise_multiplier,
                                  delta=h.delta, seed=h.seed, encoder=self.spec.to_dict(), progress=True)
            indices = result.indices
            labels = np.full(len(indices), -1, dtype=np.int64)
            if h.label_source in ("open", "manual"):
                labels = self.labels(open_ds)[indices]
            elif h.label_source == "client_knn":
                labels = self._knn().label(open_features[indices], client_features, self.labels(client_ds),
                                           self.num_classes)
        releases = self.planned_releases()
        released = hashlib.sha256((result.release_digest if result is not None else "").encode())
        if h.sampler == "local" or h.label_source == "client_knn":  # the labels came from the client's data
            released.update(np.asarray(labels, dtype="<i8").tobytes())
        truth = self.labels(client_ds if h.sampler == "local" else open_ds)[indices]
        domains = dataset_domains(client_ds if h.sampler == "local" else open_ds)
        return {
            "version": ARTIFACT_VERSION,
            "hash": stable_hash(self.config()),
            "config": self.config(),
            "source": "client" if h.sampler == "local" else "open",
            "indices": indices.tolist(),
            "labels": labels.tolist(),
            "clusters": result.clusters.tolist() if result is not None else [-1] * len(indices),
            "cluster_scores": (result.cluster_scores.tolist()
                               if result is not None and result.cluster_scores is not None else None),
            "releases": releases,
            "release_hash": released.hexdigest() if releases else None,
            "epsilon": epsilon_to_json(releases_epsilon(releases, h.delta)),
            "delta": h.delta,
            "bytes_down": result.bytes_down if result is not None else 0,
            "bytes_up": result.bytes_up if result is not None else 0,
            "label_accuracy": (float((labels == truth).mean()) if h.label_source == "client_knn" else None),
            "domains": domains[indices].tolist() if domains is not None else None,
            "domain_names": list(getattr(open_ds, "domain_names", ())),
        }

    def setup(self, stage: str | None = None) -> None:
        """Read the proxy (every rank): from the checkpoint the trainer resumes from, else the proxy
        file or the artifact; nothing when the module already holds it."""
        if self.proxy is None:
            self.proxy = self._resumed_proxy()
        if self.proxy is None and self.hparams.proxy_file:
            self.proxy = self._proxy_from_file()
        if self.proxy is None:
            path = self.artifact_path()
            if not path.exists():
                raise FileNotFoundError(f"proxy artifact {path} is missing: prepare_data did not run or failed")
            self.proxy = load_artifact(path)

    def _proxy_from_file(self) -> dict:
        """The proxy of ``proxy_file`` in the artifact's form (releases stay in the client's ledger).

        Its images are its paths when no open_dataset is given, else its indices into open_dataset;
        ``ValueError`` when an index is beyond the pool."""
        proxy = read_proxy_file(self.hparams.proxy_file)
        n = len(proxy["indices"])
        by_path = proxy["paths"] is not None and self._datasets[0] is None
        indices = list(range(n)) if by_path else proxy["indices"]
        pool = len(self.sources()[0])
        if max(indices) >= pool:
            raise ValueError(f"proxy file {self.hparams.proxy_file}: index {max(indices)} is beyond the open pool of "
                             f"{pool} images: pass the pool it was sampled from ({proxy['open']})")
        images = "paths" if by_path else self.sources()[3]  # how its images are found is part of the proxy
        return {"version": ARTIFACT_VERSION, "hash": stable_hash([proxy, images]), "source": "open", "indices": indices,
                "labels": proxy["labels"] if proxy["labels"] is not None else [-1] * n,
                "clusters": proxy["clusters"], "cluster_scores": None, "releases": [], "epsilon": proxy["epsilon"],
                "delta": proxy["delta"], "bytes_down": proxy["bytes_down"], "bytes_up": proxy["bytes_up"],
                "label_accuracy": None, "domains": None, "domain_names": []}

    def _resumed_proxy(self) -> dict | None:
        """The proxy in the checkpoint the trainer resumes from (``trainer.ckpt_path``), checked to be
        the one these settings give; None when the trainer does not resume. A checkpoint without a
        proxy of this module is refused: a resume never runs the protocol again."""
        path = self.trainer.ckpt_path if self.trainer is not None else None
        if not path:
            return None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
            raise ValueError(f"checkpoint {path} is unreadable ({exc}); pass another ckpt_path") from None
        state = checkpoint.get(type(self).__qualname__) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict) or "proxy_json" not in state:
            raise ValueError(f"checkpoint {path} holds no proxy of a {type(self).__qualname__}: resume from a "
                             "checkpoint of a run with this data module, or start a new run without ckpt_path")
        return self._restored_proxy(state, f"checkpoint {path}")

    def _restored_proxy(self, state: dict, where: str) -> dict:
        """The proxy saved by :meth:`state_dict`, checked to be well formed and the one these settings give."""
        try:
            proxy = json.loads(state["proxy_json"])
        except (TypeError, ValueError, RecursionError):
            proxy = None
        if not (isinstance(proxy, dict) and isinstance(proxy.get("hash"), str) and isinstance(proxy.get("indices"), list)
                and isinstance(proxy.get("labels"), list) and len(proxy["indices"]) == len(proxy["labels"])):
            raise ValueError(f"{where}: its proxy is not one this data module saved; start a new run without ckpt_path")
        self._check_same_proxy(proxy, where)
        return proxy

    def _check_same_proxy(self, proxy: dict, where: str) -> None:
        """Refuse a saved proxy that is not the one these settings (or this proxy file) give."""
        expected = self.proxy_hash()
        if proxy.get("hash") != expected:
            raise ValueError(f"{where} was trained on proxy {proxy.get('hash')}, but these settings give proxy "
                             f"{expected}: resume with the data, protocol settings and proxy file of that run, "
                             "or start a new run without ckpt_path")

    # ------------------------------------------------------------ properties
    @property
    def epsilon(self) -> float:
        return epsilon_from_json(self._proxy()["epsilon"])

    @property
    def proxy_label_accuracy(self) -> float | None:
        return self._proxy().get("label_accuracy")

    def _proxy(self) -> dict:
        if self.proxy is None:
            raise RuntimeError("the proxy is not ready: call prepare_data() and setup() first")
        return self.proxy

    def proxy_indices(self) -> np.ndarray:
        return np.asarray(self._proxy()["indices"], dtype=np.int64)

    def _train_val_positions(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._proxy()["indices"])
        order = np.random.default_rng(self.hparams.seed).permutation(n)
        n_val = int(round(self.hparams.val_fraction * n)) if n > 1 else 0
        return np.sort(order[n_val:]), np.sort(order[:n_val])

    def _subset(self, positions: np.ndarray, train: bool) -> ImageSubset:
        proxy = self._proxy()
        open_ds, client_ds, _, _ = self.sources()
        base = client_ds if proxy["source"] == "client" else open_ds
        indices = np.asarray(proxy["indices"], dtype=np.int64)[positions]
        labels = np.asarray(proxy["labels"], dtype=np.int64)[positions]
        transform = _weak_augmentation(self.hparams.image_size) if train and self.hparams.augment else None
        return ImageSubset(base, indices, labels, self.hparams.image_size, transform)

    # ----------------------------------------------------------- dataloaders
    def _loader(self, dataset, shuffle: bool, batch_size: int | None = None, sampler=None,
                drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size or self.hparams.batch_size, shuffle=shuffle,
                          sampler=sampler, num_workers=self.hparams.num_workers, drop_last=drop_last,
                          persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self):
        train = self._subset(self._train_val_positions()[0], train=True)
        # a last batch of a single image breaks BatchNorm in training: drop it
        single = len(train) > 1 and len(train) % self.hparams.batch_size == 1
        proxy_loader = self._loader(train, shuffle=True, drop_last=single)
        if self.hparams.unlabelled_batch_size <= 0:
            return proxy_loader
        open_ds = self.sources()[0]
        rest = np.setdiff1d(np.arange(len(open_ds)), self.proxy_indices() if self._proxy()["source"] == "open"
                            else np.empty(0, np.int64))
        size = self.hparams.image_size
        views = TwoViewSubset(open_ds, rest, size, _weak_augmentation(size), _strong_augmentation(size))
        draws = len(proxy_loader) * self.hparams.unlabelled_batch_size
        unlabelled = self._loader(views, shuffle=False, batch_size=self.hparams.unlabelled_batch_size,
                                  sampler=RandomSampler(views, replacement=True, num_samples=draws))
        return CombinedLoader({"proxy": proxy_loader, "unlabelled": unlabelled}, mode="max_size_cycle")

    def val_dataloader(self):
        val = self._train_val_positions()[1]
        if len(val) == 0:
            return []
        return self._loader(self._subset(val, train=False), shuffle=False)

    def test_dataloader(self):
        """The client's held-out data; under several processes each image goes to exactly one of them
        (no padding), so the synced test metrics count every image once."""
        test_ds = self.sources()[2]
        if test_ds is None:
            raise ValueError("no client_test_dataset was given: pass one to evaluate on the client's data")
        test = ImageSubset(test_ds, np.arange(len(test_ds)), self.labels(test_ds), self.hparams.image_size)
        trainer = self.trainer
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            sampler = UnrepeatedDistributedSampler(test, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                                   shuffle=False)
        return self._loader(test, shuffle=False, sampler=sampler)

    def predict_dataloader(self):
        return self.test_dataloader()

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """The whole proxy as one JSON string (loads with ``weights_only=True``)."""
        if self.proxy is None:
            return {}
        return {"proxy_json": json.dumps(self.proxy)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the proxy from a checkpoint (the artifact and the protocol are not needed); a proxy
        that is not the one these settings give is refused."""
        if "proxy_json" in state_dict:
            restored = self._restored_proxy(state_dict, "the checkpoint")
            if self.proxy is None or self.proxy.get("hash") != restored["hash"]:
                self.proxy = restored

    def summary(self) -> dict:
        """Proxy size, class histogram, domain composition, epsilon, bytes: for reports."""
        proxy = self._proxy()
        labels = np.asarray(proxy["labels"])
        out = {
            "sampler": self.hparams.sampler, "size": len(proxy["indices"]), "epsilon": self.epsilon,
            "delta": proxy["delta"], "bytes_down": proxy["bytes_down"], "bytes_up": proxy["bytes_up"],
            "class_histogram": np.bincount(labels[labels >= 0], minlength=self.num_classes).tolist(),
            "label_accuracy": proxy.get("label_accuracy"),
        }
        if proxy.get("domains") is not None and proxy.get("domain_names"):
            counts = np.bincount(proxy["domains"], minlength=len(proxy["domain_names"]))
            out["domains"] = dict(zip(proxy["domain_names"], counts.tolist()))
        return out


def load_artifact(path: Path) -> dict:
    """Read and check a proxy artifact (JSON, written by this module)."""
    try:
        artifact = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"proxy artifact {path} is unreadable ({exc}); delete it to rebuild") from None
    if artifact.get("version") != ARTIFACT_VERSION or len(artifact["indices"]) != len(artifact["labels"]):
        raise ValueError(f"proxy artifact {path} has an unknown version or is inconsistent; delete it to rebuild")
    return artifact


def _weak_augmentation(size: int):
    pad = max(1, size // 16)
    return v2.Compose([v2.RandomCrop(size, padding=pad, padding_mode="edge"),
                       v2.RandomAffine(degrees=8, scale=(0.9, 1.1))])


def _strong_augmentation(size: int):
    return v2.Compose([_weak_augmentation(size), v2.RandAugment(num_ops=2, magnitude=10),
                       v2.RandomErasing(p=1.0, scale=(0.02, 0.15), value=127)])


__all__ = ["LABEL_SOURCES", "ProxyDataModule", "load_artifact"]
