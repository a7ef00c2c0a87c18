"""Ablation of ECOS's sampling rules and of ``num_clusters="auto"``, against plain score-proportional sampling.

The rules this project chose where the paper is not explicit: the cluster threshold (``noise_z`` = 3 noise
std), the candidate factor (3x the allocation, nearest the centroid) and k-center greedy inside clusters;
and K. Each variant switches one of them (see VARIANTS); ``plain`` is score-proportional sampling with no
rule (allocation proportional to the clipped scores, uniform random within clusters); ``random`` is the
uniform baseline. Two cases:

- ``digits``: digits-lite, the paper's split (half the client domain is the client, M = 413..680 images;
  the rest and the other domains are the pool, N = 8,400..8,900), budget 1000.
- ``folder``: a user's multi-domain image folder, written once as PNGs ``<root>/pool/<domain>/<class>/*.png``
  from digits-lite (400 images per domain in the pool), with a client of 100 images of one domain (from
  ``<root>/client/<domain>/``, a different 100 per seed) and its own test images; budget 300.
  This is the README's failing case: 100 client images at sigma 8 (threshold 24).

For every (case, variant, client domain, seed): in-domain precision (share of the proxy from the client's
domain), class coverage (share of the 10 classes with >= 10 in-domain proxy images, as in
``sampling_quality.py``), K, kept clusters, and the client's test accuracy after fine-tuning the default
``FineTuneModule`` (ImageNet efficientnet_lite0) on the labelled proxy for a few epochs (identical proxies
share one fine-tuning). Cells are appended to a JSON file as they finish, so a run resumes where it stopped.

    python bench/ablation.py                          # both cases, 5 domains x seeds 1-3
    python bench/ablation.py --cases digits --domains handwritten --seeds 1 --no-finetune
    python bench/ablation.py --report-only            # the report from the cells finished so far
    python bench/ablation.py --k-sweep [--q 2]        # precision against K for several M and sigma, and the auto K
    python bench/ablation.py --class-coverage         # each class's share of the proxy against client size, per rule

Writes its tables into docs/ablation.md between marker comments (the text around them is kept) and keeps
the cells in docs/ablation_results.json and docs/ablation_ksweep.json (the class-coverage table is recomputed
each run: protocol only, a few minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from ecos_lightning.data import DOMAINS, PathImageDataset, paper_split, scan_labelled_images
from ecos_lightning.encoders import spec_for_model
from ecos_lightning.features.cache import cached_features
from ecos_lightning.files import atomic_write_bytes, default_cache_dir, stable_hash
from ecos_lightning.protocol import ClientResponder, CloudSampler
from ecos_lightning.protocol.num_clusters import FAISS_MIN_POINTS_PER_CENTROID, auto_num_clusters, expected_count_ratio
from ecos_lightning.proxy import Proxy
from ecos_lightning.samplers import select_proxy

from digits_features import digits_lite_features

SIGMA = 8.0  # the project's default noise multiplier (epsilon 0.434 at delta 1e-5)
PLAIN = {"noise_z": 0.0, "within_cluster": "random", "candidate_factor": math.inf}
VARIANTS = {  # name -> (sampler, num_clusters, rules); rules not named keep ECOS's defaults
    "ecos (K=auto)": ("ecos", "auto", {}),
    "ecos (K=100)": ("ecos", 100, {}),
    "no threshold": ("ecos", "auto", {"noise_z": 0.0}),
    "nearest-first": ("ecos", "auto", {"within_cluster": "nearest"}),
    "random in 3x candidates": ("ecos", "auto", {"within_cluster": "random"}),
    "k-center, all members": ("ecos", "auto", {"candidate_factor": math.inf}),
    "plain (K=auto)": ("ecos", "auto", PLAIN),
    "plain (K=100)": ("ecos", 100, PLAIN),
    "random": ("random", 100, {}),
}
#: Fine-tuning is by far the dearest part of a cell; by default only these variants are fine-tuned.
FINETUNED = ("ecos (K=auto)", "nearest-first", "no threshold", "plain (K=auto)", "ecos (K=100)",
             "random in 3x candidates")
BUDGET = {"digits": 1000, "folder": 300}
FOLDER_SIZES = {"pool": 400, "client": 300, "test": 200}  # images per domain
FOLDER_CLIENT = 100
RECIPE = dict(model_name="efficientnet_lite0", weights="offline", input_size=48, lr=3e-3, backbone_lr_scale=0.5)
BATCH_SIZE = 32
EPOCHS = {"digits": 2, "folder": 4}  # about the same number of training images seen in both cases


# ------------------------------------------------------------------------------------------------ data
class Case:
    """One client (domain, seed) of a case: pool and client features, the pool's labels and domains, and
    how the fine-tuning data module finds the pool and the client's test images."""

    def __init__(self, open_features, client_features, labels, in_domain, pool_dataset, test_dataset, open_name):
        self.open_features, self.client_features = open_features, client_features
        self.labels, self.in_domain = labels, in_domain
        self.pool_dataset, self.test_dataset, self.open_name = pool_dataset, test_dataset, open_name


