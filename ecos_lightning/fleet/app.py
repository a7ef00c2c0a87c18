"""The fleet's secure round as a deployed Flower App: ``server_app`` runs on the SuperLink's machine, each
device is a SuperNode running ``client_app``. The app folder ``flwr run`` takes is :data:`APP_DIR`.

Run config (``[tool.flwr.app.config]`` in the app folder, ``flwr run --run-config`` overrides):
``centroids`` (absolute path of the centroids message ``ecos-cloud probe`` wrote), ``scores`` (absolute path
of the scores message to write, for ``ecos-cloud sample --scores``), ``noise-multiplier``, ``q``, ``delta``,
``threshold``, ``colluding`` (:class:`~ecos_lightning.protocol.fleet.FleetPrivacy`), ``timeout`` (seconds
SecAgg+ waits at each stage) and ``devices`` (SuperNodes to wait for).

Node config (``flower-supernode --node-config``): ``data`` (the device's image folder), ``ledger`` (its
privacy ledger), optionally ``max-epsilon``, ``delta``, ``encoder``, ``encoder-weights``, ``max-input-size``
(as ``ecos-client respond``) and ``max-clusters`` (the largest K it answers, default
:data:`DEFAULT_MAX_CLUSTERS`).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from logging import ERROR, INFO
from pathlib import Path

import numpy as np
from flwr.common import Context
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
from flwr.server import Grid, ServerApp

from ..client.ledger import ledger_snapshot
from ..files import atomic_write_bytes
from ..protocol import CentroidsMessage
from ..protocol.fleet import FleetPrivacy, RoundAborted
from ..protocol.validation import positive_int
from .device import device_answer, device_release, sum_scores
from .flower import device_app, secure_round

#: The Flower App folder (its ``pyproject.toml``) to give ``flwr run``.
APP_DIR = Path(__file__).with_name("flower_app")
#: The largest number of centroids a device answers unless its node config says otherwise.
DEFAULT_MAX_CLUSTERS = 10_000


def _path(config: Mapping, key: str, where: str) -> Path:
    value = config.get(key)
    if not isinstance(value, str) or not value or not Path(value).is_absolute():
        raise ValueError(f"{where} '{key}' must be an absolute path, got {value!r:.80}; set it with {where} "
                         f"{key}=\"/abs/path\"")
    return Path(value)


def _privacy(config: Mapping) -> tuple[FleetPrivacy, int]:
    """The round's privacy parameters and q from a (run or fit) config; ``ValueError`` naming the bad one."""
    for key in ("threshold", "colluding", "q"):
        if isinstance(config.get(key), bool) or not isinstance(config.get(key), numbers.Integral):
            raise ValueError(f"'{key}' must be an integer, got {config.get(key)!r:.40}")
    sigma = config.get("noise-multiplier")
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise ValueError(f"'noise-multiplier' must be a number, got {sigma!r:.40}")
    if config["threshold"] < 2:
        raise ValueError(f"'threshold' must be at least 2 under secure aggregation, got {config['threshold']}")
    privacy = FleetPrivacy(float(sigma), True, int(config["threshold"]), int(config["colluding"]))
    return privacy, positive_int(config["q"], "q")


server_app = ServerApp()


@server_app.main()
def serve(grid: Grid, context: Context) -> None:
    """Send the centroids message and the privacy parameters to every device, sum their answers under SecAgg+,
    write the sum as a scores message (nothing when fewer than the threshold answered: ``RoundAborted``)."""
    config = context.run_config
    where = "--run-config"
    centroids_path, scores_path = _path(config, "centroids", where), _path(config, "scores", where)
    privacy, q = _privacy(config)
    blob = centroids_path.read_bytes()
    centroids = CentroidsMessage.from_bytes(blob)
    devices = positive_int(config["devices"], "devices")
    fit_config = {"centroids": blob, "noise-multiplier": privacy.noise_multiplier, "q": q,
                  "threshold": privacy.threshold, "colluding": privacy.colluding}
    log(INFO, "fleet: waiting for %d devices, then SecAgg+ over K=%d centroids (threshold %d)", devices,
        centroids.num_clusters, privacy.threshold)
    try:
        total, answered = secure_round(grid, context, devices, centroids.num_clusters, privacy.threshold,
                                       float(config["timeout"]), fit_config)
    except RoundAborted as exc:
        log(ERROR, "fleet: %s; no scores file was written", exc)
        raise
    scores = sum_scores(total, answered, privacy, q, float(config["delta"]), centroids)
    atomic_write_bytes(scores_path, scores.to_bytes())
    log(INFO, "fleet: %d devices answered; wrote %s (sum of scores %d, noise std %.3g)", answered, scores_path,
        int(total.sum()), privacy.sum_noise_std(answered, q))


