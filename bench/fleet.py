"""A fleet of small devices against one big client: in-domain precision of the proxy against per-device epsilon.

digits-lite, client domain ``handwritten`` (paper split, seeds 1-3): the client's training images are dealt
to ``--devices`` devices of ``--per-device`` images each. Rows, each at the same per-device epsilon:

* one big client holding all of the fleet's images (ECOS as today);
* the fleet under secure aggregation (``FleetEcos``: Skellam shares, ``--threshold`` of the devices must
  answer; the sums are exactly what Flower's SecAgg+ computes, made here in numpy);
* the fleet with local noise only (each device adds the full noise; the cloud sums noisy answers);
* each device alone (ECOS with that device's images only; the mean over ``--alone`` devices).

Then the cost per device (bytes, the device's compute) and, with ``--flower``, the wall time of one secure
round on Flower's simulation engine for 30 and 100 devices. Results: ``docs/fleet.json`` (resumed per
cell), ``docs/fleet.png`` and the tables printed.

    python bench/fleet.py                     # 3 seeds x per-device epsilon 0.25 0.5 1 2
    python bench/fleet.py --flower            # and the round wall times on Flower
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from ecos_lightning.components import Inputs, Run
from ecos_lightning.data import DOMAINS, paper_split
from ecos_lightning.fleet import FleetEcos
from ecos_lightning.protocol import ClientResponder, CloudSampler, noise_multiplier_for_epsilon
from ecos_lightning.protocol.fleet import FleetPrivacy
from ecos_lightning.protocol.privacy import calibrated_noise, releases_epsilon
from ecos_lightning.samplers import Ecos

from digits_features import add_arguments, digits_lite_features

ROOT = Path(__file__).resolve().parent.parent
ROWS = ("one big client", "fleet, secure aggregation", "fleet, local noise", "one device alone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--per-device", type=int, default=20)
    parser.add_argument("--threshold", type=int, default=24, help="devices that must answer a secure round")
    parser.add_argument("--alone", type=int, default=5, help="devices measured alone (mean)")
    parser.add_argument("--flower", action="store_true", help="also time secure rounds on Flower (30, 100 devices)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "fleet.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")

    data, features = digits_lite_features(args)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    domain = "handwritten"
    for seed in args.seeds:
        split = paper_split(data.domains, data.labels, domain, seed=seed)
        open_idx = split.open_indices
        in_domain = data.domains[open_idx] == DOMAINS.index(domain)
        order = np.random.default_rng(seed).permutation(split.client_train_indices)
        need = args.devices * args.per_device
        if len(order) < need:
            raise SystemExit(f"the {domain} client holds {len(order)} images, fewer than {need}")
        fleet = tuple(features[order[i * args.per_device:(i + 1) * args.per_device]] for i in range(args.devices))
        for epsilon in args.epsilons:
            for row in ROWS:
                key = f"{row}|{epsilon}|{seed}"
                if key in results:
                    continue
                start = time.perf_counter()
                results[key] = _cell(row, _sigma(row, epsilon, args), args, features[open_idx], fleet, in_domain,
                                     data.labels[open_idx], seed)
                results[key]["seconds"] = time.perf_counter() - start
                out.write_text(json.dumps(results, indent=1))
                print(f"{key}: precision {results[key]['precision']:.3f}, epsilon {results[key]['epsilon']:.3f}",
                      flush=True)
    if args.flower:
        _flower_rounds(results, args, features, data, out)
    _report(results, args)


def _sigma(row: str, epsilon: float, args) -> float:
    """The noise multiplier at which one device of ``row`` releases ``epsilon`` (each mechanism calibrated)."""
    if row == "fleet, secure aggregation":
        return calibrated_noise(epsilon, args.delta, lambda s: [FleetPrivacy(s, True, args.threshold).release(1)])
    return noise_multiplier_for_epsilon(epsilon, args.delta)


def _cell(row: str, sigma: float, args, pool, fleet, in_domain, labels, seed: int) -> dict:
    run = Run(budget=args.budget, delta=args.delta, seed=seed)
    if row == "one big client":
        samplers = [(Ecos(num_clusters=args.num_clusters, noise_multiplier=sigma), np.concatenate(fleet))]
    elif row == "one device alone":
        samplers = [(Ecos(num_clusters=args.num_clusters, noise_multiplier=sigma), fleet[i]) for i in range(args.alone)]
    else:
        secure = row == "fleet, secure aggregation"
        samplers = [(FleetEcos(num_clusters=args.num_clusters, noise_multiplier=sigma, secure=secure,
                               threshold=args.threshold if secure else 1), None)]
    cells = []
    for sampler, client in samplers:
        inputs = Inputs(open_features=pool, client_features=client, fleet_features=fleet,
                        client_size=0 if client is None else len(client))
        proxy = sampler.run(inputs, run)
        hit = in_domain[proxy.indices]
        classes = np.bincount(labels[proxy.indices][hit], minlength=10)
        cells.append({"precision": float(hit.mean()), "coverage": float((classes >= 10).mean()),
                      "epsilon": releases_epsilon(sampler.releases(), args.delta),
                      "bytes_down": proxy.bytes_down, "bytes_up": proxy.bytes_up})
    return {key: float(np.mean([c[key] for c in cells])) for key in cells[0]}


def _flower_rounds(results: dict, args, features, data, out: Path) -> None:
    """Wall time of one secure round on Flower for 30 and 100 devices, and one device's compute."""
    from ecos_lightning.fleet.flower import secure_sum
    from ecos_lightning.fleet.sampler import DeviceAnswers

    split = paper_split(data.domains, data.labels, "handwritten", seed=args.seeds[0])
    cloud = CloudSampler(num_clusters=args.num_clusters, seed=0, fp16=True)
    blob = cloud.fit(features[split.open_indices]).to_bytes()
    images = features[split.client_train_indices]
    for devices in (30, 100):
        key = f"flower round|{devices}"
        if key in results:
            continue
        fleet = tuple(images[np.arange(i * 20, (i + 1) * 20) % len(images)] for i in range(devices))
        answers = DeviceAnswers(blob, fleet, FleetPrivacy(8.0, True, int(devices * 0.8)), 1, args.delta, 0)
        start = time.perf_counter()
        answers(0)
        device = time.perf_counter() - start
        start = time.perf_counter()
        secure_sum(answers, devices, cloud.message_.num_clusters, int(devices * 0.8))
        results[key] = {"round_seconds": time.perf_counter() - start, "device_seconds": device,
                        "bytes_down": len(blob), "answer_bytes": cloud.message_.num_clusters * 8}
        out.write_text(json.dumps(results, indent=1))
        print(f"{key}: {results[key]['round_seconds']:.1f} s", flush=True)