def digits_case(domain: str, seed: int, args, sweep: bool = False) -> Case:
    """The paper's split of digits-lite for ``domain`` and ``seed``: the whole client half is the client."""
    data, features = digits_lite_features(args)
    split = paper_split(data.domains, data.labels, domain, seed=seed)
    open_idx, client_idx = split.open_indices, split.client_train_indices
    return Case(np.asarray(features[open_idx]), np.asarray(features[client_idx]), data.labels[open_idx],
                data.domains[open_idx] == DOMAINS.index(domain), None, None, f"digits-lite:{domain}:{seed}")


def write_folder(root: Path, cache_dir: str | None) -> None:
    """``root/{pool,client,test}/<domain>/<class>/<i>.png`` from digits-lite (disjoint images, fixed rng)."""
    if (root / "done").exists():
        return
    from PIL import Image

    from ecos_lightning.data import load_digits_lite

    data = load_digits_lite(cache_dir)
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix=".ablation-", dir=root.parent))
    for d, domain in enumerate(DOMAINS):
        order = rng.permutation(np.flatnonzero(data.domains == d))
        start = 0
        for part, size in FOLDER_SIZES.items():
            for i in order[start:start + size]:
                path = tmp / part / domain / str(int(data.labels[i])) / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(data.images[i]).save(path)
            start += size
    (tmp / "done").write_text("")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


def labelled_folder(root: Path) -> tuple[PathImageDataset, np.ndarray]:
    """The images of ``root/<domain>/<class>/`` with their class labels, and each image's domain index."""
    paths, labels, domains = [], [], []
    for d, domain in enumerate(DOMAINS):
        scan = scan_labelled_images(root / domain, progress=False)
        paths += scan.paths
        labels += [int(scan.class_names[label]) for label in scan.labels]
        domains += [d] * len(scan.paths)
    return PathImageDataset(paths, labels), np.asarray(domains)


def folder_case(domain: str, seed: int, args, sweep: bool = False) -> Case:
    """The folder pool; the client is 100 of the domain's 300 client images (all 300 for the K sweep)."""
    root = Path(args.cache_dir or default_cache_dir()) / "ablation_folder"
    write_folder(root, args.cache_dir)
    spec = spec_for_model("efficientnet_lite0", weights="offline", input_size=args.input_size, pooling=args.pooling)
    cache = args.cache_dir or default_cache_dir()
    pool, pool_domains = labelled_folder(root / "pool")
    client_all, client_domains = labelled_folder(root / "client")
    test_all, test_domains = labelled_folder(root / "test")
    open_features = cached_features(spec, pool, "ablation-folder-v1/pool", cache, desc="folder pool features")
    client_features = cached_features(spec, client_all, "ablation-folder-v1/client", cache,
                                      desc="folder client features")
    d = DOMAINS.index(domain)
    mine = np.flatnonzero(client_domains == d)
    client = mine if sweep else np.sort(np.random.default_rng(seed).choice(mine, FOLDER_CLIENT, replace=False))
    test_idx = np.flatnonzero(test_domains == d)
    test = PathImageDataset([test_all.paths[i] for i in test_idx], test_all.labels[test_idx].tolist())
    return Case(np.asarray(open_features), np.asarray(client_features[client]), pool.labels, pool_domains == d,
                pool, test, f"ablation-folder:{domain}")