def read_round(config: Mapping, max_clusters: int = DEFAULT_MAX_CLUSTERS,
               secagg_threshold: int | None = None) -> tuple[CentroidsMessage, FleetPrivacy, int]:
    """The centroids, privacy and q of the cloud's fit config, checked as untrusted input (nothing is
    unpickled; a threshold above ``secagg_threshold``, the one SecAgg+ runs with, would overstate the
    noise of the sum); one ``ValueError`` line naming what is wrong."""
    try:
        blob = config.get("centroids")
        if not isinstance(blob, bytes):
            raise ValueError(f"'centroids' must be the bytes of a centroids message, got {type(blob).__name__}")
        centroids = CentroidsMessage.from_bytes(blob)
        if centroids.num_clusters > max_clusters:
            raise ValueError(f"{centroids.num_clusters} centroids is more than this device answers "
                             f"({max_clusters}; node config max-clusters)")
        privacy, q = _privacy(config)
        if secagg_threshold is not None and privacy.threshold > secagg_threshold:
            raise ValueError(f"the round claims threshold {privacy.threshold}, but SecAgg+ reveals sums of "
                             f"{secagg_threshold} answers: the sum would carry less noise than paid for")
    except ValueError as exc:
        raise ValueError(f"refused the cloud's round, nothing was read or recorded: {exc}") from None
    return centroids, privacy, q


def answer_round(config: Mapping, node_config: Mapping, secagg_threshold: int | None = None,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """One SuperNode's answer float64 [K] to the cloud's fit ``config``: the round is checked
    (:func:`read_round`), the encoder accepted by the device's policy and the release checked against its
    ledger's budget before any image is read; the release is recorded in the ledger under its lock before
    the answer is returned. Noise from ``rng`` (default: a fresh unseeded generator)."""
    # Torch loads only here: Flower starts one ClientApp process per SecAgg+ stage, and only this one answers.
    from ..client.encoder_policy import DEFAULT_MAX_INPUT_SIZE, EncoderPolicy
    from ..data.folders import PathImageDataset, scan_images
    from ..encoders import build_encoder, extract_features

    where = "--node-config"
    data, ledger = _path(node_config, "data", where), _path(node_config, "ledger", where)
    centroids, privacy, q = read_round(config, int(node_config.get("max-clusters", DEFAULT_MAX_CLUSTERS)),
                                       secagg_threshold)
    policy = EncoderPolicy.for_client(node_config.get("encoder"), node_config.get("encoder-weights"),
                                      int(node_config.get("max-input-size", DEFAULT_MAX_INPUT_SIZE)))
    spec = policy.accept(centroids.encoder, centroids.feature_dim, "the cloud's centroids message")
    max_epsilon = node_config.get("max-epsilon")
    max_epsilon = None if max_epsilon is None else float(max_epsilon)
    delta = node_config.get("delta")
    book = ledger_snapshot(ledger, None if delta is None else float(delta), max_epsilon)
    book.check([device_release(privacy, q, book.delta, centroids)])
    scan = scan_images(data, progress=False)
    features = extract_features(build_encoder(spec), PathImageDataset(scan.paths), progress=False)
    answer = device_answer(centroids, features, privacy, q, book.delta, rng or np.random.default_rng(), ledger,
                           max_epsilon)
    log(INFO, "device: %s answered K=%d; its release is recorded in %s", scan.summary(), centroids.num_clusters,
        ledger)
    return answer


def _secagg_threshold(context: Context) -> int:
    """The reconstruction threshold SecAgg+ runs this round with on this device (kept since its setup stage)."""
    return int(context.state.config_records[RECORD_KEY_STATE]["threshold"])


client_app = device_app(lambda context: lambda config: answer_round(config, context.node_config,
                                                                     _secagg_threshold(context)))

__all__ = ["APP_DIR", "DEFAULT_MAX_CLUSTERS", "answer_round", "client_app", "read_round", "server_app"]