def _report(results: dict, args) -> None:
    print(f"\ndigits-lite, client domain handwritten, {args.devices} devices x {args.per_device} images, budget "
          f"{args.budget}, K={args.num_clusters}, secure threshold {args.threshold}, seeds {args.seeds}\n")
    print("| per-device epsilon | " + " | ".join(ROWS) + " |")
    print("|---|" + "---|" * len(ROWS))
    for epsilon in args.epsilons:
        cells = []
        for row in ROWS:
            values = [results[f"{row}|{epsilon}|{s}"]["precision"] for s in args.seeds if f"{row}|{epsilon}|{s}" in results]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-")
        print(f"| {epsilon:g} | " + " | ".join(cells) + " |")
    print("\nin-domain precision (mean ± std over seeds); class coverage at per-device epsilon 0.5:")
    for row in ROWS:
        values = [results[f"{row}|0.5|{s}"]["coverage"] for s in args.seeds if f"{row}|0.5|{s}" in results]
        if values:
            print(f"- {row}: {np.mean(values):.2f}")
    rounds = {k: v for k, v in results.items() if k.startswith("flower round|")}
    if rounds:
        print("\n| devices | round wall time (Flower, SecAgg+) | one device's compute | bytes down | answer bytes |")
        print("|---|---|---|---|---|")
        for key, r in sorted(rounds.items(), key=lambda kv: int(kv[0].split("|")[1])):
            print(f"| {key.split('|')[1]} | {r['round_seconds']:.1f} s | {r['device_seconds'] * 1000:.0f} ms | "
                  f"{r['bytes_down']:,} | {r['answer_bytes']:,} |")
    _plot(results, args)


def _plot(results: dict, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in ROWS:
        means = [np.mean([results[f"{row}|{e}|{s}"]["precision"] for s in args.seeds
                          if f"{row}|{e}|{s}" in results] or [np.nan]) for e in args.epsilons]
        ax.plot(args.epsilons, means, marker="o", label=row)
    ax.set_xscale("log")
    ax.set_xlabel("per-device epsilon (delta 1e-5)")
    ax.set_ylabel("in-domain precision of the proxy")
    ax.set_title(f"{args.devices} devices x {args.per_device} images (digits-lite, handwritten)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "fleet.png", dpi=120)


if __name__ == "__main__":
    main()
