"""Proxy quality on digits-lite: in-domain precision and class coverage per sampler.

For each client domain (50% of it is the client, 70% of that its training part) and seed:
features from the offline ImageNet efficientnet_lite0, then each sampler picks ``budget`` open
images. In-domain precision = share of the proxy from the client's domain; class coverage =
share of the 10 classes with at least 10 in-domain proxy images.

    python bench/sampling_quality.py                          # 5 domains x seeds 1-3, budget 1000
    python bench/sampling_quality.py --domains handwritten --seeds 1
"""

from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np

from ecos_lightning.data import DOMAINS, paper_split
from ecos_lightning.protocol import noise_multiplier_for_epsilon
from ecos_lightning.samplers import select_proxy

from digits_features import add_arguments, digits_lite_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")

    data, features = digits_lite_features(args)
    sigma = noise_multiplier_for_epsilon(args.epsilon, args.delta)
    rows = [("ecos (sigma=0)", "ecos", 0.0), (f"ecos (eps~{args.epsilon})", "ecos", sigma),
            ("random", "random", 0.0), ("kcenter", "kcenter", 0.0), ("upload", "upload", 0.0)]

    results = {name: {"precision": [], "coverage": [], "epsilon": [], "epsilon_rdp": [], "down": [], "up": []}
               for name, _, _ in rows}
    per_domain = {name: {} for name, _, _ in rows}
    for domain in args.domains:
        for seed in args.seeds:
            split = paper_split(data.domains, data.labels, domain, seed=seed)
            open_idx, client_idx = split.open_indices, split.client_train_indices
            in_domain = data.domains[open_idx] == DOMAINS.index(domain)
            for name, sampler, noise in rows:
                res = select_proxy(sampler, features[open_idx], args.budget, client_features=features[client_idx],
                                   num_clusters=args.num_clusters, noise_multiplier=noise, delta=args.delta,
                                   seed=seed)
                hit = in_domain[res.indices]
                classes = np.bincount(data.labels[open_idx][res.indices][hit], minlength=10)
                r = results[name]
                r["precision"].append(hit.mean())
                r["coverage"].append((classes >= 10).mean())
                r["epsilon"].append(res.epsilon)
                r["epsilon_rdp"].append(res.epsilon_rdp)
                r["down"].append(res.bytes_down)
                r["up"].append(res.bytes_up)
                per_domain[name].setdefault(domain, []).append(hit.mean())

    print(f"digits-lite, budget {args.budget}, K={args.num_clusters}, domains {args.domains}, seeds {args.seeds}, "
          f"encoder efficientnet_lite0 (offline ImageNet) at {args.input_size}px, {args.pooling} pooling, delta {args.delta}\n")
    print("| sampler | in-domain precision | class coverage | epsilon PLD / RDP | bytes down | bytes up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, _, _ in rows:
        r = results[name]
        print(f"| {name} | {np.mean(r['precision']):.3f} ± {np.std(r['precision']):.3f} | "
              f"{np.mean(r['coverage']):.2f} | {np.mean(r['epsilon']):.3g} / {np.mean(r['epsilon_rdp']):.3g} | {int(np.mean(r['down'])):,} | "
              f"{int(np.mean(r['up'])):,} |")
    print("\nin-domain precision per client domain (mean over seeds)\n")
    print("| sampler | " + " | ".join(args.domains) + " |")
    print("|---|" + "---:|" * len(args.domains))
    for name, _, _ in rows:
        print(f"| {name} | " + " | ".join(f"{np.mean(per_domain[name][d]):.3f}" for d in args.domains) + " |")


if __name__ == "__main__":
    main()
