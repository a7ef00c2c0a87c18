"""FleetEcos: one probe for a fleet of devices, one proxy from the sum of their coverage answers."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal

import numpy as np

from ..components import CLIENT_FEATURES, FLEET_FEATURES, OPEN_FEATURES
from ..protocol import CentroidsMessage, ScoresMessage
from ..protocol.fleet import FleetPrivacy, RoundAborted, sum_answers
from ..protocol.privacy import releases_epsilon
from ..protocol.validation import positive_int
from ..samplers import CoverageSampler, check_rounds, register_sampler, round_seed
from .device import device_answer, device_release, sum_scores

log = logging.getLogger(__name__)


class DeviceAnswers:
    """What every device of a simulated fleet does with the centroids message ``blob``: count its coverage,
    record its release in its own ledger (``<ledger_dir>/device-<i>.json``, when given) before the answer
    leaves, and answer with the noise of ``privacy`` drawn from its own stream (``seed``, device index).
    Picklable, so Flower's client workers can run it."""

    def __init__(self, blob: bytes, fleet: tuple[np.ndarray, ...], privacy: FleetPrivacy, q: int, delta: float,
                 seed: int, ledger_dir: str | None = None):
        self.blob, self.fleet, self.privacy, self.q, self.delta, self.seed = blob, fleet, privacy, q, delta, seed
        self.ledger_dir = ledger_dir

    def release(self, centroids: CentroidsMessage) -> dict:
        return device_release(self.privacy, self.q, self.delta, centroids)

    def __call__(self, index: int) -> np.ndarray:
        ledger = None if self.ledger_dir is None else Path(self.ledger_dir) / f"device-{index}.json"
        return device_answer(CentroidsMessage.from_bytes(self.blob), self.fleet[index], self.privacy, self.q,
                             self.delta, np.random.default_rng([self.seed, index]), ledger)

    def scores_message(self, index: int) -> bytes:
        """The local-noise path's answer of device ``index`` as the scores message it sends."""
        centroids = CentroidsMessage.from_bytes(self.blob)
        epsilon = releases_epsilon([self.release(centroids)], self.delta)
        return ScoresMessage(self(index).astype(np.float32), self.privacy.noise_multiplier, self.q, self.delta,
                             epsilon, centroids.digest()).to_bytes()


