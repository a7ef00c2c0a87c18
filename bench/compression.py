"""Compressed centroids on digits-lite: bytes down against in-domain precision of the proxy.

ECOS at the noise giving epsilon ~0.5 (delta 1e-5), for each centroid dimension d' (full, or PCA to
fewer dimensions; the PCA map travels in the message) with and without float16. In-domain precision
= share of the proxy from the client's domain; mean ± std over client domains x seeds.

    python bench/compression.py                               # 5 domains x seeds 1-3, budget 1000, K=100
    python bench/compression.py --domains handwritten --seeds 1 --dims full 16
"""

from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np

from ecos_lightning.data import DOMAINS, paper_split
from ecos_lightning.protocol import gaussian_epsilon, noise_multiplier_for_epsilon
from ecos_lightning.samplers import select_proxy

from digits_features import add_arguments, digits_lite_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--dims", nargs="+", default=["full", "256", "64", "16"], help="'full' or a PCA dimension")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")

    data, features = digits_lite_features(args)
    sigma = noise_multiplier_for_epsilon(args.epsilon, args.delta)
    configs = [(dim, fp16) for dim in args.dims for fp16 in (False, True)]
    results = {config: {"precision": [], "down": [], "epsilon": []} for config in configs}
    for domain in args.domains:
        for seed in args.seeds:
            split = paper_split(data.domains, data.labels, domain, seed=seed)
            open_idx, client_idx = split.open_indices, split.client_train_indices
            in_domain = data.domains[open_idx] == DOMAINS.index(domain)
            for dim, fp16 in configs:
                res = select_proxy("ecos", features[open_idx], args.budget, client_features=features[client_idx],
                                   num_clusters=args.num_clusters, noise_multiplier=sigma, delta=args.delta,
                                   seed=seed, fp16=fp16, pca_dim=None if dim == "full" else int(dim))
                r = results[(dim, fp16)]
                r["precision"].append(in_domain[res.indices].mean())
                r["down"].append(res.bytes_down)
                r["epsilon"].append(res.epsilon)

    print(f"digits-lite, ECOS at sigma {sigma:.2f} (epsilon {np.mean(r['epsilon']):.3f} at delta {args.delta:g}, PLD; "
          f"RDP {gaussian_epsilon(sigma, args.delta, accountant='rdp'):.3f}), "
          f"budget {args.budget}, K={args.num_clusters}, domains {args.domains}, seeds {args.seeds}, encoder "
          f"efficientnet_lite0 (offline ImageNet) at {args.input_size}px, {args.pooling} pooling "
          f"(full d={features.shape[1]})\n")
    print("| centroids d' | dtype | bytes down | of which PCA map | in-domain precision |")
    print("|---|---|---:|---:|---:|")
    for dim, fp16 in configs:
        r = results[(dim, fp16)]
        label = f"full ({features.shape[1]})" if dim == "full" else f"{dim} (PCA)"
        pca_map = 0 if dim == "full" else (features.shape[1] + 1) * int(dim) * 4  # float32 [d, d'] + [d']
        print(f"| {label} | {'float16' if fp16 else 'float32'} | {int(np.mean(r['down'])):,} | {pca_map:,} | "
              f"{np.mean(r['precision']):.3f} ± {np.std(r['precision']):.3f} |")


if __name__ == "__main__":
    main()
