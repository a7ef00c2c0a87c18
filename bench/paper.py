"""The ECOS paper's grid on real data: tasks x samplers x client domains x seeds, through train.py.

Each cell runs ``train.py fit`` with the paper config of its task (``configs/paper/<task>_<dataset>.yaml``)
in a folder of its own, on ``<dataset>:client=<domain>:seed=<seed>:<root>``, and keeps the run summary
(client test accuracy, epsilon PLD and RDP, bytes). Distillation first trains the teacher of its
(domain, seed) with the teacher config. Cells are appended to a JSON file as they finish, so an
interrupted grid resumes where it stopped; ``--report-only`` writes the report from the cells so far.

    python bench/paper.py --dataset domainnet --root /data/domainnet                 # the full grid (GPU)
    python bench/paper.py --dataset domainnet --root /data/domainnet --tasks finetune --domains real --seeds 1
    python bench/paper.py --dataset digits5 --root /data/digits5 --report-only
    python bench/paper.py ... --trainer configs/trainer/gpu.yaml -- --trainer.max_epochs 5   # extra train.py options

Writes docs/paper.md (ours beside the paper's numbers) and docs/paper_results.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from ecos_lightning.data import DIGITS5_DOMAINS, DOMAINNET_DOMAINS

ROOT = Path(__file__).resolve().parent.parent
#: The client domains of each dataset: the readers' own names (what ``client=`` takes).
DOMAINS = {"domainnet": DOMAINNET_DOMAINS, "digits5": DIGITS5_DOMAINS}
SAMPLERS = {"finetune": ("ecos", "random", "kcenter", "local"), "distill": ("ecos", "random", "kcenter"),
            "autolabel": ("ecos", "random", "kcenter")}
#: The paper's client accuracy (%), DomainNet-10, average of its 6 domains (Hong et al., NeurIPS 2022).
PAPER = {("finetune", 1000): {"ecos": 82.5, "random": 79.9, "kcenter": 72.0, "local": 80.6},
         ("distill", 1000): {"ecos": 78.6, "random": 76.4, "kcenter": 70.8},
         ("autolabel", 3000): {"ecos": 43.2, "random": 40.4, "kcenter": 42.0},
         ("finetune", 3000): {"ecos": 86.7, "random": 85.1, "kcenter": 81.6},
         ("distill", 3000): {"ecos": 83.5, "random": 81.6, "kcenter": 78.1}}
SUMMARY = {"acc": r"client test accuracy : ([0-9.]+)",
           "epsilon": r"privacy +: epsilon ([0-9.]+|inf)",
           "epsilon_rdp": r"\(PLD; RDP ([0-9.]+)\)",
           "bytes_down": r"bytes down / up +: ([0-9,]+) /",
           "bytes_up": r"bytes down / up +: [0-9,]+ / ([0-9,]+)"}


def train(args: list[str], folder: Path) -> str:
    """Run ``train.py fit`` in ``folder`` (its runs/ land there); its stdout, or SystemExit with its error."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", *args], cwd=folder, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed in {folder}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def summary_of(stdout: str) -> dict:
    """The figures of a train.py run summary."""
    out = {}
    for key, pattern in SUMMARY.items():
        match = re.search(pattern, stdout)
        value = match.group(1).replace(",", "") if match else None
        out[key] = None if value in (None, "inf") else float(value)
    return out


def run_cell(cell: dict, args, extra: list[str]) -> dict:
    task, sampler, domain, seed = cell["task"], cell["sampler"], cell["domain"], cell["seed"]
    source = ["--data.dataset", f"{args.dataset}:client={domain}:seed={seed}:{Path(args.root).resolve()}"]
    common = ["--seed_everything", str(seed), "--data.seed", str(seed), "--data.cache_dir", str(args.work / "cache"),
              *(["--trainer", str(Path(args.trainer).resolve())] if args.trainer else [])]
    # the configs' own sampler is ECOS with the paper's noise: name another one only
    chosen = [] if sampler == "ecos" else ["--data.sampler", sampler]
    options = [*source, *common, *chosen, "--data.budget", str(cell["budget"]), *extra]
    if task == "distill":
        teacher_dir = args.work / "teachers" / f"{domain}-seed{seed}"
        teacher = teacher_dir / f"runs/paper/teacher_{args.dataset}/checkpoints/last.ckpt"
        if not teacher.exists():
            train(["--config", str(ROOT / f"configs/paper/teacher_{args.dataset}.yaml"), *source, *common, *extra],
                  teacher_dir)
        options += ["--model.init_args.teacher_checkpoint", str(teacher)]
    folder = args.work / "cells" / f"{task}-{sampler}-{domain}-seed{seed}-B{cell['budget']}"
    stdout = train(["--config", str(ROOT / f"configs/paper/{task}_{args.dataset}.yaml"), *options], folder)
    return {**cell, **summary_of(stdout)}