class FleetEcos(CoverageSampler):
    """ECOS for a fleet: the cloud probes once, every device answers the same centroids, the cloud samples one
    proxy from the sum of the answers.

    num_clusters, q, fp16: as :class:`~ecos_lightning.samplers.Ecos` (``auto`` sizes K for the fleet's images).
    noise_multiplier, secure, threshold, colluding: :class:`~ecos_lightning.protocol.fleet.FleetPrivacy`.
    engine: ``flower`` (secure: Flower's SecAgg+ in its simulation engine) or ``numpy`` (the same sums in this
    process: exact integer sums under secure aggregation, the checked scores messages under local noise).
    timeout: seconds a secure round waits for a device. ledger_dir: each device's own ledger
    (``device-<i>.json``) records its release before its answer leaves (None: the caller's ledger records the
    one release each device makes).
    devices: simulate a fleet from one client's images: deal them (a permutation seeded by the run's seed)
    to this many devices of near-equal size, so a data module or ``train.py`` with one client dataset runs a
    fleet. None: the fleet is ``Inputs.fleet_features``.
    rounds, first_round_share, sub_clusters: as :class:`~ecos_lightning.samplers.Ecos`; every round is one
    answer of every device, each device paying for all of them.
    proxy_for: under local noise, the proxy of this one device, selected from its own answer alone (the
    per-device product of the same answers; every device still answers and pays). None: the fleet proxy.
    """

    name = "fleet_ecos"

    def __init__(self, num_clusters: int | Literal["auto"] = "auto", q: int = 1, noise_multiplier: float = 8.0,
                 secure: bool = True, threshold: int = 2, colluding: int = 0, fp16: bool = True,
                 engine: Literal["flower", "numpy"] = "numpy", timeout: float = 120.0, ledger_dir: str | None = None,
                 devices: int | None = None, rounds: int = 1, first_round_share: float = 0.5,
                 sub_clusters: int = 4, proxy_for: int | None = None):
        if num_clusters != "auto":
            positive_int(num_clusters, "num_clusters")
        if engine not in ("flower", "numpy"):
            raise ValueError(f"engine must be 'flower' or 'numpy', got {engine!r}")
        if engine == "flower" and not secure:
            raise ValueError("engine='flower' runs secure aggregation: set secure=True, or engine='numpy' for "
                             "local noise")
        self.num_clusters, self.q, self.fp16 = num_clusters, positive_int(q, "q"), bool(fp16)
        self.noise_multiplier, self.secure, self.threshold, self.colluding = noise_multiplier, secure, threshold, colluding
        self.privacy = FleetPrivacy(noise_multiplier, secure, threshold, colluding)
        self.engine, self.timeout, self.ledger_dir = engine, timeout, ledger_dir
        if proxy_for is not None and (secure or isinstance(proxy_for, bool) or not isinstance(proxy_for, int)
                                      or proxy_for < 0):
            raise ValueError(f"proxy_for must be a device index >= 0 under local noise (secure=False: under secure "
                             f"aggregation the cloud sees only the sum), got proxy_for={proxy_for!r}, secure={secure}")
        self.proxy_for = proxy_for
        self.devices = None if devices is None else positive_int(devices, "devices")
        self.needs = frozenset({OPEN_FEATURES, FLEET_FEATURES if devices is None else CLIENT_FEATURES})
        self.rounds, self.first_round_share, self.sub_clusters = check_rounds(rounds, first_round_share, sub_clusters)

    def releases(self):
        return [self.round_privacy(sigma).release(self.q) for sigma in self.round_noise()]

    def fleet(self, inputs, run) -> tuple[np.ndarray, ...]:
        """The devices' features: ``Inputs.fleet_features``, or the client's dealt to ``devices`` devices."""
        if self.devices is None:
            return tuple(inputs.fleet_features or ())
        client = inputs.client_features
        if len(client) < self.devices:
            raise ValueError(f"devices={self.devices} is more than the client's {len(client)} images")
        order = np.random.default_rng([run.seed, len(client)]).permutation(len(client))
        return tuple(client[np.sort(part)] for part in np.array_split(order, self.devices))

    def round_privacy(self, noise_multiplier: float) -> FleetPrivacy:
        """The fleet's privacy for one round's answers at sigma ``noise_multiplier``."""
        return dataclasses.replace(self.privacy, noise_multiplier=noise_multiplier)

    def client_size(self, inputs):
        return sum(len(device) for device in inputs.fleet_features)

    def run(self, inputs, run):
        fleet = self.fleet(inputs, run)
        if len(fleet) < self.threshold:
            raise RoundAborted(f"the fleet holds {len(fleet)} devices, fewer than the threshold {self.threshold}: "
                               "nothing is asked")
        return super().run(dataclasses.replace(inputs, fleet_features=fleet), run)

    def answer(self, down, inputs, run, round_index, noise_multiplier):
        """Every device's answer to ``down``, summed: the scores message of the sum (noise std of the sum of
        the answers that arrived), the sum's bytes (float64 [K]) and the bytes each device sends up."""
        fleet, privacy = inputs.fleet_features, self.round_privacy(noise_multiplier)
        centroids = CentroidsMessage.from_bytes(down)
        devices = DeviceAnswers(down, fleet, privacy, self.q, run.delta, round_seed(run.seed, round_index),
                                self.ledger_dir)
        k = centroids.num_clusters
        if not self.secure:
            blobs = {str(i): devices.scores_message(i) for i in range(len(fleet))}
            total, refused = sum_answers(blobs, centroids.digest(), k)
            if self.proxy_for is not None:
                return self._device_scores(blobs, refused, round_index)
            answered = len(fleet) - len(refused)
            for line in refused.values():
                log.warning("refused: %s", line)
            if answered < self.threshold:
                raise RoundAborted(f"{answered} of {len(fleet)} devices gave usable answers, fewer than the "
                                   f"threshold {self.threshold}")
        elif self.engine == "flower":
            from .flower import secure_sum  # Flower and Ray load only for a secure round on them
            total, answered = secure_sum(devices, len(fleet), k, self.threshold, self.timeout)
        else:
            total, answered = np.sum([devices(i) for i in range(len(fleet))], axis=0), len(fleet)
        scores = sum_scores(total, answered, privacy, self.q, run.delta, centroids)
        log.info("fleet, round %d: %d of %d devices answered %d centroids (%s); sum noise std %.3g", round_index + 1,
                 answered, len(fleet), k, "secure aggregation" if self.secure else "local noise",
                 privacy.sum_noise_std(answered, self.q))
        return scores, np.asarray(total, np.float64).tobytes(), k * 8

    def _device_scores(self, blobs: dict[str, bytes], refused: dict[str, str], round_index: int):
        """The answer of device ``proxy_for`` alone (its scores message, its bytes, their length)."""
        device = str(self.proxy_for)
        if device not in blobs:
            raise ValueError(f"proxy_for={self.proxy_for}: the fleet holds devices 0 to {len(blobs) - 1}")
        if device in refused:
            raise ValueError(f"proxy_for={self.proxy_for}: its answer was refused ({refused[device]})")
        log.info("fleet, round %d: %d devices answered; the proxy is device %s's own", round_index + 1, len(blobs),
                 device)
        return ScoresMessage.from_bytes(blobs[device]), blobs[device], len(blobs[device])


register_sampler(FleetEcos)

__all__ = ["DeviceAnswers", "FleetEcos"]
