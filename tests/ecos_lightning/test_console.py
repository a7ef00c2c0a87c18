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