HOW_TO_RUN = """How to run (the data on disk in its published layout, never downloaded; see the data sources table in
the README): `python bench/paper.py --dataset domainnet --root /data/domainnet --trainer configs/trainer/gpu.yaml`
runs every cell (6 client domains x seeds 1-3 x tasks x samplers, about 200 train.py runs; resumable), then
rewrites this page. `--tasks`, `--samplers`, `--domains`, `--seeds`, `--budgets` pick a part of the grid; options
after `--` go to every train.py run."""


def report(cells: list[dict], dataset: str, header: str) -> str:
    """The markdown table: every (task, budget) the paper reports or the cells hold, ours beside the paper's."""
    lines = [header, "", HOW_TO_RUN, "", "| task | B | sampler | ours: client accuracy % (mean ± std) | paper | runs | "
             "epsilon PLD / RDP |", "|---|---:|---|---:|---:|---:|---:|"]
    paper = PAPER if dataset == "domainnet" else {}
    for task, budget in sorted(set(paper) | {(c["task"], c["budget"]) for c in cells}):
        group = [c for c in cells if c["task"] == task and c["budget"] == budget]
        # compare samplers on the (domain, seed) cells every sampler has finished
        finished = [{(c["domain"], c["seed"]) for c in group if c["sampler"] == s} for s in {c["sampler"] for c in group}]
        complete = set.intersection(*finished) if finished else set()
        for sampler in SAMPLERS[task]:
            rows = [c for c in group if c["sampler"] == sampler and (c["domain"], c["seed"]) in complete]
            theirs = paper.get((task, budget), {}).get(sampler)
            if not rows and theirs is None:
                continue
            acc = np.array([r["acc"] for r in rows]) * 100
            eps = [r["epsilon"] for r in rows]
            privacy = "–" if not rows or any(e is None for e in eps) else \
                f"{np.mean(eps):.3g} / {np.mean([r['epsilon_rdp'] for r in rows]):.3g}"
            ours = f"{acc.mean():.1f} ± {acc.std():.1f}" if rows else "not run"
            lines.append(f"| {task} | {budget} | {sampler} | {ours} | {'–' if theirs is None else theirs} | "
                         f"{len(rows)} | {privacy} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=list(DOMAINS), required=True)
    parser.add_argument("--root", required=True, help="the dataset's folder, in its published layout")
    parser.add_argument("--tasks", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--domains", nargs="+", help="client domains (default: all of the dataset's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--samplers", nargs="+", help="default: every sampler of each task")
    parser.add_argument("--budgets", type=int, nargs="+", help="default: 1000 (3000 for autolabel), as in the paper")
    parser.add_argument("--trainer", help="a trainer preset, e.g. configs/trainer/gpu.yaml")
    parser.add_argument("--work", type=Path, default=Path("bench_paper"), help="runs, teachers and feature cache")
    parser.add_argument("--results", type=Path, default=ROOT / "docs/paper_results.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/paper.md")
    parser.add_argument("--report-only", action="store_true")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    args.work = args.work.resolve()
    domains = args.domains or DOMAINS[args.dataset]
    unknown = [d for d in domains if d not in DOMAINS[args.dataset]]
    if unknown:
        parser.error(f"unknown {args.dataset} domains {unknown}: choose among {' '.join(DOMAINS[args.dataset])}")
    cells = json.loads(args.results.read_text()) if args.results.exists() else []
    done = {(c["task"], c["sampler"], c["domain"], c["seed"], c["budget"]) for c in cells}
    grid = [dict(task=t, sampler=s, domain=d, seed=seed, budget=b) for seed in args.seeds for d in domains
            for t in args.tasks for b in (args.budgets or [3000 if t == "autolabel" else 1000]) for s in SAMPLERS[t]
            if not args.samplers or s in args.samplers]
    for cell in grid:  # seed-major: a partial grid still covers every task
        if args.report_only or tuple(cell.values()) in done:
            continue
        cells.append(run_cell(cell, args, extra))
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(cells, indent=1))
        print(f"{cell['task']:9s} {cell['sampler']:8s} {cell['domain']:10s} seed {cell['seed']} B={cell['budget']}: "
              f"acc {cells[-1]['acc']:.4f}", flush=True)
    selected = [c for c in cells if c["domain"] in domains and c["seed"] in args.seeds and c["task"] in args.tasks]
    header = (f"# ECOS paper grid: {args.dataset}\n\nClient test accuracy on each client domain's official test split, "
              f"mean over client domains {list(domains)} and seeds {args.seeds} ({len(selected)} of {len(grid)} "
              f"cells finished); configs `configs/paper/<task>_{args.dataset}.yaml` (extra options: "
              f"{' '.join(extra) or 'none'}). 'paper': Hong et al. (NeurIPS 2022), DomainNet-10, average of 6 domains.")
    text = report(selected, args.dataset, header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
