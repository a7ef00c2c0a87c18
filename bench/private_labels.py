"""Auto-labels against their privacy cost on digits-lite: label accuracy and client accuracy vs total epsilon.

Each cell (method, client domain, seed, total epsilon) selects the ECOS proxy (B images, K=100) and labels
it with a label source of ``ecos_lightning.label_sources``; the whole run (ECOS query + labels) costs the
cell's total epsilon at delta 1e-5 by dp-accounting's PLD accountant (its RDP epsilon is reported beside
it). The ECOS query keeps sigma 8 unless the total is too small for it to take at most half of it (in
Gaussian composition, where 1/sigma^2 adds up): then it gets sqrt(2) x the single-release sigma of the
total. The label source's noise is then the smallest that keeps the composed releases within the total
(a bisection over the records the source declares).

Stages (cells are appended to the JSON results as they finish; an interrupted run resumes):

    python bench/private_labels.py --stage labels      # label accuracy (+ a linear probe's client accuracy)
    python bench/private_labels.py --stage finetune    # client accuracy by short fine-tuning (slow)
    python bench/private_labels.py --report-only       # docs/private_labels.md and .png from finished cells

``labels`` runs every method at every epsilon (minutes on 2 CPU cores). Its client accuracy is a linear
probe (logistic regression on the frozen encoder's avg-pooled features of the proxy images with their
auto-labels, tested on the client's held-out images): cheap enough for the whole grid. ``finetune``
fine-tunes efficientnet_lite0 (64 px, FINETUNE epochs) on the auto-labelled proxy, as bench/tasks.py
does but for fewer epochs, with manual labels of the same proxy as the reference; by default only at
the epsilons of ``--finetune-epsilons``, as the full grid takes hours on 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np

from ecos_lightning.data import DOMAINS, paper_split
from ecos_lightning.files import atomic_write_bytes
from ecos_lightning.encoders import spec_for_model
from ecos_lightning.label_sources import get_label_source
from ecos_lightning.protocol.privacy import gaussian_release, noise_multiplier_for_epsilon, releases_epsilon
from ecos_lightning.samplers import Inputs, Run, select_proxy

from digits_features import add_arguments, digits_lite_features

EPSILONS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
ECOS_SIGMA = 8.0
#: method -> (label source, its settings, the setting that carries its noise, feature pooling for labelling)
METHODS = {
    "private_knn": ("client_knn", {"k": 20, "sampling_rate": 0.3}, "style"),
    "class_coverage": ("class_coverage", {"clusters": [10, 20, 50], "label_fraction": 1.0}, "style"),
    "class_coverage 80% labelled": ("class_coverage", {"clusters": [10, 20, 50], "label_fraction": 0.8}, "style"),
    "class_coverage avg pooling": ("class_coverage", {"clusters": [10, 20, 50], "label_fraction": 1.0}, "avg"),
}
FINETUNE_METHODS = ("manual", "class_coverage", "private_knn")
FINETUNE = dict(model_name="efficientnet_lite0", weights="offline", input_size=64, lr=2e-3, backbone_lr_scale=0.5)
FINETUNE_EPOCHS = 3


@functools.lru_cache(maxsize=None)
def ecos_sigma(epsilon: float, delta: float) -> float:
    """The ECOS query's noise multiplier for a run of total ``epsilon`` (see the module docstring)."""
    return max(ECOS_SIGMA, math.sqrt(2.0) * noise_multiplier_for_epsilon(epsilon, delta))


def label_sigma(method: str, epsilon: float, delta: float, budget: int) -> float:
    """Smallest noise multiplier (to 1e-3 relative) of ``method``'s releases whose composition with the ECOS
    query costs at most ``epsilon`` (PLD)."""
    source_name, params, _ = METHODS[method]
    fixed = [gaussian_release(ecos_sigma(epsilon, delta))]

    def cost(sigma: float) -> float:
        source = get_label_source(source_name, **params, noise_multiplier=sigma)
        return releases_epsilon(fixed + source.releases(budget), delta)

    low, high = 0.1, 1.0
    while cost(high) > epsilon:
        low, high = high, high * 2
        if high > 1e5:
            raise ValueError(f"{method}: epsilon {epsilon} is out of reach")
    while (high - low) / high > 1e-3:
        mid = (low + high) / 2
        low, high = (mid, high) if cost(mid) > epsilon else (low, mid)
    return high


