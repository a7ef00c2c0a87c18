"""The project's INFO records reach the console from rank zero, as Lightning's own do."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, sys
from pytorch_lightning.utilities.rank_zero import rank_zero_only
rank_zero_only.rank = int(sys.argv[1])
import ecos_lightning.datamodules  # the Lightning layer shows the project's records
logging.getLogger("ecos_lightning.protocol.cloud").info("selection: kept 3/10 clusters")
logging.getLogger("ecos_lightning.protocol.cloud").debug("not shown")
"""


def run(rank: int, configure: str = "") -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", configure + SCRIPT, str(rank)], capture_output=True, text=True,
                            env=env, timeout=300, check=True)
    return result.stderr


def test_info_records_show_on_rank_zero_only():
    assert run(0).strip().splitlines() == ["selection: kept 3/10 clusters"]
    assert "selection" not in run(1)


def test_an_application_that_configures_logging_gets_the_records_through_its_handlers():
    text = run(0, "import logging; logging.basicConfig(format='APP %(name)s %(message)s', level=logging.INFO)\n")
    assert text.strip().splitlines() == ["APP ecos_lightning.protocol.cloud selection: kept 3/10 clusters"]


SPAWN = """
import torch
import pytorch_lightning as pl
from torch.utils.data import TensorDataset
from ecos_lightning.datamodules import ProxyDataModule
from train_helpers import CountingModel

if __name__ == "__main__":
    images = torch.rand(90, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    dm = ProxyDataModule(open_dataset=TensorDataset(images, torch.arange(90) % 4),
                         client_dataset=TensorDataset(images[:30], torch.arange(30) % 4), encoder_input_size=32,
                         num_clusters=2, budget=20, image_size=16, batch_size=4, num_workers=0, cache_dir=CACHE)
    pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
               enable_checkpointing=False, enable_progress_bar=False).fit(CountingModel(), datamodule=dm)
"""


def test_the_protocol_lines_of_processes_ddp_spawn_starts_are_shown_once(tmp_path):
    script = tmp_path / "spawn.py"
    script.write_text(SPAWN.replace("CACHE", repr(str(tmp_path / "cache"))))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len([line for line in lines if line.startswith("selection: kept")]) == 1
    assert len([line for line in lines if line.startswith("proxy artifact written")]) == 1
