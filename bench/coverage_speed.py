"""Cloud cost of class-coverage labels against the number of client classes.

For each proxy size B and class count L: wall time and peak traced memory (numpy's allocations, by
tracemalloc) of ``class_coverage.propagate_labels`` on synthetic proxy features (d=64, whitened to 16,
resolutions 10/20/50) and a noisy histogram whose every class carries noise (about half its cells
positive): the worst case for the cloud, as each such class has evidence somewhere.

    python bench/coverage_speed.py
    python bench/coverage_speed.py --sizes 1000 --classes 10 10000
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from ecos_lightning.protocol import class_coverage


def measure(size: int, classes: int, seed: int = 0) -> tuple[float, float]:
    """(seconds, peak MB) of labelling a proxy of ``size`` images from a ``classes``-class histogram."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(size, 64)).astype(np.float32)
    query = class_coverage.coverage_query(features, clusters=(10, 20, 50), whiten_dim=16, seed=seed)
    counts = (3.0 * rng.normal(size=(len(query.centroids), classes))).astype(np.float32)
    tracemalloc.start()
    start = time.perf_counter()
    class_coverage.propagate_labels(query, features, counts)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="proxy sizes B")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 1000, 10000], help="class counts L")
    args = parser.parse_args()
    print("| B | L | propagate s | peak MB |")
    print("|---:|---:|---:|---:|")
    for size in args.sizes:
        for classes in args.classes:
            seconds, peak = measure(size, classes)
            print(f"| {size:,} | {classes:,} | {seconds:.2f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