_PROXIES: dict = {}


def ecos_proxy(style: np.ndarray, domain: str, seed: int, sigma: float, args, split):
    """The ECOS proxy of a split at noise multiplier ``sigma`` (computed once per process)."""
    key = (domain, seed, sigma)
    if key not in _PROXIES:
        open_idx, client_idx = split.open_indices, split.client_train_indices
        _PROXIES[key] = select_proxy("ecos", style[open_idx], args.budget, client_features=style[client_idx],
                                     num_clusters=args.num_clusters, noise_multiplier=sigma, delta=args.delta,
                                     seed=seed)
    return _PROXIES[key]


def make_cell(data, features: dict, domain: str, seed: int, epsilon: float, method: str, sigma: float,
              args) -> tuple[dict, np.ndarray, dict]:
    """Label one cell: (its record, the proxy's labels, the split)."""
    split = paper_split(data.domains, data.labels, domain, seed=seed)
    open_idx, client_idx = split.open_indices, split.client_train_indices
    e_sigma = ecos_sigma(epsilon, args.delta)
    proxy = ecos_proxy(features["style"], domain, seed, e_sigma, args, split)
    truth = data.labels[open_idx][proxy.indices]
    record = {"method": method, "domain": domain, "seed": seed, "epsilon": epsilon, "ecos_sigma": e_sigma}
    if method == "manual":
        labels, releases = truth, []
        record.update(label_sigma=None)
    else:
        source_name, params, pooling = METHODS[method]
        source = get_label_source(source_name, **params, noise_multiplier=sigma)
        encoder = spec_for_model("efficientnet_lite0", weights="offline", input_size=args.input_size,
                                 pooling=pooling).to_dict()
        inputs = Inputs(open_features=features[pooling][open_idx], client_features=features[pooling][client_idx],
                        encoder=encoder,
                        client_labels=data.labels[client_idx], client_size=len(client_idx), num_classes=10)
        start = time.perf_counter()
        labels = np.asarray(source.run(proxy, inputs, Run(args.budget, args.delta, seed)).label_list())
        releases = source.releases(args.budget)
        record.update(label_sigma=sigma, label_seconds=time.perf_counter() - start)
    releases = [gaussian_release(e_sigma)] + releases
    labelled = labels >= 0
    in_domain = data.domains[open_idx][proxy.indices] == DOMAINS.index(domain)
    record.update(epsilon_pld=releases_epsilon(releases, args.delta),
                  epsilon_rdp=releases_epsilon(releases, args.delta, accountant="rdp"),
                  label_accuracy=float((labels == truth).mean()), labelled=float(labelled.mean()),
                  accuracy_of_labelled=float((labels[labelled] == truth[labelled]).mean()) if labelled.any() else None,
                  in_domain=float(in_domain.mean()))
    return record, (open_idx[proxy.indices], labels), split


def probe_accuracy(features: np.ndarray, train_idx, labels, test_idx, test_labels) -> float:
    """Test accuracy of a logistic regression on frozen features of the labelled proxy images."""
    from sklearn.linear_model import LogisticRegression

    keep = labels >= 0
    if len(np.unique(labels[keep])) < 2:
        return float((test_labels == labels[keep][0]).mean()) if keep.any() else 0.0
    model = LogisticRegression(max_iter=500, C=1.0)
    model.fit(features[train_idx[keep]], labels[keep])
    return float((model.predict(features[test_idx]) == test_labels).mean())


