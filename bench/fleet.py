"""A fleet of small devices against one big client: in-domain precision of the proxy against per-device epsilon.

digits-lite, client domain ``handwritten`` (paper split, seeds 1-3): the client's training images are dealt
to ``--devices`` devices of ``--per-device`` images each. Rows, each at the same per-device epsilon:

* one big client holding all of the fleet's images (ECOS as today);
* the fleet under secure aggregation (``FleetEcos``: Skellam shares, ``--threshold`` of the devices must
  answer; the sums are exactly what Flower's SecAgg+ computes, made here in numpy);
* the fleet with local noise only (each device adds the full noise; the cloud sums noisy answers);
* each device alone (ECOS with that device's images only; the mean over ``--alone`` devices).

With ``--rounds``, the one big client and the secure fleet again with two rounds (``rounds=2``: the
second round splits the clusters the first answer kept into ``--sub-clusters``), at the same total
per-device epsilon: precision, class coverage and bytes, one round against two.

Then the cost per device (bytes, the device's compute) and, with ``--flower``, the wall time of one secure
round on Flower's simulation engine for 30 and 100 devices. Results: ``docs/fleet.json`` (resumed per
cell), ``docs/fleet.png`` and the tables printed.

    python bench/fleet.py                     # 3 seeds x per-device epsilon 0.25 0.5 1 2
    python bench/fleet.py --flower            # and the round wall times on Flower
    python bench/fleet.py --rounds            # and one round against two
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
ROUND_ROWS = ("one big client", "fleet, secure aggregation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--per-device", type=int, default=20)
    parser.add_argument("--threshold", type=int, default=24, help="devices that must answer a secure round")
    parser.add_argument("--alone", type=int, default=5, help="devices measured alone (mean)")
    parser.add_argument("--flower", action="store_true", help="also time secure rounds on Flower (30, 100 devices)")
    parser.add_argument("--rounds", action="store_true", help="also two rounds against one")
    parser.add_argument("--sub-clusters", type=int, default=4, help="with --rounds: sub-clusters per kept cluster")
    parser.add_argument("--first-round-share", type=float, default=0.5, help="with --rounds: the first round's "
                        "share of the privacy")
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
        cells = [(row, 1) for row in ROWS] + [(row, 2) for row in ROUND_ROWS if args.rounds]
        for epsilon in args.epsilons:
            for row, rounds in cells:
                key = _key(row, rounds, epsilon, seed)
                if key in results:
                    continue
                start = time.perf_counter()
                results[key] = _cell(row, rounds, _sigma(row, rounds, epsilon, args), args, features[open_idx], fleet,
                                     in_domain, data.labels[open_idx], seed)
                results[key]["seconds"] = time.perf_counter() - start
                out.write_text(json.dumps(results, indent=1))
                print(f"{key}: precision {results[key]['precision']:.3f}, epsilon {results[key]['epsilon']:.3f}",
                      flush=True)
    if args.flower:
        _flower_rounds(results, args, features, data, out)
    _report(results, args)


def _key(row: str, rounds: int, epsilon: float, seed: int) -> str:
    return f"{row}{'' if rounds == 1 else f', {rounds} rounds'}|{epsilon}|{seed}"


def _sigma(row: str, rounds: int, epsilon: float, args) -> float:
    """The noise multiplier at which one device of ``row`` releases ``epsilon`` over ``rounds`` rounds (each
    mechanism calibrated)."""
    if row == "fleet, secure aggregation":
        return calibrated_noise(epsilon, args.delta, lambda s: FleetEcos(
            noise_multiplier=s, threshold=args.threshold, rounds=rounds,
            first_round_share=args.first_round_share if rounds > 1 else 0.5).releases())
    return noise_multiplier_for_epsilon(epsilon, args.delta)  # Gaussian rounds compose to one at this sigma


def _cell(row: str, rounds: int, sigma: float, args, pool, fleet, in_domain, labels, seed: int) -> dict:
    run = Run(budget=args.budget, delta=args.delta, seed=seed)
    split = {"rounds": rounds, "sub_clusters": args.sub_clusters, "first_round_share": args.first_round_share} \
        if rounds > 1 else {}
    if row == "one big client":
        samplers = [(Ecos(num_clusters=args.num_clusters, noise_multiplier=sigma, **split), np.concatenate(fleet))]
    elif row == "one device alone":
        samplers = [(Ecos(num_clusters=args.num_clusters, noise_multiplier=sigma), fleet[i]) for i in range(args.alone)]
    else:
        secure = row == "fleet, secure aggregation"
        samplers = [(FleetEcos(num_clusters=args.num_clusters, noise_multiplier=sigma, secure=secure,
                               threshold=args.threshold if secure else 1, **split), None)]
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
    if args.rounds:
        print("\none round against two at the same per-device epsilon (two rounds: first round's share "
              f"{args.first_round_share:g}, {args.sub_clusters} sub-clusters per kept cluster); mean over seeds\n")
        print("| row | per-device epsilon | precision, 1 round | 2 rounds | class coverage, 1 round | 2 rounds | "
              "bytes down, 1 round | 2 rounds |")
        print("|---|---|---|---|---|---|---|---|")
        for row in ROUND_ROWS:
            for epsilon in args.epsilons:
                mean = {(rounds, field): _mean(results, row, rounds, epsilon, args.seeds, field)
                        for rounds in (1, 2) for field in ("precision", "coverage", "bytes_down")}
                print(f"| {row} | {epsilon:g} | {mean[1, 'precision']:.3f} | {mean[2, 'precision']:.3f} | "
                      f"{mean[1, 'coverage']:.2f} | {mean[2, 'coverage']:.2f} | {mean[1, 'bytes_down']:,.0f} | "
                      f"{mean[2, 'bytes_down']:,.0f} |")
    rounds = {k: v for k, v in results.items() if k.startswith("flower round|")}
    if rounds:
        print("\n| devices | round wall time (Flower, SecAgg+) | one device's compute | bytes down | answer bytes |")
        print("|---|---|---|---|---|")
        for key, r in sorted(rounds.items(), key=lambda kv: int(kv[0].split("|")[1])):
            print(f"| {key.split('|')[1]} | {r['round_seconds']:.1f} s | {r['device_seconds'] * 1000:.0f} ms | "
                  f"{r['bytes_down']:,} | {r['answer_bytes']:,} |")
    _plot(results, args)


def _mean(results: dict, row: str, rounds: int, epsilon: float, seeds, field: str) -> float:
    values = [results[k][field] for k in (_key(row, rounds, epsilon, s) for s in seeds) if k in results]
    return float(np.mean(values)) if values else float("nan")


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
