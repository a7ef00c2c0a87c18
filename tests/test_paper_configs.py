"""The paper's configs end to end through train.py, on tiny trees in the published formats."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ecos_lightning.data import DIGITS5_DOMAINS
from ecos_lightning.data.domainnet import DOMAINNET_DOMAINS, PAPER_CLASSES
from published_formats import write_digits5, write_domainnet
from test_train import ROOT, error_lines, run_train

SMALL = ["--data.encoder_input_size", "32", "--data.image_size", "32", "--model.init_args.input_size", "32",
         "--data.num_clusters", "4", "--data.budget", "24", "--data.batch_size", "8", "--trainer.fast_dev_run", "true"]


@pytest.fixture(scope="module")
def domainnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("domainnet")
    write_domainnet(root, DOMAINNET_DOMAINS, PAPER_CLASSES, n_train=2, n_test=1)
    return root


@pytest.fixture(scope="module")
def digits5(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits5")
    write_digits5(root, n_train=20, n_test=10)
    return root


def paper(name):
    return ["--config", str(ROOT / "configs" / "paper" / f"{name}.yaml")]


@pytest.mark.parametrize("task", ["finetune", "autolabel"])
def test_a_domainnet_paper_config_runs_on_the_published_layout(task, domainnet, tmp_path):
    proc = run_train(["fit", *paper(f"{task}_domainnet"), *SMALL, "--data.dataset",
                      f"domainnet:client=sketch:seed=2:{domainnet}", "--data.cache_dir", str(tmp_path / "cache")],
                     tmp_path, str(tmp_path / "cache"))
    assert "client test accuracy" in proc.stdout
    summary = [line for line in proc.stdout.splitlines() if line.startswith("proxy domains")]
    assert summary and set(summary[0].split(":")[1].replace(",", " ").split()[::2]) <= set(DOMAINNET_DOMAINS)


def test_the_digits5_paper_config_runs_on_the_published_formats(digits5, tmp_path):
    proc = run_train(["fit", *paper("finetune_digits5"), *SMALL, "--data.dataset", f"digits5:client=usps:{digits5}",
                      "--data.cache_dir", str(tmp_path / "cache")], tmp_path, str(tmp_path / "cache"))
    assert "client test accuracy" in proc.stdout and "epsilon 0.528 at delta 1e-05 (PLD; RDP 0.579)" in proc.stdout


def test_missing_data_is_one_error_line_naming_the_file(tmp_path):
    proc = run_train(["fit", *paper("finetune_domainnet"), *SMALL, "--data.dataset", f"domainnet:{tmp_path / 'none'}"],
                     tmp_path, str(tmp_path / "cache"), check=False)
    errors = error_lines(proc)
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert str(tmp_path / "none") in errors[0] and "_train.txt" in errors[0]


def test_every_paper_config_uses_the_papers_privacy_and_classes():
    from ecos_lightning.protocol.privacy import gaussian_epsilon

    for path in sorted((ROOT / "configs" / "paper").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        assert config["model"]["init_args"]["num_classes"] == 10, path
        sampler = config["data"]["sampler"]
        if sampler != "full":
            assert sampler["class_path"] == "Ecos", path
            sigma = sampler["init_args"]["noise_multiplier"]
            assert gaussian_epsilon(sigma, 1e-5, accountant="rdp") == pytest.approx(0.58, abs=0.002), path


def load_script(name):
    """A script of the repository (``bench/paper.py``, ``train.py``) as a module."""
    spec = importlib.util.spec_from_file_location(f"script_{Path(name).stem}", ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_digits5_configs_and_the_grid_name_the_readers_domains():
    grid = load_script("bench/paper.py")
    assert grid.DOMAINS["digits5"] == DIGITS5_DOMAINS and grid.DOMAINS["domainnet"] == DOMAINNET_DOMAINS
    for path in sorted((ROOT / "configs" / "paper").glob("*_digits5.yaml")):
        named = re.search(r"digits5:client=<([^>]*)>", path.read_text()).group(1).split("|")
        assert tuple(named) == DIGITS5_DOMAINS, path


def test_the_paper_grid_runs_a_cell_of_every_digits5_domain(digits5, tmp_path, monkeypatch, capsys):
    """One finetune cell per client domain the grid names, train.py run in this process (no start-up per cell)."""
    grid, train_py = load_script("bench/paper.py"), load_script("train.py")

    def train_here(args, folder):
        folder.mkdir(parents=True)
        monkeypatch.chdir(folder)
        capsys.readouterr()
        train_py.main(["fit", *args])
        return capsys.readouterr().out

    monkeypatch.setattr(grid, "train", train_here)
    args = SimpleNamespace(dataset="digits5", root=str(digits5), work=tmp_path, trainer=None)
    for domain in grid.DOMAINS["digits5"]:
        cell = grid.run_cell(dict(task="finetune", sampler="ecos", domain=domain, seed=1, budget=24), args,
                             [*SMALL, "--data.unlabelled_batch_size", "8"])
        assert 0.0 <= cell["acc"] <= 1.0 and cell["epsilon"] == pytest.approx(0.528, abs=1e-3), domain


def test_the_paper_grid_refuses_a_domain_the_reader_does_not_know(digits5, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "paper.py"), "--dataset", "digits5", "--root",
                           str(digits5), "--domains", "synth", "--work", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown digits5 domains ['synth']" in proc.stderr
    assert "synthdigits" in proc.stderr and not list(tmp_path.iterdir())


def test_the_paper_grid_runs_a_cell_resumes_and_reports(digits5, tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "paper.py"), "--dataset", "digits5", "--root", str(digits5),
               "--tasks", "finetune", "--samplers", "ecos", "--domains", "usps", "--seeds", "1", "--budgets", "24",
               "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results.json"),
               "--out", str(tmp_path / "paper.md"), "--", *SMALL]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
    cell, = json.loads((tmp_path / "results.json").read_text())
    assert cell["task"] == "finetune" and cell["sampler"] == "ecos" and 0.0 <= cell["acc"] <= 1.0
    assert cell["epsilon"] == pytest.approx(0.528, abs=1e-3) and cell["epsilon_rdp"] == pytest.approx(0.579, abs=1e-3)
    again = subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)  # nothing left to run
    assert "acc " not in again.stdout and len(json.loads((tmp_path / "results.json").read_text())) == 1
    assert "| finetune | 24 | ecos |" in (tmp_path / "paper.md").read_text()