def finetune_accuracy(data, train_idx, labels, test_idx, seed: int, root: Path) -> float:
    """Client test accuracy of efficientnet_lite0 fine-tuned on the labelled proxy images (as bench/tasks.py,
    FINETUNE_EPOCHS epochs)."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from ecos_lightning.modules import AutoLabelModule

    def loader(idx, y, shuffle):
        images = torch.from_numpy(data.images[idx]).permute(0, 3, 1, 2).float() / 255.0
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(TensorDataset(images, torch.from_numpy(np.asarray(y, np.int64))), batch_size=64,
                          shuffle=shuffle, generator=generator if shuffle else None)

    pl.seed_everything(seed, verbose=False)
    keep = labels >= 0
    module = AutoLabelModule(num_classes=10, **FINETUNE)
    trainer = pl.Trainer(max_epochs=FINETUNE_EPOCHS, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                         num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=loader(train_idx[keep], labels[keep], True))
    return float(trainer.test(module, dataloaders=loader(test_idx, data.labels[test_idx], False),
                              verbose=False)[0]["test_acc"])


INTRO = """# Auto-labels at a privacy cost worth paying

`class_coverage` (label source, `ecos_lightning/protocol/class_coverage.py`): the cloud whitens the proxy's own features
(PCA to 48 dimensions, unit variance, fitted on the public proxy) and clusters the proxy three times (10, 20 and
50 centroids); the client releases one noisy histogram over (centroid, class) cells per clustering. One client
sample adds 1 to one cell of each histogram, so each histogram is one Gaussian mechanism of sensitivity 1 whatever
the proxy size, and the three compose (dp-accounting) like one at sigma / sqrt(3). The cloud gives each proxy image
the class distribution of its nearest centroid at every resolution (noisy counts clipped at 0, normalised: one
vote per resolution), spreads them along the proxy's 5-nearest-neighbour graph (normalised-graph diffusion,
alpha 0.9) and takes the class of highest evidence; with `coverage_label_fraction < 1` it labels only the
clearest share and leaves the rest unlabelled (-1).
Private kNN (`client_knn`) answers each of the B queries: its cost grows with B.

    python bench/private_labels.py --stage labels      # every method and epsilon (probe accuracy)
    python bench/private_labels.py --stage finetune --finetune-epsilons 0.25 0.5 1 2 4 8   # fine-tuned (slow)
    python bench/private_labels.py --report-only

