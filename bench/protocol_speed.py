"""Protocol speed and memory on synthetic features.

For each pool size N and cluster count K: wall time of cloud fit (k-means + assignment),
client respond (10k samples) and cloud sample (budget 1000), peak resident memory of the
three steps relative to the feature matrix, and bytes each way. Each configuration runs in
a fresh process so peak memory is its own.

    python bench/protocol_speed.py                   # N in {1e4, 1e5, 1e6}, K in {100, 1000}
    python bench/protocol_speed.py --sizes 10000 --clusters 100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def synthetic_features(n: int, d: int, components: int, seed: int, chunk: int = 100_000):
    """Unit-norm float32 [n, d] from a Gaussian mixture, generated in chunks (no float64 copy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = rng.standard_normal((components, d), dtype=np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        out[start:stop] = means[rng.integers(components, size=stop - start)]
        out[start:stop] += 0.5 * rng.standard_normal((stop - start, d), dtype=np.float32)
        out[start:stop] /= np.linalg.norm(out[start:stop], axis=1, keepdims=True)
    return out


def run_one(n: int, k: int, d: int, client_size: int, budget: int) -> dict:
    import numpy as np

    from ecos_lightning.protocol import ClientResponder, CloudSampler

    open_features = synthetic_features(n, d, components=50, seed=0)
    client_features = synthetic_features(client_size, d, components=50, seed=0)[: client_size]
    base = _rss_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:  # reset the peak-RSS counter
        refs.write("5")
    t0 = time.perf_counter()
    cloud = CloudSampler(num_clusters=k, seed=0)
    down = cloud.fit(open_features)
    t1 = time.perf_counter()
    up = ClientResponder(noise_multiplier=8.0, seed=0).respond(down, client_features)
    t2 = time.perf_counter()
    indices = cloud.sample(up, budget=budget)
    t3 = time.perf_counter()
    peak = _rss_bytes("VmHWM") - base + open_features.nbytes
    assert len(np.unique(indices)) == budget
    return {
        "N": n, "K": k, "fit_s": t1 - t0, "respond_s": t2 - t1, "sample_s": t3 - t2,
        "total_s": t3 - t0, "peak_over_features": peak / open_features.nbytes,
        "bytes_down": len(down.to_bytes()), "bytes_up": len(up.to_bytes()), "scores_bytes": up.scores.nbytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--clusters", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--client-size", type=int, default=10_000)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--one", type=int, nargs=2, metavar=("N", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.dim, args.client_size, args.budget)))
        return
    print(f"d={args.dim}, client samples={args.client_size}, budget={args.budget}; "
          "peak = resident memory of the features plus everything the three steps allocate\n")
    print("| N | K | fit s | respond s | sample s | total s | peak / features | bytes down | bytes up (scores) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        for k in args.clusters:
            out = subprocess.run([sys.executable, __file__, "--one", str(n), str(k), "--dim", str(args.dim),
                                  "--client-size", str(args.client_size), "--budget", str(args.budget)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['N']:,} | {r['K']} | {r['fit_s']:.2f} | {r['respond_s']:.3f} | {r['sample_s']:.3f} | "
                  f"{r['total_s']:.2f} | {r['peak_over_features']:.2f}x | {r['bytes_down']:,} | "
                  f"{r['bytes_up']:,} ({r['scores_bytes']:,}) |", flush=True)


if __name__ == "__main__":
    main()
