"""Secure aggregation of the devices' integer answers on Flower: SecAgg+ reveals only their sum.

The cloud is a Flower ``ServerApp`` running ``SecAggPlusWorkflow`` on a complete graph (every device shares
its mask secrets with all others, ``reconstruction_threshold`` = the fleet's threshold): SecAgg+ halts a round
in which fewer devices stay than that, before the sum is unmasked. Each device is a ``ClientApp`` behind
``secaggplus_mod`` whose ``fit`` returns its answer. Answers are integers in [-clip, clip] sent with weight 1
and quantization step 1, so SecAgg+'s quantization and its weighting are exact: the sum is exact.

:func:`secure_round` is the ServerApp's body and :func:`device_app` the ClientApp, for both forms of the
round: :func:`secure_sum` runs them in Flower's simulation engine (virtual devices on one machine, Ray
backend), :mod:`ecos_lightning.fleet.app` as a deployed Flower App (a SuperLink and one SuperNode per device).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.simulation import run_simulation

from ..protocol.fleet import SECAGG_CLIP, RoundAborted

#: SecAgg+'s modulus: the masked sum of n answers of range 2 * clip must stay below it.
MODULUS = 1 << 32


class FleetDevice(NumPyClient):
    """A device's Flower client: ``fit`` returns ``answer(config)`` (float64 [K] of integers) with weight 1."""

    def __init__(self, answer: Callable[[dict], np.ndarray]):
        self.answer = answer

    def fit(self, parameters, config):
        return [np.asarray(self.answer(config), dtype=np.float64)], 1, {}


def device_app(answer_for: Callable[[Context], Callable[[dict], np.ndarray]]) -> ClientApp:
    """The devices' ``ClientApp``: behind ``secaggplus_mod``, the device of ``context`` answers with
    ``answer_for(context)(fit config)``."""
    return ClientApp(client_fn=lambda context: FleetDevice(answer_for(context)).to_client(), mods=[secaggplus_mod])


class _CaptureSum(FedAvg):
    """FedAvg whose aggregate (SecAgg+ hands every result the same unmasked mean) is kept as a sum."""

    def __init__(self, out: dict, **kwargs):
        super().__init__(**kwargs)
        self.out = out

    def aggregate_fit(self, server_round, results, failures):
        if results:
            mean = parameters_to_ndarrays(results[0][1].parameters)[0]
            self.out["sum"], self.out["answered"] = mean * len(results), len(results)
        return super().aggregate_fit(server_round, results, failures)


def check_fleet(devices: int, threshold: int, clip: int = SECAGG_CLIP) -> None:
    """``ValueError`` unless SecAgg+ can sum ``devices`` answers in [-clip, clip] with ``threshold``."""
    if not 2 <= threshold < devices:
        raise ValueError(f"secure aggregation needs 2 <= threshold < devices (SecAgg+ shares each device's secrets "
                         f"with the others), got threshold {threshold} for {devices} devices")
    if devices * 2 * clip >= MODULUS:
        raise ValueError(f"{devices} devices of answers in [-{clip}, {clip}] overflow SecAgg+'s modulus 2^32")


def secure_round(grid: Grid, context: Context, devices: int, num_clusters: int, threshold: int, timeout: float,
                 fit_config: dict | None = None, clip: int = SECAGG_CLIP) -> tuple[np.ndarray, int]:
    """The ServerApp's body: one SecAgg+ round, once ``devices`` devices are connected, sending each device
    ``fit_config`` (name -> int, float, str or bytes). Returns the exact sum int64 [K] of the answers and
    how many answered; :class:`RoundAborted` when fewer than ``threshold`` did (nothing is revealed)."""
    check_fleet(devices, threshold, clip)
    out: dict = {}
    strategy = _CaptureSum(out, fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=devices,
                           min_available_clients=devices, on_fit_config_fn=lambda _: dict(fit_config or {}),
                           initial_parameters=ndarrays_to_parameters([np.zeros(num_clusters)]))
    workflow = SecAggPlusWorkflow(num_shares=devices, reconstruction_threshold=threshold, max_weight=1.0,
                                  clipping_range=float(clip), quantization_range=2 * clip, modulus_range=MODULUS,
                                  timeout=timeout)
    DefaultWorkflow(fit_workflow=workflow)(grid, LegacyContext(context=context, config=ServerConfig(num_rounds=1),
                                                               strategy=strategy))
    if out.get("answered", 0) < threshold:
        raise _aborted(threshold, devices)
    total = np.rint(out["sum"])
    if np.abs(out["sum"] - total).max(initial=0) > 1e-3:
        raise RuntimeError("secure aggregation returned a sum that is not an integer vector: the quantization "
                           "settings are not exact")
    return total.astype(np.int64), int(out["answered"])


def _aborted(threshold: int, devices: int) -> RoundAborted:
    return RoundAborted(f"secure aggregation: fewer than {threshold} of {devices} devices answered; the round was "
                        "aborted and nothing was revealed")


def secure_sum(answer: Callable[[int], np.ndarray], devices: int, num_clusters: int, threshold: int,
               timeout: float = 120.0, clip: int = SECAGG_CLIP) -> tuple[np.ndarray, int]:
    """:func:`secure_round` in Flower's simulation engine: the exact sum int64 [K] of ``answer(i)`` (float64
    [K] of integers in [-clip, clip]) over the devices ``i < devices`` that answered, and how many answered;
    :class:`RoundAborted` when fewer than ``threshold`` did. A device that raises or stays silent past
    ``timeout`` seconds counts as dropped. ``answer`` runs in Flower's client workers, so it must pickle."""
    check_fleet(devices, threshold, clip)
    outcome: dict = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            outcome["sum"] = secure_round(grid, context, devices, num_clusters, threshold, timeout, clip=clip)
        except Exception as exc:  # raised again below, in the caller (the simulation only logs it)
            outcome["error"] = exc

    def answer_for(context: Context) -> Callable[[dict], np.ndarray]:
        index = int(context.node_config["partition-id"])
        return lambda config: answer(index)

    flwr_log = logging.getLogger("flwr")
    level, environment = flwr_log.level, dict(os.environ)
    flwr_log.setLevel(logging.ERROR)  # Flower's round-by-round INFO lines and its deprecation notices
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's deprecation notices
            run_simulation(server_app=server, client_app=device_app(answer_for), num_supernodes=devices,
                           verbose_logging=False, backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    finally:
        flwr_log.setLevel(level)
        os.environ.clear()  # Ray sets PYTHONPATH, PYTHONBREAKPOINT and its own variables in the caller's process
        os.environ.update(environment)
    if "sum" not in outcome:
        raise outcome.get("error", _aborted(threshold, devices))
    return outcome["sum"]


__all__ = ["MODULUS", "FleetDevice", "check_fleet", "device_app", "secure_round", "secure_sum"]