Device: 2-core CPU (shared). Train with it: `python train.py fit --config configs/autolabel_digits.yaml`;
across two machines: `ecos-cloud coverage-query`, `ecos-client class-coverage`, `ecos-cloud attach-coverage`.
"""


def report(cells: list[dict], args, out: Path) -> None:
    lines = [INTRO, f"digits-lite, budget {args.budget}, ECOS K={args.num_clusters}, client domains {args.domains}, seeds "
             f"{args.seeds}; epsilon at delta {args.delta:g} (PLD; RDP beside it) covers the ECOS query and the "
             "labels (`manual`: labels from an outsourced labeller, so the client spends the query's epsilon only). "
             "Mean ± std over domains x seeds. `probe`: client test accuracy of a logistic regression on "
             f"frozen avg-pooled features; `fine-tune`: efficientnet_lite0 {FINETUNE['input_size']} px, "
             f"{FINETUNE_EPOCHS} epochs.", ""]
    lines += summary(cells, args)
    for domain_set in (args.domains, *([[d] for d in args.domains] if len(args.domains) > 1 else [])):
        title = "all client domains" if len(domain_set) > 1 else f"client domain `{domain_set[0]}`"
        lines += [f"### {title}", "", "| method | run's epsilon | client's spent epsilon: PLD (RDP) | ECOS sigma | "
                  "label sigma | label accuracy | labelled | probe accuracy | fine-tune accuracy | runs |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for method in ("manual", *METHODS):
            for epsilon in EPSILONS:
                rows = runs_at(cells, "labels", method, epsilon, domain_set, args)
                tuned = runs_at(cells, "finetune", method, epsilon, domain_set, args)
                if {c["domain"] for c in tuned} != set(domain_set):  # a mean over some of the domains misleads
                    tuned = []
                if not rows and not tuned:
                    continue
                base = rows or tuned
                acc = _mean_std([c["label_accuracy"] for c in base])
                if any(c["labelled"] < 1 for c in base):
                    acc += f" ({np.mean([c['accuracy_of_labelled'] for c in base]) * 100:.1f} of those labelled)"
                probe = _mean_std([c["probe_accuracy"] for c in rows]) if rows else "–"
                tune = _mean_std([c["finetune_accuracy"] for c in tuned]) if tuned else "–"
                sigma = base[0]["label_sigma"]
                lines.append(f"| {method} | {epsilon:g} | {np.mean([c['epsilon_pld'] for c in base]):.3g} "
                             f"({np.mean([c['epsilon_rdp'] for c in base]):.3g}) | {base[0]['ecos_sigma']:.3g} | "
                             f"{'–' if sigma is None else f'{sigma:.3g}'} | {acc} | "
                             f"{np.mean([c['labelled'] for c in base]) * 100:.0f}% | {probe} | {tune} | "
                             f"{len(base)}{f' + {len(tuned)}' if rows and tuned else ''} |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(cells, args, out.with_suffix(".png"))


def runs_at(cells: list[dict], stage: str, method: str, epsilon: float, domains, args) -> list[dict]:
    """The finished cells of ``stage`` for ``method`` at total ``epsilon``, client ``domains`` and the run's seeds.
    Manual labels spend nothing beyond the ECOS query: a manual fine-tuning run at another total epsilon with the
    same query (the same ECOS sigma) is the same run."""
    query_sigma = ecos_sigma(epsilon, args.delta)

    def at(cell):
        if method == "manual" and stage == "finetune":
            return cell["ecos_sigma"] == query_sigma
        return cell["epsilon"] == epsilon

    return [c for c in cells if c["stage"] == stage and c["method"] == method and c["domain"] in domains
            and c["seed"] in args.seeds and at(c)]


def summary(cells: list[dict], args, epsilon: float = 1.0) -> list[str]:
    """Per client domain at total ``epsilon``: label and client accuracy of class_coverage and Private kNN beside
    manual labels of the same proxy, and class_coverage's fine-tuned gap to manual labels (paired by seed)."""
    def runs(method, domain, stage):
        return runs_at(cells, stage, method, epsilon, [domain], args)

    def value(method, domain, key, stage):
        values = [c[key] for c in runs(method, domain, stage)]
        return f"{_mean_std(values)} ({len(values)})" if values else "–"

    def gap(domain):
        manual = {c["seed"]: c["finetune_accuracy"] for c in runs("manual", domain, "finetune")}
        pairs = [manual[c["seed"]] - c["finetune_accuracy"] for c in runs("class_coverage", domain, "finetune")
                 if c["seed"] in manual]
        return f"{_mean_std(pairs)} ({len(pairs)})" if pairs else "–"

    lines = [f"### Summary at total epsilon {epsilon:g} (runs in brackets)", "",
             "| client domain | class_coverage label acc. | Private kNN label acc. | fine-tuned client acc.: "
             "class_coverage | Private kNN | manual labels | manual − class_coverage |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for domain in args.domains:
        lines.append(f"| {domain} | {value('class_coverage', domain, 'label_accuracy', 'labels')} | "
                     f"{value('private_knn', domain, 'label_accuracy', 'labels')} | "
                     + " | ".join(value(m, domain, "finetune_accuracy", "finetune")
                                  for m in ("class_coverage", "private_knn", "manual")) + f" | {gap(domain)} |")
    return lines + [""]


def plot(cells: list[dict], args, path: Path) -> None:
    """One row per client domain: auto-label accuracy, and client accuracy (probe: lines; fine-tune: stars)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2 * len(args.domains)), constrained_layout=True)
    colours = {m: f"C{i}" for i, m in enumerate(("manual", *METHODS))}

    def series(domain, method, key, stage):
        points = []
        for epsilon in EPSILONS:
            values = [c[key] for c in runs_at(cells, stage, method, epsilon, [domain], args)]
            if values:
                points.append((epsilon, np.mean(values) * 100, np.std(values) * 100))
        return points

    for row, domain in enumerate(args.domains):
        for col, (key, title) in enumerate((("label_accuracy", "auto-label accuracy"),
                                            ("probe_accuracy", "client accuracy"))):
            ax = fig.add_subplot(len(args.domains), 2, 2 * row + col + 1)
            for method in ("manual", *METHODS):
                points = series(domain, method, key, "labels")
                if points:
                    x, y, e = zip(*points)
                    ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2, color=colours[method], label=method)
                if col == 1 and (tuned := series(domain, method, "finetune_accuracy", "finetune")):
                    x, y, e = zip(*tuned)
                    ax.errorbar(x, y, yerr=e, marker="*", ms=11, ls="none", capsize=2, color=colours[method])
            ax.set_xscale("log")
            ax.set_xticks(EPSILONS, [f"{e:g}" for e in EPSILONS])
            ax.minorticks_off()
            ax.set_ylim(0, 100)
            ax.set_xlabel("total epsilon (delta 1e-5, PLD)")
            ax.set_ylabel("%")
            ax.set_title(f"{domain}: {title}" + (" (probe: lines, fine-tune: stars)" if col else ""), fontsize=9)
            if row == 0 and col == 0:
                ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=110)


def _mean_std(values) -> str:
    values = np.asarray(values, dtype=float) * 100
    return f"{values.mean():.1f} ± {values.std():.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(domains=["handwritten", "printed", "street"])
    parser.add_argument("--stage", choices=("labels", "finetune"), default="labels")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method of the stage")
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS), help="total epsilons")
    parser.add_argument("--finetune-epsilons", type=float, nargs="+", default=[1.0])
    parser.add_argument("--results", default="docs/private_labels", help="results of stage S go to <this>_S.json")
    parser.add_argument("--out", default="docs/private_labels")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    saved = {}
    for stage in ("labels", "finetune"):  # one file per stage: the two stages can run at once
        path = Path(f"{args.results}_{stage}.json")
        saved[stage] = json.loads(path.read_text()) if path.exists() else {"sigmas": {}, "cells": []}
    if not args.report_only:
        results = Path(f"{args.results}_{args.stage}.json")
        results.parent.mkdir(parents=True, exist_ok=True)
        run(args, saved[args.stage], results)
    report(saved["labels"]["cells"] + saved["finetune"]["cells"], args, Path(args.out))


def run(args, saved: dict, results: Path) -> None:
    data, style = digits_lite_features(args)
    args.pooling = "avg"
    _, avg = digits_lite_features(args)
    features = {"style": style, "avg": avg}
    finetune = args.stage == "finetune"
    methods = args.methods or (FINETUNE_METHODS if finetune else ("manual", *METHODS))
    epsilons = args.finetune_epsilons if finetune else args.epsilons
    done = {(c["stage"], c["method"], c["domain"], c["seed"], c["epsilon"]) for c in saved["cells"]}
    root = Path(args.cache_dir or Path.home() / ".cache/ecos_lightning") / "bench_private_labels"
    for epsilon in epsilons:
        for method in methods:
            key = f"{method}@{epsilon}"
            if method != "manual" and key not in saved["sigmas"]:
                saved["sigmas"][key] = label_sigma(method, epsilon, args.delta, args.budget)
                atomic_write_bytes(results, json.dumps(saved, indent=1).encode())
            for domain in args.domains:
                for seed in args.seeds:
                    if (args.stage, method, domain, seed, epsilon) in done:
                        continue
                    start = time.perf_counter()
                    cell, (proxy_idx, labels), split = make_cell(data, features, domain, seed, epsilon, method,
                                                                 saved["sigmas"].get(key), args)
                    test_idx = split.client_test_indices
                    if finetune:
                        cell["finetune_accuracy"] = finetune_accuracy(data, proxy_idx, labels, test_idx, seed, root)
                    else:
                        cell["probe_accuracy"] = probe_accuracy(avg, proxy_idx, labels, test_idx,
                                                                data.labels[test_idx])
                    cell.update(stage=args.stage, wall_s=time.perf_counter() - start)
                    saved["cells"].append(cell)
                    atomic_write_bytes(results, json.dumps(saved, indent=1).encode())
                    accuracy = cell.get("finetune_accuracy", cell.get("probe_accuracy"))
                    print(f"{args.stage} {method:28s} eps {epsilon:<4g} {domain:11s} seed {seed}: labels "
                          f"{cell['label_accuracy']:.3f} client {accuracy:.3f} (eps PLD {cell['epsilon_pld']:.3f}, "
                          f"RDP {cell['epsilon_rdp']:.3f}; {cell['wall_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
