"""train.py's command line: the default job is the base of a command that names no config."""

import subprocess
import sys
from pathlib import Path

import yaml

from ecos_lightning.cli import DEFAULT_CONFIG, with_default_config

ROOT = Path(__file__).resolve().parents[2]


def test_a_command_without_config_is_the_default_job_with_its_overrides():
    assert with_default_config([]) == ["fit", "--config", str(DEFAULT_CONFIG)]
    assert with_default_config(["fit", "--trainer.max_epochs", "1"]) == [
        "fit", "--config", str(DEFAULT_CONFIG), "--trainer.max_epochs", "1"]
    for named in (["fit", "--config", "x.yaml"], ["fit", "-c", "x.yaml"], ["fit", "--config=x.yaml"], ["--help"]):
        assert with_default_config(named) == named


def test_print_config_without_config_shows_the_default_job_with_the_override():
    proc = subprocess.run([sys.executable, "train.py", "fit", "--trainer.max_epochs", "1", "--print_config"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = yaml.safe_load(proc.stdout)
    default = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert config["model"]["class_path"] == default["model"]["class_path"]
    assert config["trainer"]["max_epochs"] == 1
    assert config["data"]["budget"] == default["data"]["budget"]