CASES = {"digits": digits_case, "folder": folder_case}


# ------------------------------------------------------------------------------------------------ cells
def select(case: Case, variant: str, budget: int, seed: int):
    """The proxy of one variant and what the cloud saw: (proxy, warning texts)."""
    sampler, k, rules = VARIANTS[variant]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proxy = select_proxy(sampler, case.open_features, budget, client_features=case.client_features,
                             num_clusters=k, noise_multiplier=SIGMA, seed=seed, **(rules if sampler == "ecos" else {}))
    return proxy, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def finetune(case: Case, proxy: Proxy, seed: int, root: Path, epochs: int, cache_dir: str | None) -> float:
    """Client test accuracy after fine-tuning FineTuneModule on the proxy with its true labels."""
    import pytorch_lightning as pl

    from ecos_lightning.datamodules import Datasets, Loaders, ProxyDataModule
    from ecos_lightning.modules import FineTuneModule

    labels = case.labels[np.asarray(proxy.indices)]
    path = root / f"proxy-{seed}-{stable_hash(proxy.indices)}.json"
    proxy.replace(labels=labels.tolist(), class_names=[str(c) for c in range(10)], open=case.open_name).write(path)
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = ProxyDataModule(dataset=Datasets(open=case.pool_dataset, client_test=case.test_dataset), proxy_file=str(path),
                         loaders=Loaders(image_size=32, batch_size=BATCH_SIZE, val_fraction=0.0), seed=seed,
                         cache_dir=cache_dir)
    module = FineTuneModule(num_classes=10, **RECIPE)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    return float(trainer.test(module, datamodule=dm, verbose=False)[0]["test_acc"])


def run_cell(case_name: str, case: Case, variant: str, domain: str, seed: int, args, trained: dict) -> dict:
    """Precision, coverage and K of one variant; its fine-tuning accuracy too when it is in ``--finetune``."""
    start = time.perf_counter()
    budget = BUDGET[case_name]
    proxy, caught = select(case, variant, budget, seed)
    indices = np.asarray(proxy.indices)
    hit = case.in_domain[indices]
    per_class = np.bincount(case.labels[indices][hit], minlength=10)
    k = len(proxy.cluster_scores) if proxy.cluster_scores is not None else None
    kept = None
    if k:
        kept = int((np.asarray(proxy.cluster_scores) > VARIANTS[variant][2].get("noise_z", 3.0) * SIGMA).sum())
    epochs = EPOCHS[case_name]
    key = hashlib.sha256(f"{case_name}/{domain}/{seed}/{epochs}/{RECIPE}".encode() + indices.tobytes()).hexdigest()
    acc = None
    if variant in args.finetune:
        if key not in trained:
            root = Path(args.cache_dir or default_cache_dir()) / "bench_ablation"
            root.mkdir(parents=True, exist_ok=True)
            trained[key] = finetune(case, proxy, seed, root, epochs, args.cache_dir)
        acc = trained[key]
    return {"case": case_name, "variant": variant, "domain": domain, "seed": seed, "budget": budget,
            "client_size": len(case.client_features), "pool_size": len(case.open_features),
            "precision": float(hit.mean()), "coverage": float((per_class >= 10).mean()), "num_clusters": k,
            "kept": kept, "count_ratio": None if not k else expected_count_ratio(k, len(case.client_features), SIGMA),
            "warnings": caught, "acc": acc, "proxy": key,
            "wall_s": time.perf_counter() - start}


