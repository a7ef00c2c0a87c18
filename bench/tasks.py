"""The paper's three tasks on digits-lite: client accuracy per sampler, with privacy, bytes and time.

Each cell (task, sampler, client domain, seed) trains with the same recipe, hyperparameters and
epochs for every sampler, then tests on the client's held-out data. Cells are appended to a JSON
file as they finish, so an interrupted run resumes where it stopped.

    python bench/tasks.py                          # 3 client domains x seeds 1-3 (about an hour on 2 CPU cores)
    python bench/tasks.py --all-domains            # the full 5-domain grid
    python bench/tasks.py --tasks finetune --domains handwritten --seeds 1
    python bench/tasks.py --report-only            # the report from the cells finished so far

Writes docs/tasks.md (table) and docs/tasks.png (bar chart).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl

from ecos_lightning.datamodules import Loaders, ProxyDataModule
from ecos_lightning.data import DOMAINS
from ecos_lightning.modules import AutoLabelModule, DistillModule, FineTuneModule
from ecos_lightning.protocol import noise_multiplier_for_epsilon
from ecos_lightning.samplers import get_sampler

SAMPLERS = {
    "finetune": ("ecos", "random", "kcenter", "upload", "local"),
    "distill": ("ecos", "random", "kcenter", "upload"),
    "autolabel": ("ecos", "random", "kcenter", "upload"),
}
LABEL_SOURCE = {"finetune": "manual", "distill": "none", "autolabel": "client_knn"}
RECIPE = {  # identical for every sampler of a task
    "finetune": dict(model_name="efficientnet_lite0", weights="offline", input_size=64, lr=2e-3,
                     backbone_lr_scale=0.5, epochs=5),
    "autolabel": dict(model_name="efficientnet_lite0", weights="offline", input_size=64, lr=2e-3,
                      backbone_lr_scale=0.5, epochs=5),
    "distill": dict(model_name="resnet10t", weights="none", input_size=32, lr=3e-3, epochs=15,
                    alpha=0.0, temperature=4.0),
}
TEACHER = dict(model_name="efficientnet_lite0", weights="offline", input_size=64, lr=2e-3, epochs=1)


def data_module(domain: str, seed: int, sampler: str, label_source: str, sigma: float, budget: int,
                cache: str) -> ProxyDataModule:
    return ProxyDataModule(dataset=f"digits-lite:{domain}:{seed}", seed=seed,
                           sampler=get_sampler(sampler, noise_multiplier=sigma), label_source=label_source,
                           budget=budget, cache_dir=cache, loaders=Loaders(batch_size=64, val_fraction=0.0))


def fit_and_test(module, dm, epochs: int, root: Path) -> float:
    trainer = pl.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return float(trainer.test(module, datamodule=dm, verbose=False)[0]["test_acc"])


def teacher_checkpoint(domain: str, seed: int, cache: str, root: Path) -> str:
    """A teacher fine-tuned on the labelled open pool of this split (cached as a Lightning checkpoint)."""
    path = root / "teachers" / f"{domain}-seed{seed}.ckpt"
    if not path.exists():
        dm = data_module(domain, seed, "full", "manual", 0.0, 1, cache)
        recipe = {k: v for k, v in TEACHER.items() if k != "epochs"}
        module = FineTuneModule(num_classes=10, **recipe)
        trainer = pl.Trainer(max_epochs=TEACHER["epochs"], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                             limit_val_batches=0)
        trainer.fit(module, datamodule=dm)
        path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(path)
    return str(path)


def run_cell(task: str, sampler: str, domain: str, seed: int, sigma: float, budget: int, cache: str,
             root: Path) -> dict:
    pl.seed_everything(seed, workers=True, verbose=False)
    start = time.perf_counter()
    recipe = dict(RECIPE[task])
    epochs = recipe.pop("epochs")
    label_source = "manual" if sampler == "local" else LABEL_SOURCE[task]
    dm = data_module(domain, seed, sampler, label_source, sigma, budget, cache)
    if task == "distill":
        module = DistillModule(num_classes=10, teacher_checkpoint=teacher_checkpoint(domain, seed, cache, root),
                               **recipe)
    elif task == "autolabel":
        module = AutoLabelModule(num_classes=10, **recipe)
    else:
        module = FineTuneModule(num_classes=10, **recipe)
    acc = fit_and_test(module, dm, epochs, root)
    info = dm.summary()
    return {"task": task, "sampler": sampler, "domain": domain, "seed": seed, "acc": acc,
            "epsilon": None if math.isinf(info["epsilon"]) else info["epsilon"],
            "epsilon_rdp": None if math.isinf(info["epsilon"]) else info["epsilon_rdp"], "bytes_down": info["bytes_down"],
            "bytes_up": info["bytes_up"], "label_accuracy": info.get("label_accuracy"),
            "wall_s": time.perf_counter() - start}


def report(cells: list[dict], tasks, out_md: Path, out_png: Path, header: str) -> None:
    lines = [header, "", "| task | sampler | client accuracy (mean ± std) | epsilon PLD / RDP | bytes down | bytes up | "
             "auto-label accuracy | wall s / run | runs |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    chart = {}
    for task in tasks:
        # compare samplers on the same (domain, seed) cells only: those every sampler has finished
        finished = [{(c["domain"], c["seed"]) for c in cells if c["task"] == task and c["sampler"] == s}
                    for s in SAMPLERS[task]]
        complete = set.intersection(*finished)
        for sampler in SAMPLERS[task]:
            rows = [c for c in cells if c["task"] == task and c["sampler"] == sampler
                    and (c["domain"], c["seed"]) in complete]
            if not rows:
                continue
            acc = np.array([r["acc"] for r in rows]) * 100
            eps = [r["epsilon"] for r in rows]
            rdp = [r.get("epsilon_rdp") for r in rows]  # cells of older runs may lack it
            eps_text = "inf" if any(e is None for e in eps) else f"{np.mean(eps):.3g} / " + (
                "–" if any(e is None for e in rdp) else f"{np.mean(rdp):.3g}")
            lab = [r["label_accuracy"] for r in rows if r["label_accuracy"] is not None]
            lab_text = f"{np.mean(lab) * 100:.1f}" if lab else "–"
            lines.append(f"| {task} | {sampler} | {acc.mean():.1f} ± {acc.std():.1f} | {eps_text} | "
                         f"{int(np.mean([r['bytes_down'] for r in rows])):,} | "
                         f"{int(np.mean([r['bytes_up'] for r in rows])):,} | {lab_text} | "
                         f"{np.mean([r['wall_s'] for r in rows]):.0f} | {len(rows)} |")
            chart.setdefault(task, {})[sampler] = (acc.mean(), acc.std())
    out_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * max(1, len(chart)), 3.6), constrained_layout=True)
    for i, (task, bars) in enumerate(chart.items()):
        ax = fig.add_subplot(1, len(chart), i + 1)
        names = list(bars)
        ax.bar(names, [bars[n][0] for n in names], yerr=[bars[n][1] for n in names], capsize=3,
               color=["tab:orange" if n == "ecos" else "tab:grey" for n in names])
        ax.set_title(task)
        ax.set_ylabel("client test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", rotation=30)
    fig.savefig(out_png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--domains", nargs="+", default=["handwritten", "printed", "street"], choices=DOMAINS)
    parser.add_argument("--all-domains", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--epsilon", type=float, default=0.5, help="epsilon of the ECOS query at delta 1e-5")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--results", default="docs/tasks_results.json")
    parser.add_argument("--out", default="docs/tasks")
    parser.add_argument("--report-only", action="store_true", help="write the report from the cells done so far")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    domains = list(DOMAINS) if args.all_domains else args.domains
    sigma = noise_multiplier_for_epsilon(args.epsilon, 1e-5)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    cells = json.loads(results.read_text()) if results.exists() else []
    root = Path(args.cache_dir or Path.home() / ".cache/ecos_lightning") / "bench_tasks"
    done = {(c["task"], c["sampler"], c["domain"], c["seed"]) for c in cells}
    grid = [(t, s, d, seed) for seed in args.seeds for d in domains for t in args.tasks for s in SAMPLERS[t]]
    for task, sampler, domain, seed in grid:  # seed-major: a partial run still covers every task
        if (task, sampler, domain, seed) in done or args.report_only:
            continue
        cell = run_cell(task, sampler, domain, seed, sigma, args.budget, args.cache_dir, root)
        cells.append(cell)
        results.write_text(json.dumps(cells, indent=1))
        print(f"{task:9s} {sampler:8s} {domain:11s} seed {seed}: acc {cell['acc']:.3f} ({cell['wall_s']:.0f} s)",
              flush=True)
    selected = [c for c in cells if c["domain"] in domains and c["seed"] in args.seeds]
    header = (f"digits-lite, budget {args.budget}, client domains {domains}, seeds {args.seeds}; ECOS query at "
              f"epsilon {args.epsilon} (sigma {sigma:.2f}), delta 1e-5; {len(selected)} of {len(grid)} cells finished. "
              f"Recipes: {RECIPE}; teacher {TEACHER}.")
    report(selected, args.tasks, Path(args.out + ".md"), Path(args.out + ".png"), header)


if __name__ == "__main__":
    main()
