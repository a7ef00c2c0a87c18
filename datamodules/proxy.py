"""ProxyDataModule: the ECOS proxy set as a LightningDataModule, usable in any Lightning project.

The proxy is made when it is first needed (:attr:`ProxyDataModule.proxy`): sources -> features ->
sampler -> label source -> the :class:`~ecos_lightning.proxy.Proxy` record, with the privacy releases
the sampler and the label source declare, written as a JSON artifact keyed by a hash of everything that
determines it (settings, encoder, every image and label, and the digests of the feature stores it was
built from); a second run reuses it. Under several processes every rank extracts its share of the
features and global rank 0 runs the protocol, so every rank trains on the same proxy.

The proxy is also part of the module's ``state_dict``. Lightning restores a checkpoint's state
(``trainer.fit/validate/test/predict(..., ckpt_path=...)``) before anything asks for the proxy, so a
resumed or evaluated run takes it from the checkpoint and never runs the protocol; a checkpoint whose
proxy is not the one this module's settings give is refused.

In this simulation the client's side (its features, coverage counts and kNN votes) runs in the
same process (see ``simulation``); only the messages and the released labels cross to the cloud's side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler
from torchvision.transforms import v2

from ecos_lightning.data import (DigitsLiteSource, FolderSource, PathImageDataset, open_source, parse_source,
                                 stated_fields)
from ecos_lightning.data.litdata_pool import LitDataSource
from ecos_lightning.data.shards import WebDatasetSource
from ecos_lightning.encoders import Encoder
from ecos_lightning.features.store import DEFAULT_CHUNK_ROWS, digest_of
from ecos_lightning.files import atomic_write_bytes, default_cache_dir, plain, stable_hash
from ecos_lightning.frameworks import bases, framework_of
from ecos_lightning.components import Run, build_proxy, planned_releases
from ecos_lightning.label_sources import LABEL_SOURCES, ClassCoverage, ClientKnn, LabelSource, get_label_source
from ecos_lightning.protocol import faiss_ops
from ecos_lightning.protocol.privacy import releases_epsilon
from ecos_lightning.protocol.validation import positive_int
from ecos_lightning.proxy import PROXY_VERSION, Proxy
from ecos_lightning.proxy_file import proxy_image_files
from ecos_lightning.samplers import Inputs, Sampler, get_sampler

from .options import Datasets, Loaders, as_dataclass
from .images import (ImageSubset, TwoViewSubset, UnitImage, check_raw_images, dataset_domains, dataset_labels,
                     fingerprint)
from .simulation import extract_shard, simulated_inputs

log = logging.getLogger(__name__)

#: Former flat settings of the components (deprecated) -> (the component they configure, its parameter, the
#: class that takes it).
FLAT_SETTINGS = {
    "num_clusters": ("sampler", "num_clusters", Sampler), "q": ("sampler", "q", Sampler),
    "noise_multiplier": ("sampler", "noise_multiplier", Sampler),
    "knn_k": ("label_source", "k", ClientKnn), "knn_noise_multiplier": ("label_source", "noise_multiplier", ClientKnn),
    "knn_sampling_rate": ("label_source", "sampling_rate", ClientKnn),
    "coverage_clusters": ("label_source", "clusters", ClassCoverage),
    "coverage_noise_multiplier": ("label_source", "noise_multiplier", ClassCoverage),
    "coverage_label_fraction": ("label_source", "label_fraction", ClassCoverage),
}

#: Former arguments (deprecated) -> (the argument that holds them now, its field).
RENAMED = {
    "open_dataset": ("dataset", "open"), "client_dataset": ("dataset", "client"),
    "client_test_dataset": ("dataset", "client_test"), "dataset_id": ("dataset", "id"),
    "encoder_weights": ("encoder", "weights"), "encoder_input_size": ("encoder", "input_size"),
    "encoder_pooling": ("encoder", "pooling"),
    **{name: ("loaders", name) for name in Loaders.__dataclass_fields__},
}

#: Former arguments (deprecated) that a source name states: ``digits-lite:<domain>[:<seed>]``,
#: ``<kind>:client=<domain>:seed=<seed>:<root>``.
NAMED_IN_SOURCE = ("client_domain", "data_seed")

def former_arguments(open_dataset: Dataset | None = None, client_dataset: Dataset | None = None,
                     client_test_dataset: Dataset | None = None, dataset_id: str | None = None,
                     client_domain: str | None = None, data_seed: int | None = None,
                     encoder_weights: str | None = None, encoder_input_size: int | None = None,
                     encoder_pooling: str | None = None, batch_size: int | None = None,
                     num_workers: int | Literal["auto"] | None = None, val_fraction: float | None = None,
                     image_size: int | None = None, augment: bool | None = None,
                     train_transform: Callable | None = None, eval_transform: Callable | None = None,
                     unlabelled_batch_size: int | None = None, keep_unlabelled: bool | None = None,
                     num_clusters: int | Literal["auto"] | None = None, q: int | None = None,
                     noise_multiplier: float | None = None, knn_k: int | None = None,
                     knn_noise_multiplier: float | None = None, knn_sampling_rate: float | None = None,
                     coverage_clusters: int | Sequence[int] | None = None,
                     coverage_noise_multiplier: float | None = None,
                     coverage_label_fraction: float | None = None) -> dict:
    """The former flat arguments of :class:`ProxyDataModule` that were given (not None), by name.

    Deprecated, each one warned about: the data module takes them as ``**deprecated`` and LightningCLI
    and jsonargparse read their types here, so old configs and command lines still load. See
    ``RENAMED``, ``NAMED_IN_SOURCE`` and ``FLAT_SETTINGS`` for where each one goes now.
    """
    return {key: value for key, value in locals().items() if value is not None}


def _component(get, role: str, spec, flat: dict):
    """The ``role`` component ``spec`` names, with the deprecated flat settings ``flat`` of that role applied where
    its class takes them, over the component's own parameters (a command-line override of a configured object;
    the component is rebuilt from its config), each one warned about."""
    component = get(spec)
    given = {key: value for key, value in flat.items() if FLAT_SETTINGS[key][0] == role}
    taken = type(component).parameters()
    overrides, flat_key = {}, {}
    for key, value in given.items():
        _, param, owner = FLAT_SETTINGS[key]
        if isinstance(component, owner) and param in taken:
            overrides[param], flat_key[param] = value, key
            advice = (f"set {param} on the {role} ({role}: {{class_path: {type(component).__name__}, init_args: "
                      f"{{{param}: ...}}}})")
        else:
            advice = f"it does not apply to the {role} {component.display_name()!r} and is ignored"
        _deprecated(key, advice)
    if not overrides:
        return component
    config = component.config()
    try:
        return get({"class_path": config["class_path"], "init_args": {**config["init_args"], **overrides}})
    except ValueError as exc:  # name the setting as the user wrote it
        param, _, rest = str(exc).partition(" ")
        if param in flat_key:
            raise ValueError(f"{flat_key[param]} {rest}") from None
        raise


def _deprecated(key: str, advice: str) -> None:
    warnings.warn(f"{key} is deprecated: {advice}", DeprecationWarning, stacklevel=5)


def _grouped(cls, value, argument: str, renamed: dict):
    """The ``argument`` object (``cls``, or a mapping of its fields) with the deprecated arguments of its fields
    in ``renamed`` applied over them, each one warned about."""
    value = as_dataclass(cls, value, argument)
    fields = {RENAMED[key][1]: given for key, given in renamed.items() if RENAMED[key][0] == argument}
    for key in (key for key in renamed if RENAMED[key][0] == argument):
        field = RENAMED[key][1]
        _deprecated(key, f"pass dataset=Datasets({field}=...)" if cls is Datasets else
                    f"set {argument}.{field} ({argument}: {{{field}: ...}})")
    return dataclasses.replace(value, **fields) if fields else value


class ProxyDataModule(*bases("LightningDataModule")):
    """Selects a proxy set from an open pool for a client and serves it for training.

    Args:
        dataset: the data: a source name ``ecos_lightning.data.parse_source`` reads (``digits-lite``,
            ``digits-lite:printed:1``, ``domainnet:<root>``, ``digits5:<root>``, ``office-caltech10:<root>``,
            ``folders:<root>``, ``imagefolder:<root>``, with ``<key>=<value>:`` options before the root, such
            as ``client=`` and ``seed=``), or :class:`~ecos_lightning.datamodules.options.Datasets` given in code.
            Labels are hashed into the artifact's key; the proxy carries the labels of the selected images
            only (``manual``).
        encoder: the feature encoder both sides use: :class:`~ecos_lightning.encoders.Encoder` (name, weights,
            input_size, pooling), its fields as a mapping, or a timm model name (the other fields default).
        sampler: the sampler object (``ecos_lightning.samplers``: ``Ecos(num_clusters, q, noise_multiplier,
            fp16, pca_dim, noise_z, ...)``, ``Random()``, ``KCenter()``, ``Full()``, ``Upload()``, ``Local()``:
            train on the client's own data), or what names one: a registered name (``ecos``: ``Ecos()`` with
            its defaults), an import path, or ``{class_path, init_args}`` as LightningCLI writes it.
        label_source: the label source object (``ecos_lightning.label_sources``: ``Manual()``: labels of the
            selected images only, ``ClientKnn(k, noise_multiplier, sampling_rate)``: Private kNN by the client,
            ``ClassCoverage(clusters, noise_multiplier, label_fraction)``, ``Unlabelled()``: labels -1), or
            what names one, as for ``sampler``; ``open`` is a deprecated name of ``manual``.
        budget: proxy size B.
        delta: the delta of every epsilon reported (the client ledger's).
        max_epsilon: refuse, before any query, a run whose composed epsilon would exceed this.
        loaders: :class:`~ecos_lightning.datamodules.options.Loaders`: batch size, workers, validation share,
            image size, augmentation, transforms, the FixMatch stream and the label contract
            (``keep_unlabelled``), or a mapping of its fields.
        seed: seeds the protocol, the noise, the validation split.
        cache_dir: features and artifacts.
        proxy_file: train on a proxy chosen by ``ecos-cloud sample`` with a real client instead of
            running the protocol here. Its images are its ``paths`` (an image-folder pool) or its indices
            into ``Datasets.open`` / the digits-lite pool it names; its labels are used as they are.
        faiss_gpu: run the cloud's k-means and assignment on the GPUs faiss sees (None: when it sees one);
            False is the switch for bit-reproducible proxies (a GPU rounds differently; a proxy chosen on
            a GPU is keyed apart from the CPU's).
        feature_chunk_rows: rows per chunk of the on-disk feature stores (a multiple of 256): the unit an
            interrupted extraction resumes at, and that the ranks of a distributed run share out.
        **deprecated: the former flat arguments (:func:`former_arguments`), each with a ``DeprecationWarning``: the
            components' parameters (``num_clusters``, ``q``, ``noise_multiplier``, ``knn_*``, ``coverage_*``:
            ``FLAT_SETTINGS``) set that parameter of the component whose class takes it; ``open_dataset``,
            ``client_dataset``, ``client_test_dataset``, ``dataset_id``, ``encoder_*`` and the loader
            settings set their field of ``dataset``, ``encoder`` or ``loaders`` (``RENAMED``);
            ``client_domain`` and ``data_seed`` replace the client domain and split seed the source names
            (a value the name states itself and the argument contradicts is refused). None is "not given".
    """

    def __init__(self, dataset: str | Datasets = "digits-lite", encoder: str | Encoder = "efficientnet_lite0",
                 sampler: str | Sampler = "ecos", label_source: str | LabelSource = "manual", budget: int = 1000,
                 delta: float = 1e-5, max_epsilon: float | None = None, loaders: Loaders = Loaders(), seed: int = 0,
                 cache_dir: str | None = None, proxy_file: str | None = None, faiss_gpu: bool | None = None,
                 feature_chunk_rows: int = DEFAULT_CHUNK_ROWS, **deprecated):
        super().__init__()
        given = former_arguments(**deprecated)
        flat = {key: value for key, value in given.items() if key in FLAT_SETTINGS}
        renamed = {key: value for key, value in given.items() if key in RENAMED}
        self.sampler = _component(get_sampler, "sampler", sampler, flat)
        self.label_source = _component(get_label_source, "label_source", label_source, flat)
        if self.sampler.source == "client" and not self.label_source.labels_client_data:
            usable = [name for name, cls in LABEL_SOURCES.items() if cls.labels_client_data]
            raise ValueError(f"sampler={self.sampler.display_name()!r} trains on the client's own labels: use "
                             f"label_source={usable}")
        self._device_sizes = None  # a fleet's images per device (see ``devices``)
        if isinstance(dataset, str) and not any(RENAMED[key][0] == "dataset" for key in renamed):
            self.datasets = None
        else:
            self.datasets = self._one_client(_grouped(Datasets, Datasets() if isinstance(dataset, str) else dataset,
                                                      "dataset", renamed))
        self.encoder = _grouped(Encoder, Encoder(encoder) if isinstance(encoder, str) else encoder, "encoder",
                                renamed)
        self.loaders = _grouped(Loaders, loaders, "loaders", renamed)
        positive_int(budget, "budget")
        if positive_int(feature_chunk_rows, "feature_chunk_rows") % 256:
            raise ValueError(f"feature_chunk_rows must be a multiple of 256 (the extraction batch), got {feature_chunk_rows}")
        if max_epsilon is not None and not max_epsilon > 0:
            raise ValueError(f"max_epsilon must be > 0, got {max_epsilon!r}")
        #: how each given dataset is named in errors: as the user wrote it
        self._dataset_names = {field: next((key for key in renamed if RENAMED[key] == ("dataset", field)),
                                           f"dataset.{field}") for field in ("open", "client", "client_test")}
        if self.datasets is not None:
            for field, ds in zip(self._dataset_names, self._datasets):
                if ds is not None:
                    check_raw_images(ds, self._dataset_names[field])
        named = {key: given[key] for key in NAMED_IN_SOURCE if key in given}
        for key in named:
            _deprecated(key, "name the client domain and split seed in dataset (digits-lite:<domain>:<seed>, "
                        "<kind>:client=<domain>:seed=<seed>:<root>)")
        self.save_hyperparameters({  # plain Python values: one hash and a weights-only checkpoint
            "dataset": dataset if self.datasets is None else None, **named, "encoder": dataclasses.asdict(self.encoder),
            "sampler": self.sampler.config(), "label_source": self.label_source.config(), "budget": budget,
            "delta": delta, "max_epsilon": max_epsilon, "loaders": plain(self.loaders.settings()), "seed": seed,
            "cache_dir": cache_dir, "proxy_file": proxy_file, "faiss_gpu": faiss_gpu,
            "feature_chunk_rows": feature_chunk_rows})
        self.spec = self.encoder.spec()
        self.source = self._source_record(named.get("client_domain"), named.get("data_seed")) \
            if self.datasets is None and not proxy_file else None
        self._sources = None
        self._label_cache: dict[int, np.ndarray] = {}
        self._fingerprints: dict[int, str] = {}
        self._proxy_record: Proxy | None = None  # made, read or restored on first need (see ``proxy``)
        self._told_unlabelled = False

    def _one_client(self, datasets: Datasets) -> Datasets:
        """``datasets`` with a fleet's list of device datasets joined into one client (their sizes kept)."""
        if not isinstance(datasets.client, (list, tuple)):
            return datasets
        if not datasets.client:
            raise ValueError("dataset.client is an empty list: give one dataset per device of the fleet")
        for i, device in enumerate(datasets.client):
            if len(device) == 0:
                raise ValueError(f"dataset.client[{i}] is empty: every device of a fleet holds at least one image")
            check_raw_images(device, f"dataset.client[{i}]")
        self._device_sizes = tuple(len(device) for device in datasets.client)
        return dataclasses.replace(datasets, client=ConcatDataset(list(datasets.client)))

    def devices(self) -> tuple[int, ...] | None:
        """For a fleet (a fleet source, or a list of client datasets): the images of each device, consecutive
        in the client dataset; None for one client."""
        self.sources()
        return self._device_sizes

    @property
    def _datasets(self) -> tuple:
        """(open, client, client_test) datasets given in code (Nones when the data is a source name)."""
        d = self.datasets or Datasets()
        return d.open, d.client, d.client_test

    @property
    def _dataset_id(self) -> str | None:
        return self.datasets.id if self.datasets is not None else None

    # --------------------------------------------------------------- sources
    @property
    def cache_dir(self) -> Path:
        return Path(self.hparams.cache_dir) if self.hparams.cache_dir else default_cache_dir()

    def sources(self):
        """(open, client, client_test, data_id): the given datasets or the split of ``dataset``."""
        if self._sources is None:
            open_ds, client_ds, test_ds = self._datasets
            if self.hparams.proxy_file and open_ds is None:
                self._sources = self._file_sources(test_ds)
            elif open_ds is None and client_ds is None and test_ds is None:
                src = open_source(self.source, self.hparams.cache_dir)
                self._sources, self._device_sizes = (src.open, src.client, src.client_test, src.data_id), src.devices
            else:
                if open_ds is None or (client_ds is None and not self.hparams.proxy_file):
                    raise ValueError("dataset: Datasets needs both open and client (client_test optional); or "
                                     "name a source, such as digits-lite")
                for field, ds in (("open", open_ds), ("client", client_ds)):
                    if ds is not None and len(ds) == 0:
                        raise ValueError(f"{self._dataset_names[field]} is empty: it must hold at least one image")
                data_id = self._dataset_id or "/".join(
                    self.fingerprint(ds) for ds in (open_ds, client_ds, test_ds) if ds is not None)
                self._sources = (open_ds, client_ds, test_ds, data_id)
        return self._sources

    def _source_record(self, client_domain: str | None, data_seed: int | None):
        """The source ``dataset`` names, with the deprecated ``client_domain`` and ``data_seed`` applied when
        given; a value the name itself states and the argument contradicts is refused, naming both."""
        h = self.hparams
        record = parse_source(h.dataset)
        if isinstance(record, (FolderSource, WebDatasetSource, LitDataSource)):
            raise ValueError(f"dataset {h.dataset!r} is an open pool without a client; name a "
                             "multi-domain source (folders:<root>, imagefolder:<root>) or pass open_dataset and "
                             "client_dataset")
        client = "domain" if isinstance(record, DigitsLiteSource) else "client"
        named = stated_fields(h.dataset)
        for argument, value, field in (("client_domain", client_domain, client), ("data_seed", data_seed, "seed")):
            if value is not None and field in named and getattr(record, field) != value:
                raise ValueError(f"{argument}={value!r} contradicts dataset {h.dataset!r}, which names {field} "
                                 f"{getattr(record, field)!r}: set one of them (e.g. {argument}: null)")
        changes = {client: client_domain, "seed": data_seed}
        return dataclasses.replace(record, **{k: v for k, v in changes.items() if v is not None})

    def feature_ids(self) -> tuple[str, str]:
        """Cache identities of the open pool's and the client's features, each keyed by its own data
        alone: changing only the client re-extracts nothing of the pool (digits-lite and a given
        ``dataset_id`` name both parts of one split)."""
        open_ds, client_ds, _, data_id = self.sources()
        if self._dataset_id or self._datasets[0] is None:
            return f"{data_id}/open", f"{data_id}/client"
        return f"{self.fingerprint(open_ds)}/open", f"{self.fingerprint(client_ds)}/client"

    def _file_sources(self, test_ds):
        """Sources of a proxy file: its images (each checked to lie inside the pool root and to open as an
        image), or the pool of the source it was drawn from (digits-lite, Digits-5, ...)."""
        proxy = self._read_proxy_file(test_ds)
        if proxy.paths is not None:
            files = proxy_image_files(proxy, f"proxy file {self.hparams.proxy_file}")
            return (PathImageDataset(files, proxy.label_list()), None, test_ds, f"file:{proxy.open}")
        source = parse_source(proxy.open)
        if isinstance(source, FolderSource):
            raise ValueError(f"proxy file {self.hparams.proxy_file} indexes the pool {proxy.open!r}: pass that "
                             "pool as dataset=Datasets(open=...)")
        src = open_source(source, self.hparams.cache_dir)
        return (src.open, None, test_ds if test_ds is not None else src.client_test, src.data_id)

    def fingerprint(self, dataset: Dataset) -> str:
        """The content fingerprint of one of this module's datasets (see ``images.fingerprint``), read once."""
        key = id(dataset)  # the module holds its datasets, so an id names one for the module's lifetime
        if key not in self._fingerprints:
            self._fingerprints[key] = fingerprint(dataset)
        return self._fingerprints[key]

    def labels(self, dataset: Dataset) -> np.ndarray:
        """Every label int64 [N] of one of this module's datasets (see ``dataset_labels``), read once."""
        key = id(dataset)  # the module holds its datasets, so an id names one for the module's lifetime
        if key not in self._label_cache:
            self._label_cache[key] = dataset_labels(dataset)
        return self._label_cache[key]

    @property
    def num_classes(self) -> int:
        """The label classes: a proxy file's ``class_names`` where it names them, else the pool's classes
        (its ``num_classes``, else the largest label of the pool and the client, plus one)."""
        if self.hparams.proxy_file:
            names = self._proxy_from_file().class_names
            if names:
                return len(names)
        open_ds, client_ds, _, _ = self.sources()
        labels = [self.labels(ds) for ds in (open_ds, client_ds) if ds is not None]
        return int(getattr(open_ds, "num_classes", 0) or max(int(x.max()) for x in labels) + 1)

    def config(self) -> dict:
        """Everything that determines the proxy artifact: settings, encoder, data and labels."""
        h = self.hparams
        cfg = {"budget": h.budget, "delta": h.delta, "seed": h.seed, "sampler": self.sampler.config(),
               "label_source": self.label_source.config()}
        open_ds, client_ds, _, data_id = self.sources()
        labels = [hashlib.sha256(self.labels(ds).astype("<i8").tobytes()).hexdigest() for ds in (open_ds, client_ds)]
        cfg.update(encoder=self.spec.to_dict(), data=data_id, labels=labels, version=PROXY_VERSION)
        if self.devices() is not None:
            cfg["devices"] = list(self.devices())
        if faiss_ops.gpu_available() if h.faiss_gpu is None else h.faiss_gpu:
            cfg["faiss"] = "gpu"  # GPU rounding may choose another proxy: never reuse a CPU artifact for it
        return cfg

    def proxy_hash(self) -> str:
        """The hash of the proxy these settings give (the proxy file's, else the artifact's), found
        without running the protocol."""
        if self.hparams.proxy_file:
            return self._proxy_from_file().hash
        return stable_hash(self.config())

    def artifact_path(self) -> Path:
        """The artifact of these settings and of the exact features the protocol reads (their stores'
        digests: features extracted again after a change never meet a proxy of the old ones); extracts the
        features the components need when they are not complete."""
        return self._artifact_path(self._feature_digests(self._inputs()))

    def _artifact_path(self, feature_digests: list[str]) -> Path:
        return self.cache_dir / f"proxy-{stable_hash([self.config(), feature_digests])}.json"

    def planned_releases(self) -> list[dict]:
        """What the client will release in this run, as the sampler and the label source declare it (known
        before any query is made): the budget check, the proxy's releases and the ledger all use this."""
        open_ds, client_ds, _, _ = self.sources()
        return planned_releases(self.sampler, self.label_source, self._run(), len(open_ds), len(client_ds))

    def _run(self) -> Run:
        h = self.hparams
        return Run(budget=h.budget, delta=h.delta, seed=h.seed, progress=True, faiss_gpu=h.faiss_gpu)

    # --------------------------------------------------------- prepare / the proxy
    def prepare_data(self) -> None:
        """Check the run's privacy budget before anything is extracted or queried.

        The proxy itself is made when it is first needed (:attr:`proxy`: the loaders, a callback at fit
        start), which in every Lightning entry point (``fit``, ``validate``, ``test``, ``predict``, with or
        without ``ckpt_path``) comes after the trainer has restored a checkpoint's proxy through
        :meth:`load_state_dict`: a resume or a test from a checkpoint never extracts features or queries
        the client again, whatever else the checkpoint holds.
        """
        h = self.hparams
        if h.proxy_file:
            epsilon = self._proxy_from_file().epsilon
            if h.max_epsilon is not None and epsilon > h.max_epsilon:
                raise ValueError(f"privacy budget: the proxy file reports epsilon={epsilon:.3g} > max_epsilon="
                                 f"{h.max_epsilon:g}")
            return
        planned = releases_epsilon(self.planned_releases(), h.delta)
        if h.max_epsilon is not None and planned > h.max_epsilon:
            raise ValueError(f"privacy budget: this run would spend epsilon={planned:.3g} at delta={h.delta:g} > "
                             f"max_epsilon={h.max_epsilon:g}; raise the noise_multiplier of sampler "
                             f"{self.sampler.display_name()!r} or of label source "
                             f"{self.label_source.display_name()!r}, or max_epsilon")

    @property
    def proxy(self) -> Proxy:
        """The proxy this module trains on: restored from a checkpoint, read from the proxy file or the
        artifact, else made by running the protocol (and written as the artifact).

        Under several processes the first access is a collective (every rank extracts its share of the
        features, global rank 0 runs the protocol and broadcasts the proxy): Lightning's hooks make it on
        every rank. The global torch random stream is left as it was, so training is the same whatever
        the cache held.
        """
        if self._proxy_record is None:
            self._proxy_record = self._obtain_proxy()
        return self._proxy_record

    def _obtain_proxy(self) -> Proxy:
        path = self.trainer.ckpt_path if self.trainer is not None else None
        if path:  # the trainer restored this checkpoint, and no proxy of this module came with it
            raise ValueError(f"checkpoint {path} holds no proxy of a {type(self).__qualname__}: resume from a "
                             "checkpoint of a run with this data module, or start a new run without ckpt_path")
        if self.hparams.proxy_file:
            return self._proxy_from_file()
        self.prepare_data()  # the budget check, also where the trainer does not call prepare_data here
        with torch.random.fork_rng(devices=[]):
            return self._distributed_proxy() if self._world_size() > 1 else self._local_proxy()

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _inputs(self) -> Inputs:
        """What the components read (the features they need extracted into, or read from, their stores)."""
        open_ds, client_ds, _, _ = self.sources()
        return simulated_inputs(self.spec, open_ds, client_ds, self.feature_ids(),
                                self.sampler.needs | self.label_source.needs, self.cache_dir, self.labels,
                                self.num_classes, self.hparams.feature_chunk_rows, self.devices())

    @staticmethod
    def _feature_digests(inputs: Inputs) -> list[str]:
        return [digest_of(f) for f in (inputs.open_features, inputs.client_features) if f is not None]

    def _local_proxy(self) -> Proxy:
        """The artifact of the current features if there is one, else the protocol's proxy, written as it."""
        inputs = self._inputs()
        path = self._artifact_path(self._feature_digests(inputs))
        if path.exists():
            log.info("proxy artifact %s (built from these settings and features): reusing it", path)
            return load_artifact(path)
        proxy = self._build_proxy(inputs)
        atomic_write_bytes(path, proxy.to_json().encode())
        log.info("proxy artifact written: %s", path)
        return proxy

    def _distributed_proxy(self) -> Proxy:
        """Every rank extracts its chunks of the features, then global rank 0 reads the artifact or runs the
        protocol and every rank receives its proxy (the artifact is written on each node's local rank 0)."""
        strategy, h = self.trainer.strategy, self.hparams
        open_ds, client_ds, _, _ = self.sources()
        needs = self.sampler.needs | self.label_source.needs
        args = (self.spec, open_ds, client_ds, self.feature_ids(), needs, self.cache_dir)
        extract_shard(*args, strategy.global_rank, strategy.world_size, h.feature_chunk_rows)
        strategy.barrier("ecos features")
        extract_shard(*args, 0, 1, h.feature_chunk_rows)  # a node that does not share the cache fills the rest
        text = self._local_proxy().to_json() if strategy.global_rank == 0 else None
        proxy = Proxy.from_json(strategy.broadcast(text, src=0), "broadcast proxy")
        if strategy.local_rank == 0 and strategy.global_rank != 0:
            path = self.artifact_path()
            if not path.exists():
                atomic_write_bytes(path, proxy.to_json().encode())
        return proxy

    def _build_proxy(self, inputs: Inputs) -> Proxy:
        """inputs -> sampler -> label source -> the Proxy with the declared releases."""
        proxy = build_proxy(inputs, self.sampler, self.label_source, self._run(), self.planned_releases())
        return proxy.replace(open=self.sources()[3], hash=stable_hash(self.config()))

    def _proxy_from_file(self) -> Proxy:
        """The proxy of ``proxy_file`` as this module trains on it (its releases stay in the client's ledger).

        Its images are its paths when no open_dataset is given (its indices become positions in that
        list), else its indices into open_dataset; ``ValueError`` when an index is beyond the pool."""
        proxy = self._read_proxy_file(self.sources()[2])
        by_path = proxy.paths is not None and self._datasets[0] is None
        indices = list(range(len(proxy))) if by_path else proxy.indices
        pool = len(self.sources()[0])
        if max(indices) >= pool:
            raise ValueError(f"proxy file {self.hparams.proxy_file}: index {max(indices)} is beyond the open pool of "
                             f"{pool} images: pass the pool it was sampled from ({proxy.open})")
        classes = len(proxy.class_names or ()) or int(getattr(self.sources()[0], "num_classes", 0) or 0)
        labels = proxy.label_list()
        if classes and labels and max(labels) >= classes:
            raise ValueError(f"proxy file {self.hparams.proxy_file}: label {max(labels)} is beyond its {classes} "
                             "classes: give the proxy file class_names that cover every label")
        images = "paths" if by_path else self.sources()[3]  # how its images are found is part of the proxy
        return proxy.replace(indices=indices, hash=stable_hash([proxy.to_dict(), images]))

    def _read_proxy_file(self, test_ds) -> Proxy:
        """``proxy_file`` with its labels renumbered by class name to the classes of the client test set
        ``test_ds`` where it names them (a client without some class numbers its class folders differently)."""
        proxy = Proxy.read(self.hparams.proxy_file)
        names = tuple(getattr(test_ds, "class_names", ()) or ())
        if proxy.labels is None or not proxy.class_names or not names or tuple(proxy.class_names) == names:
            return proxy
        position = {name: i for i, name in enumerate(names)}
        unknown = [name for name in proxy.class_names if name not in position]
        if unknown:
            raise ValueError(f"proxy file {self.hparams.proxy_file}: class {unknown[0]!r} is not a class of the client "
                             f"test set ({', '.join(names[:10])}): label the proxy with the test set's class names")
        renumber = [position[name] for name in proxy.class_names]
        labels = [renumber[y] if y >= 0 else -1 for y in proxy.label_list()]
        return proxy.replace(labels=labels, class_names=list(names))

    def _restored_proxy(self, state: dict, where: str) -> Proxy:
        """The proxy saved by :meth:`state_dict`, checked to be well formed and the one these settings give."""
        try:
            proxy = Proxy.from_json(state["proxy_json"])
        except ValueError as exc:
            raise ValueError(f"{where}: its proxy is not one this data module saved ({exc}); start a new run without "
                             "ckpt_path") from None
        expected = self.proxy_hash()
        if proxy.hash != expected:
            raise ValueError(f"{where} was trained on proxy {proxy.hash}, but these settings give proxy "
                             f"{expected}: resume with the data, protocol settings and proxy file of that run, "
                             "or start a new run without ckpt_path")
        return proxy

    # ------------------------------------------------------------ properties
    @property
    def epsilon(self) -> float:
        return self.proxy.epsilon

    @property
    def proxy_label_accuracy(self) -> float | None:
        """Share of the proxy's images whose label matches the truth, for a label source whose labels are
        estimates (an unlabelled image, -1, counts as a miss: at most :attr:`proxy_labelled_fraction`)."""
        if not self.label_source.estimates:
            return None
        proxy = self.proxy
        truth = self.labels(self._base(proxy))[proxy.indices]
        return float((np.asarray(proxy.label_list()) == truth).mean())

    @property
    def proxy_labelled_fraction(self) -> float:
        """Share of the proxy's images with a label (not -1)."""
        return float((np.asarray(self.proxy.label_list()) >= 0).mean())

    def _base(self, proxy: Proxy) -> Dataset:
        """The dataset the proxy's indices point into."""
        open_ds, client_ds, _, _ = self.sources()
        return client_ds if proxy.source == "client" else open_ds

    def proxy_indices(self) -> np.ndarray:
        return np.asarray(self.proxy.indices, dtype=np.int64)

    def _train_val_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions in the proxy of the training and validation images (a seeded split), without the
        unlabelled ones unless :meth:`keeps_unlabelled`."""
        proxy = self.proxy
        order = np.random.default_rng(self.hparams.seed).permutation(len(proxy))
        n_val = int(round(self.loaders.val_fraction * len(proxy))) if len(proxy) > 1 else 0
        train, val = np.sort(order[n_val:]), np.sort(order[:n_val])
        labelled = np.asarray(proxy.label_list()) >= 0
        if self.keeps_unlabelled() or labelled.all():
            return train, val
        if not labelled[train].any():
            raise ValueError(f"none of the proxy's {len(train)} training images has a label: use a label source that "
                             "labels them, or keep_unlabelled=True for a module that handles label -1")
        if not self._told_unlabelled:
            log.info("%d of %d proxy images carry no label (-1): left out of the train and val batches, as the module "
                     "does not declare accepts_unlabelled (keep_unlabelled=True keeps them)", int((~labelled).sum()),
                     len(proxy))
            self._told_unlabelled = True
        return train[labelled[train]], val[labelled[val]]

    def keeps_unlabelled(self) -> bool:
        """Whether the train and val batches carry the proxy's unlabelled images (label -1): ``keep_unlabelled``,
        else whether the trainer's module declares ``accepts_unlabelled`` (this project's modules do)."""
        if self.loaders.keep_unlabelled is not None:
            return bool(self.loaders.keep_unlabelled)
        module = self.trainer.lightning_module if self.trainer is not None else None
        return bool(getattr(module, "accepts_unlabelled", False))

    def _subset(self, positions: np.ndarray, train: bool) -> ImageSubset:
        proxy = self.proxy
        indices = np.asarray(proxy.indices, dtype=np.int64)[positions]
        labels = np.asarray(proxy.label_list(), dtype=np.int64)[positions]
        return ImageSubset(self._base(proxy), indices, labels, self._transform(train))

    def _transform(self, train: bool):
        """The user's train or eval transform, else the built-in one (weak augmentation when training with
        ``augment``)."""
        given = self.loaders.train_transform if train else self.loaders.eval_transform
        if given is not None:
            return given
        size = self.loaders.image_size
        return UnitImage(size, _weak_augmentation(size) if train and self.loaders.augment else None)

    # ----------------------------------------------------------- dataloaders
    def _loader(self, dataset, shuffle: bool, batch_size: int | None = None, sampler=None,
                drop_last: bool = False) -> DataLoader:
        workers = self.num_workers()
        on_gpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return DataLoader(dataset, batch_size=batch_size or self.loaders.batch_size, shuffle=shuffle,
                          sampler=sampler, num_workers=workers, drop_last=drop_last, pin_memory=on_gpu,
                          persistent_workers=workers > 0)

    def num_workers(self) -> int:
        """The loaders' worker processes (see ``num_workers``)."""
        if self.loaders.num_workers != "auto":
            return int(self.loaders.num_workers)
        ranks_here = self.trainer.world_size // max(1, self.trainer.num_nodes) if self.trainer is not None else 1
        return max(1, min(8, len(os.sched_getaffinity(0)) // max(1, ranks_here) - 1))

    def train_dataloader(self):
        train = self._subset(self._train_val_positions()[0], train=True)
        # a last batch of a single image breaks BatchNorm in training: drop it
        single = len(train) > 1 and len(train) % self.loaders.batch_size == 1
        proxy_loader = self._loader(train, shuffle=True, drop_last=single)
        if self.loaders.unlabelled_batch_size <= 0:
            return proxy_loader
        open_ds = self.sources()[0]
        rest = np.setdiff1d(np.arange(len(open_ds)), self.proxy_indices() if self.proxy.source == "open"
                            else np.empty(0, np.int64))
        size = self.loaders.image_size
        views = TwoViewSubset(open_ds, rest, size, _weak_augmentation(size), _strong_augmentation(size))
        draws = len(proxy_loader) * self.loaders.unlabelled_batch_size
        unlabelled = self._loader(views, shuffle=False, batch_size=self.loaders.unlabelled_batch_size,
                                  sampler=RandomSampler(views, replacement=True, num_samples=draws))
        combined = framework_of(self.trainer).utilities.combined_loader.CombinedLoader
        return combined({"proxy": proxy_loader, "unlabelled": unlabelled}, mode="max_size_cycle")

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
            raise ValueError("no client test set was given: pass dataset=Datasets(..., client_test=...) to evaluate "
                             "on the client's data")
        test = ImageSubset(test_ds, np.arange(len(test_ds)), self.labels(test_ds), self._transform(train=False))
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
        """The whole proxy as one JSON string (loads with ``weights_only=True``); {} before it is made."""
        if self._proxy_record is None:
            return {}
        return {"proxy_json": self._proxy_record.to_json()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the proxy from a checkpoint (the artifact, the features and the protocol are not
        needed); a proxy that is not the one these settings give is refused."""
        if "proxy_json" in state_dict:
            where = f"checkpoint {self.trainer.ckpt_path}" if self.trainer is not None and self.trainer.ckpt_path \
                else "the checkpoint"
            held, self._proxy_record = self._proxy_record, self._restored_proxy(state_dict, where)
            if held is None:  # testing the best checkpoint after fit restores the proxy the module already holds
                log.info("proxy %s (%d images) restored from %s: the protocol does not run",
                         self._proxy_record.hash, len(self._proxy_record), where)

    def summary(self) -> dict:
        """Proxy size, class histogram, domain composition, epsilon (PLD, and RDP beside it), bytes, label accuracy
        and labelled share: for reports."""
        proxy = self.proxy
        labels = np.asarray(proxy.label_list())
        out = {
            "sampler": self.sampler.display_name(), "size": len(proxy), "epsilon": proxy.epsilon,
            "epsilon_rdp": proxy.epsilon_rdp, "delta": proxy.delta,
            "bytes_down": proxy.bytes_down, "bytes_up": proxy.bytes_up,
            "class_histogram": np.bincount(labels[labels >= 0], minlength=self.num_classes).tolist(),
            "label_accuracy": self.proxy_label_accuracy, "labelled": self.proxy_labelled_fraction,
        }
        domains, names = dataset_domains(self._base(proxy)), list(getattr(self.sources()[0], "domain_names", ()))
        if domains is not None and names:
            counts = np.bincount(domains[proxy.indices], minlength=len(names))
            out["domains"] = dict(zip(names, counts.tolist()))
        return out


def load_artifact(path: Path) -> Proxy:
    """Read and check a proxy artifact (written by this module)."""
    try:
        return Proxy.read(path, "proxy artifact")
    except ValueError as exc:
        raise ValueError(f"{exc}; delete it to rebuild") from None


def _weak_augmentation(size: int):
    pad = max(1, size // 16)
    return v2.Compose([v2.RandomCrop(size, padding=pad, padding_mode="edge"),
                       v2.RandomAffine(degrees=8, scale=(0.9, 1.1))])


def _strong_augmentation(size: int):
    return v2.Compose([_weak_augmentation(size), v2.RandAugment(num_ops=2, magnitude=10),
                       v2.RandomErasing(p=1.0, scale=(0.02, 0.15), value=127)])


__all__ = ["Datasets", "Loaders", "ProxyDataModule", "former_arguments", "load_artifact"]