# ----------------------------------------------------------------------------------------------- K sweep
SWEEP = {  # case -> (client sizes M, sigmas, the K grid)
    "digits": ((100, 300, 600), (4.0, 8.0, 16.0), (6, 8, 12, 16, 32, 64, 128)),
    "folder": ((50, 100, 300), (4.0, 8.0, 16.0), (4, 6, 8, 12, 16, 24, 32)),
}


def sweep_cell(case_name: str, case: Case, domain: str, seed: int, q: int = 1) -> list[dict]:
    """In-domain precision of ECOS (default rules) for every (M, sigma) of the sweep at every K of its grid, the
    pool's largest K (N // 39) and the auto K of that (M, sigma); M client samples drawn with ``seed``, each
    covering its ``q`` nearest centroids."""
    sizes, sigmas, grid = SWEEP[case_name]
    n = len(case.open_features)
    rng = np.random.default_rng(seed)
    clients = {m: case.client_features[np.sort(rng.choice(len(case.client_features), min(m, len(case.client_features)),
                                                          replace=False))] for m in sizes}
    autos = {(m, s): auto_num_clusters(n, len(clients[m]), s, q) for m in sizes for s in sigmas}
    rows = []
    for k in sorted(set(grid) | {n // FAISS_MIN_POINTS_PER_CENTROID} | set(autos.values())):
        cloud = CloudSampler(num_clusters=k, seed=seed)
        down = cloud.fit(case.open_features)
        for m in sizes:
            for sigma in sigmas:
                up = ClientResponder(noise_multiplier=sigma, q=q, seed=seed).respond(down, clients[m])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    indices = cloud.sample(up, BUDGET[case_name])
                rows.append({"case": case_name, "domain": domain, "seed": seed, "q": q, "client_size": m, "sigma": sigma,
                             "k": k, "auto": autos[(m, sigma)] == k, "precision": float(case.in_domain[indices].mean())})
    return rows


def sweep_report(rows: list[dict]) -> str:
    lines = ["In-domain precision of ECOS (default rules) against K, mean over client domains x seeds; **bold**: the "
             "best K of the row; last column: the K `num_clusters=auto` picks and its precision.", ""]
    for (case_name, (sizes, sigmas, grid)), q in [(item, q) for item in SWEEP.items()
                                                  for q in sorted({r.get("q", 1) for r in rows})]:
        mine = [r for r in rows if r["case"] == case_name and r.get("q", 1) == q]
        if not mine:
            continue
        ks = sorted({r["k"] for r in mine if r["k"] in grid or r["k"] == max(r2["k"] for r2 in mine)})
        runs = len({(r["domain"], r["seed"]) for r in mine})
        lines += [f"**{case_name}**, q = {q} (budget {BUDGET[case_name]}, {runs} runs)", "",
                  "| M | sigma | " + " | ".join(f"K={k}" for k in ks) + " | auto: K (precision) |",
                  "|---:|---:|" + "---:|" * (len(ks) + 1)]
        for m in sizes:
            for sigma in sigmas:
                cell = [r for r in mine if r["client_size"] == m and r["sigma"] == sigma]
                means = {k: np.mean([r["precision"] for r in cell if r["k"] == k]) for k in ks}
                best = max(means, key=means.get)
                auto = [r for r in cell if r["auto"]]
                auto_k = sorted({r["k"] for r in auto})
                auto_text = (f"{auto_k[0]}" if len(auto_k) == 1 else f"{auto_k[0]}..{auto_k[-1]}") + \
                    f" ({np.mean([r['precision'] for r in auto]):.3f})" if auto else "–"
                lines.append(f"| {m} | {sigma:g} | " + " | ".join(
                    f"**{means[k]:.3f}**" if k == best else f"{means[k]:.3f}" for k in ks) + f" | {auto_text} |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- class coverage
COVERAGE_SIZES = (100, 300, 600, 1000)  # client sizes M, drawn from the client's half of its domain
COVERAGE_BUDGETS = (500, 1000)
COVERED = 10  # in-domain proxy images a client class needs to count as covered (as in run_cell)
COVERAGE_RULES = {  # name -> CloudSampler rules on top of ECOS's defaults
    "threshold 3 std": {"neighbour_z": None},
    "threshold 2 std": {"noise_z": 2.0, "neighbour_z": None},
    "+ neighbours above 2 std": {"neighbour_z": 2.0},
    "+ neighbours above 1.5 std": {"neighbour_z": 1.5},
    "+ neighbours above 1 std": {"neighbour_z": 1.0},
    "k-center over all members": {"neighbour_z": None, "candidate_factor": math.inf},
    "k-center over all members + neighbours above 1.5 std": {"neighbour_z": 1.5, "candidate_factor": math.inf},
}


def coverage_cells(domain: str, seed: int, args) -> list[dict]:
    """For each client size M, budget of COVERAGE_BUDGETS and rule of COVERAGE_RULES: in-domain precision and
    class shares of the ECOS proxy (K auto, sigma 8) for M of the ``domain``'s client half (1,000 images; 870 for
    handwritten) drawn with ``seed``; one k-means fit and one release per M, shared by the budgets and rules."""
    data, features = digits_lite_features(args)
    split = paper_split(data.domains, data.labels, domain, seed=seed)
    open_idx, half = split.open_indices, split.client_indices
    open_features, in_domain = np.asarray(features[open_idx]), data.domains[open_idx] == DOMAINS.index(domain)
    pool_labels, n = data.labels[open_idx], len(open_idx)
    rng = np.random.default_rng(seed)
    rows = []
    for m in COVERAGE_SIZES:
        client = np.sort(rng.choice(half, min(m, len(half)), replace=False))
        client_share = np.bincount(data.labels[client], minlength=10) / len(client)  # [10]
        k = auto_num_clusters(n, len(client), SIGMA)
        cloud = CloudSampler(num_clusters=k, seed=seed)
        down = cloud.fit(open_features)
        up = ClientResponder(noise_multiplier=SIGMA, seed=seed).respond(down, np.asarray(features[client]))
        for (name, rules), budget in itertools.product(COVERAGE_RULES.items(), COVERAGE_BUDGETS):
            sampler = CloudSampler.restore(down, open_features, cloud.assignment_, cloud.member_order_, seed=seed,
                                           **rules)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                selection = sampler.select(up, budget)
            hit = in_domain[selection.indices]
            per_class = np.bincount(pool_labels[selection.indices][hit], minlength=10)  # [10]
            ratio = (per_class / max(1, hit.sum()))[client_share > 0] / client_share[client_share > 0]
            rows.append({"domain": domain, "seed": seed, "client_size": len(client), "target_size": m, "rule": name,
                         "budget": budget, "k": k, "kept": int(selection.kept.sum()), "precision": float(hit.mean()),
                         "min_ratio": float(ratio.min()), "under_half": int((ratio < 0.5).sum()),
                         "covered": int((per_class[client_share > 0] >= COVERED).sum()),
                         "classes": int((client_share > 0).sum())})
    return rows


def coverage_report(rows: list[dict]) -> str:
    runs = len({(r["domain"], r["seed"]) for r in rows})
    lines = [f"ECOS on digits-lite, K = auto, sigma {SIGMA:g}, mean over {runs} (client domain, seed) runs. Smallest "
             "class ratio: the least-represented class's share of the in-domain proxy divided by its share of the "
             "client (1 = its fair share); under half: client classes below half their fair share (mean per run, and "
             f"the runs with at least one); covered: client classes with at least {COVERED} in-domain proxy images "
             "(mean per run, of the client's classes).", "",
             "| M | budget | rule | in-domain precision | smallest class ratio | classes under half | runs with one | "
             "classes covered | K | kept clusters |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, budget in itertools.product(COVERAGE_SIZES, COVERAGE_BUDGETS):
        for name in COVERAGE_RULES:
            cell = [r for r in rows if r["target_size"] == m and r["budget"] == budget and r["rule"] == name]
            if not cell:
                continue
            ks, sizes = sorted({r["k"] for r in cell}), sorted({r["client_size"] for r in cell})
            m_text = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}..{sizes[-1]}"
            k_text = f"{ks[0]}" if len(ks) == 1 else f"{ks[0]}..{ks[-1]}"
            lines.append(f"| {m_text} | {budget} | {name} | {np.mean([r['precision'] for r in cell]):.3f} | "
                         f"{np.mean([r['min_ratio'] for r in cell]):.2f} | "
                         f"{np.mean([r['under_half'] for r in cell]):.2f} | "
                         f"{sum(r['under_half'] > 0 for r in cell)}/{len(cell)} | "
                         f"{np.mean([r['covered'] for r in cell]):.2f} of {max(r['classes'] for r in cell)} | {k_text} | "
                         f"{np.mean([r['kept'] for r in cell]):.1f} |")
    return "\n".join(lines)


def class_coverage(args) -> None:
    start = time.perf_counter()
    rows = [row for seed in args.seeds for domain in args.domains for row in coverage_cells(domain, seed, args)]
    text = coverage_report(rows) + f"\n\n{time.perf_counter() - start:.0f} s."
    write_section(Path(args.out), "class-coverage", text)
    print(text)


def write_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` between the ``<!-- ablation:<name> -->`` markers of ``path`` (appended when absent)."""
    begin, end = f"<!-- ablation:{name} begin (written by bench/ablation.py) -->", f"<!-- ablation:{name} end -->"
    old = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text.strip()}\n{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old + ("\n" if old else "") + block + "\n"
    atomic_write_bytes(path, new.encode())


# ----------------------------------------------------------------------------------------------- report
def mean_std(values, scale=1.0, digits=3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    a = np.asarray(values, dtype=float) * scale
    return f"{a.mean():.{digits}f} ± {a.std():.{digits}f}"


def report(cells: list[dict]) -> str:
    lines = [f"sigma {SIGMA:g} (epsilon 0.434 at delta 1e-5); fine-tuning: FineTuneModule {RECIPE}, batch "
             f"{BATCH_SIZE}, epochs {EPOCHS}, tested on the client's held-out images. Mean ± std over client "
             "domains x seeds; each column over the (domain, seed) pairs every variant finished.", ""]
    for case_name in CASES:
        mine = [c for c in cells if c["case"] == case_name]
        if not mine:
            continue
        # compare variants on the (domain, seed) pairs every variant finished
        pairs = set.intersection(*[{(c["domain"], c["seed"]) for c in mine if c["variant"] == v} for v in VARIANTS])
        tuned = [v for v in VARIANTS if any(c["variant"] == v and c["acc"] is not None for c in mine)]
        trained = set.intersection(*[{(c["domain"], c["seed"]) for c in mine if c["variant"] == v and
                                      c["acc"] is not None} for v in tuned]) if tuned else set()
        rows = [c for c in mine if (c["domain"], c["seed"]) in pairs]
        sizes = sorted({(c["pool_size"], c["client_size"]) for c in rows})
        lines += [f"### {case_name}: budget {BUDGET[case_name]}, {len(pairs)} (domain, seed) pairs, pool N "
                  f"{min(s[0] for s in sizes) if sizes else '?'}..{max(s[0] for s in sizes) if sizes else '?'}, client M "
                  f"{min(s[1] for s in sizes) if sizes else '?'}..{max(s[1] for s in sizes) if sizes else '?'}; "
                  f"fine-tuning on {len(trained)} pairs", "",
                  "| variant | in-domain precision | class coverage | fine-tune accuracy (%) | K | clusters above "
                  "threshold | runs: none above threshold | runs: budget over kept clusters |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for variant in VARIANTS:
            vs = [c for c in rows if c["variant"] == variant]
            if not vs:
                continue
            ks = [c["num_clusters"] for c in vs if c["num_clusters"]]
            k_text = "–" if not ks else (f"{min(ks)}" if min(ks) == max(ks) else f"{min(ks)}..{max(ks)}")
            nothing = sum(any(w.startswith(("no cluster scores above", "every score is zero")) for w in c["warnings"])
                          for c in vs)
            overflow = sum(any("kept clusters hold only" in w for w in c["warnings"]) for c in vs)
            lines.append(f"| {variant} | {mean_std([c['precision'] for c in vs])} | "
                         f"{mean_std([c['coverage'] for c in vs], digits=2)} | "
                         f"{mean_std([c['acc'] for c in vs if (c['domain'], c['seed']) in trained], 100, 1)} | "
                         f"{k_text} | "
                         f"{mean_std([c['kept'] for c in vs], digits=1)} | {nothing}/{len(vs)} | {overflow}/{len(vs)} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--finetune", nargs="*", default=list(FINETUNED), choices=list(VARIANTS),
                        help="variants also fine-tuned (none: precision and coverage only)")
    parser.add_argument("--input-size", type=int, default=64, help="encoder input side of the protocol's features")
    parser.add_argument("--pooling", default="style", choices=("style", "avg"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--results", default="docs/ablation_results.json")
    parser.add_argument("--sweep-results", default="docs/ablation_ksweep.json")
    parser.add_argument("--out", default="docs/ablation.md", help="the report (its marked sections are rewritten)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--k-sweep", action="store_true", help="run the K sweep instead of the rule ablation")
    parser.add_argument("--q", type=int, default=1, help="K sweep: nearest centroids each client sample covers")
    parser.add_argument("--class-coverage", action="store_true",
                        help="class shares of the proxy against client size, per selection rule (digits-lite)")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    if args.k_sweep:
        return k_sweep(args)
    if args.class_coverage:
        return class_coverage(args)
    results = Path(args.results)
    cells = json.loads(results.read_text()) if results.exists() else []
    done = {(c["case"], c["variant"], c["domain"], c["seed"]) for c in cells
            if c["variant"] not in args.finetune or c["acc"] is not None}
    trained = {c["proxy"]: c["acc"] for c in cells if c["acc"] is not None}  # the key holds the recipe
    for seed in [] if args.report_only else args.seeds:  # seed-major: a partial run covers every domain
        for case_name in args.cases:
            for domain in args.domains:
                todo = [v for v in args.variants if (case_name, v, domain, seed) not in done]
                if not todo:
                    continue
                case = CASES[case_name](domain, seed, args)
                for variant in todo:
                    cell = run_cell(case_name, case, variant, domain, seed, args, trained)
                    cells = [c for c in cells if (c["case"], c["variant"], c["domain"], c["seed"]) !=
                             (case_name, variant, domain, seed)] + [cell]
                    atomic_write_bytes(results, json.dumps(cells, indent=1).encode())
                    acc = "–" if cell["acc"] is None else f"{cell['acc']:.3f}"
                    print(f"{case_name:6s} {variant:24s} {domain:11s} seed {seed}: precision {cell['precision']:.3f} "
                          f"K {cell['num_clusters']} acc {acc} ({cell['wall_s']:.0f} s)", flush=True)
    text = report(cells)
    write_section(Path(args.out), "rules", text)
    print(text)


def k_sweep(args) -> None:
    results = Path(args.sweep_results)
    rows = json.loads(results.read_text()) if results.exists() else []
    done = {(r["case"], r["domain"], r["seed"], r.get("q", 1)) for r in rows}
    for seed in [] if args.report_only else args.seeds:
        for case_name in args.cases:
            for domain in args.domains:
                if (case_name, domain, seed, args.q) in done:
                    continue
                rows += sweep_cell(case_name, CASES[case_name](domain, seed, args, sweep=True), domain, seed, args.q)
                atomic_write_bytes(results, json.dumps(rows).encode())
                print(f"k-sweep {case_name} {domain} seed {seed} q {args.q} done", flush=True)
    text = sweep_report(rows)
    write_section(Path(args.out), "k-sweep", text)
    print(text)


if __name__ == "__main__":
    main()
