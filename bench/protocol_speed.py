"""Protocol speed and memory on synthetic features.

For each pool size N and cluster count K: wall time of cloud fit (k-means + assignment),
client respond (10k samples) and cloud sample (budget 1000), peak resident memory of the
three steps relative to the feature matrix, and bytes each way. Each configuration runs in
a fresh process so peak memory is its own.

With ``--store DIR`` the pool's features are written chunk by chunk into a feature store in DIR
(``ecos_lightning.features.store``, N x d x 4 bytes of disk) and the protocol reads them memory-mapped;
the table then gives the peak *anonymous* memory of fit + respond + sample (RssAnon, sampled every
20 ms: resident memory minus file-backed pages), against the target of 2 GB + K x d floats.

    python bench/protocol_speed.py                   # N in {1e4, 1e5, 1e6}, K in {100, 1000}
    python bench/protocol_speed.py --sizes 10000 --clusters 100
    python bench/protocol_speed.py --sizes 10000000 --clusters 100 --dim 256 --store /tmp/store
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


def mixture_rows(rows: range, d: int, components: int, seed: int):
    """Rows ``rows`` of a unit-norm float32 Gaussian-mixture matrix [*, d] (the same rows whatever the split)."""
    import numpy as np

    means = np.random.default_rng(seed).standard_normal((components, d), dtype=np.float32)
    rng = np.random.default_rng([seed, rows.start])
    out = means[rng.integers(components, size=len(rows))]
    out += 0.5 * rng.standard_normal((len(rows), d), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def synthetic_features(n: int, d: int, components: int, seed: int, chunk: int = 100_000):
    """Unit-norm float32 [n, d] from a Gaussian mixture, generated in chunks (no float64 copy)."""
    import numpy as np

    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        rows = range(start, min(n, start + chunk))
        out[rows.start:rows.stop] = mixture_rows(rows, d, components, seed)
    return out


def stored_features(n: int, d: int, folder: str):
    """The same mixture in a feature store under ``folder`` (written once, chunk by chunk), memory-mapped."""
    from ecos_lightning.features.store import FeatureStore

    store = FeatureStore(f"{folder}/synthetic-n{n}-d{d}.npy", n, d, chunk_rows=1 << 18)
    store.fill(lambda rows: mixture_rows(rows, d, components=50, seed=0))
    return store.read()


class PeakAnonymous:
    """Samples the process's anonymous resident memory (RssAnon) every ``interval`` seconds; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.02):
        import threading

        self.peak, self._stop = _rss_bytes("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, _rss_bytes("RssAnon"))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes("RssAnon"))


def run_one(n: int, k: int, d: int, client_size: int, budget: int, store: str | None = None) -> dict:
    import numpy as np

    from ecos_lightning.protocol import ClientResponder, CloudSampler

    t_gen = time.perf_counter()
    open_features = stored_features(n, d, store) if store else synthetic_features(n, d, components=50, seed=0)
    t_gen = time.perf_counter() - t_gen
    client_features = synthetic_features(client_size, d, components=50, seed=0)[: client_size]
    base = _rss_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:  # reset the peak-RSS counter
        refs.write("5")
    with PeakAnonymous() as anonymous:
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
        "total_s": t3 - t0, "peak_over_features": peak / open_features.nbytes, "store_write_s": t_gen,
        "peak_anonymous": anonymous.peak, "target": 2 * 2**30 + 4 * k * d,
        "bytes_down": len(down.to_bytes()), "bytes_up": len(up.to_bytes()), "scores_bytes": up.scores.nbytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--clusters", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--client-size", type=int, default=10_000)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--store", help="a folder for the feature store (memory-mapped features)")
    parser.add_argument("--one", type=int, nargs=2, metavar=("N", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.dim, args.client_size, args.budget, args.store)))
        return
    if args.store:
        print(f"feature store in {args.store}, d={args.dim}, client samples={args.client_size}, budget={args.budget}; "
              "anonymous = peak RssAnon of fit + respond + sample; target 2 GB + K x d floats\n")
        header = "| N | K | store write s | fit s | respond s | sample s | peak anonymous MB | target MB |"
        row = ("| {N:,} | {K} | {store_write_s:.0f} | {fit_s:.1f} | {respond_s:.2f} | {sample_s:.2f} | "
               "{anonymous_mb:,.0f} | {target_mb:,.0f} |")
    else:
        print(f"d={args.dim}, client samples={args.client_size}, budget={args.budget}; "
              "peak = resident memory of the features plus everything the three steps allocate\n")
        header = "| N | K | fit s | respond s | sample s | total s | peak / features | bytes down | bytes up (scores) |"
        row = ("| {N:,} | {K} | {fit_s:.2f} | {respond_s:.3f} | {sample_s:.3f} | {total_s:.2f} | "
               "{peak_over_features:.2f}x | {bytes_down:,} | {bytes_up:,} ({scores_bytes:,}) |")
    print(header)
    print("|" + "---:|" * (header.count("|") - 1))
    for n in args.sizes:
        for k in args.clusters:
            r = _subprocess_run(n, k, args)
            print(row.format(**r, anonymous_mb=r["peak_anonymous"] / 2**20, target_mb=r["target"] / 2**20), flush=True)


def _subprocess_run(n: int, k: int, args) -> dict:
    """``run_one`` in a fresh process (its peak memory is its own)."""
    out = subprocess.run([sys.executable, __file__, "--one", str(n), str(k), "--dim", str(args.dim),
                          "--client-size", str(args.client_size), "--budget", str(args.budget),
                          *(["--store", args.store] if args.store else [])], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
