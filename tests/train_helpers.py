"""Callbacks, a toy sampler and a toy label source the CLI tests inject into real runs (importable by
subprocesses via PYTHONPATH: ``--data.sampler train_helpers.TOY_SAMPLER``)."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import lightning as L
import pytorch_lightning as pl
import torch

from ecos_lightning.components import CLIENT_FEATURES, CLIENT_LABELS, OPEN_FEATURES
from ecos_lightning.files import stable_hash
from ecos_lightning.protocol.knn_labels import PrivateKnnLabeler
from ecos_lightning.label_sources import ClientExchange, LabelSource, chain_release, class_names
from ecos_lightning.protocol.label_messages import LabelsMessage, QueriesMessage
from ecos_lightning.protocol.privacy import gaussian_release
from ecos_lightning.proxy import Proxy
from ecos_lightning.samplers import CoverageSampler, Sampler


class CrashAtEpoch(pl.Callback):
    """Kill the process (SIGKILL, no clean-up) when epoch ``epoch`` starts: a crash."""

    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordRun(pl.Callback):
    """Write what each rank trained on to ``<out>/rank<r>.json``: proxy, sampler shard, epochs, metrics."""

    def __init__(self, out: str):
        self.out = out
        self.epochs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append(trainer.current_epoch)

    def on_fit_end(self, trainer, pl_module):
        sampler = trainer.train_dataloader.sampler
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "proxy_indices": trainer.datamodule.proxy_indices().tolist(),
            "shard": [int(i) for i in sampler] if hasattr(sampler, "num_replicas") else None,
            "epochs": self.epochs,
            "val_acc": float(trainer.callback_metrics.get("val_acc", float("nan"))),
        }
        Path(self.out).mkdir(parents=True, exist_ok=True)
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class RecordTest(pl.Callback):
    """Write what each rank tested to ``<out>/test<r>.json``: images seen, images predicted right, the
    size of the test set and the logged ``test_acc``."""

    def __init__(self, out: str):
        self.out = out
        self.seen = self.correct = 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        images, labels = batch
        self.seen += len(labels)
        self.correct += int((pl_module(images).argmax(1) == labels).sum())

    def on_test_end(self, trainer, pl_module):
        record = {"seen": self.seen, "correct": self.correct, "size": len(trainer.datamodule.sources()[2]),
                  "test_acc": float(trainer.callback_metrics["test_acc"])}
        Path(self.out).mkdir(parents=True, exist_ok=True)
        Path(self.out, f"test{trainer.global_rank}.json").write_text(json.dumps(record))


class ToySampler(Sampler):
    """The first ``budget`` images of the pool; declares two Gaussian releases at ``noise_multiplier``."""

    name = "toy"
    needs = frozenset()

    def __init__(self, noise_multiplier: float = 8.0):
        self.noise_multiplier = noise_multiplier

    def releases(self):
        return [gaussian_release(self.noise_multiplier, count=2, what="toy_scores")]

    def run(self, inputs, run):
        return Proxy(np.arange(run.budget), release_hash=chain_release(None, [run.budget]))


class TopClusters(CoverageSampler):
    """Over ECOS's exchange (K=4 centroids, q=1): the whole budget from the highest-scoring clusters, each
    one's members nearest to its centroid first; ``noise_multiplier`` is the client's sigma."""

    name = "top_clusters"
    num_clusters = 4

    def __init__(self, noise_multiplier: float = 8.0):
        self.noise_multiplier = noise_multiplier

    def select(self, cloud, scores, run):
        order = np.argsort(-np.asarray(scores.scores), kind="stable")
        indices = np.concatenate([cloud.members(int(c)) for c in order])[:run.budget]
        return Proxy(indices, clusters=cloud.assignment_[indices].tolist())


class ToyLabels(LabelSource):
    """Class 0 for every image; declares one subsampled Gaussian release per proxy image."""

    name = "toy_labels"

    def releases(self, proxy_size):
        return [gaussian_release(4.0, count=proxy_size, sampling_rate=0.01, what="toy_labels")]

    def run(self, proxy, inputs, run):
        labels = np.zeros(len(proxy), dtype=np.int64)
        return proxy.replace(labels=labels, class_names=class_names(inputs.num_classes),
                             release_hash=chain_release(proxy.release_hash, labels))


class ToyVotes(ClientExchange):
    """Asks the client: each proxy feature gets the noisy-argmax of its single nearest client sample's label
    (one Gaussian release per query, no subsampling), through the Private kNN messages."""

    name = "toy_votes"
    needs = frozenset({OPEN_FEATURES, CLIENT_FEATURES, CLIENT_LABELS})
    query_type, answer_type = QueriesMessage, LabelsMessage

    def __init__(self, noise_multiplier: float = 4.0):
        self.noise_multiplier = noise_multiplier

    def _labeler(self, seed=None):
        return PrivateKnnLabeler(1, self.noise_multiplier, 1.0, seed=seed)

    def releases(self, proxy_size):
        return [self._labeler().release(proxy_size)]

    def query(self, proxy, features, encoder, run):
        return QueriesMessage(np.ascontiguousarray(features, np.float32), encoder, stable_hash(proxy.indices))

    def describe_query(self, query, proxy_size):
        return f"{proxy_size} nearest-label queries"

    def answers(self, query_blob, query, answer):
        return answer.answers(query_blob) and len(answer.labels) == len(query.features)

    def absorb(self, query, answer, features):
        return np.asarray(answer.labels, np.int64)

    def client_release(self, query, query_digest):
        return self._labeler().release(len(query.features))

    def answer_payload(self, query, features, labels, num_classes, seed):
        return self._labeler(seed).label(query.features, features, labels, num_classes)

    def make_answer(self, query, query_digest, payload, class_names, delta, epsilon, total_epsilon):
        labels = np.zeros(len(query.features), np.int64) if payload is None else payload
        return LabelsMessage(labels, class_names, query_digest, self.noise_multiplier, 1, 1.0, delta, epsilon,
                             total_epsilon)

    def describe_answer(self, query, num_classes):
        return f"{len(query.features)} labels"


TOY_SAMPLER = ToySampler()
TOY_LABELS = ToyLabels()


class CountingModel(pl.LightningModule):
    """A LightningModule that is not this project's: one linear layer on ``size`` x ``size`` RGB images,
    counting the training images it sees in ``seen``."""

    def __init__(self, size: int = 16, classes: int = 4):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, classes))
        self.seen = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen += len(x)
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class UnifiedClassifier(L.LightningModule):
    """A classifier of a project built on the unified ``lightning`` package: one linear layer over images
    resized to ``size``; logs ``val_acc`` and ``test_acc`` as the shipped configs expect."""

    def __init__(self, size: int = 32, classes: int = 10):
        super().__init__()
        self.size = size
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, classes))

    def forward(self, images):
        return self.net(torch.nn.functional.interpolate(images, size=(self.size, self.size)))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return torch.nn.functional.cross_entropy(self(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val_acc", (self(images).argmax(1) == labels).float().mean())

    def test_step(self, batch, batch_idx):
        images, labels = batch
        self.log("test_acc", (self(images).argmax(1) == labels).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
