"""Imports point one way: the protocol, the ledger, the proxy record and the file helpers load neither
torch, timm nor Lightning; the two-machine commands never load Lightning; the library never imports
the Lightning adapters in ``datamodules/`` and ``callbacks/`` (installed as ``ecos_lightning.datamodules``
and ``ecos_lightning.callbacks``)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIGHTNING = ("pytorch_lightning", "lightning")
TORCH_FREE = ("ecos_lightning.protocol", "ecos_lightning.protocol.encoder_spec", "ecos_lightning.client.ledger",
              "ecos_lightning.proxy", "ecos_lightning.samplers", "ecos_lightning.label_sources",
              "ecos_lightning.proxy_file", "ecos_lightning.files", "ecos_lightning.protocol.knn_labels",
              "ecos_lightning.protocol.class_coverage", "ecos_lightning.components", "ecos_lightning.features.store",
              "ecos_lightning.protocol.fleet", "ecos_lightning.protocol.skellam", "ecos_lightning.fleet")
ADAPTERS = ("datamodules", "callbacks", "ecos_lightning.datamodules", "ecos_lightning.callbacks")
COMMANDS = ("ecos_lightning.commands.cloud", "ecos_lightning.commands.client")


def loaded_after_import(module: str, watched: tuple[str, ...]) -> list[str]:
    """The ``watched`` top-level packages in ``sys.modules`` after importing ``module`` in a fresh interpreter."""
    code = (f"import json, sys, {module}; "
            f"print(json.dumps(sorted(m for m in {list(watched)!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", TORCH_FREE)
def test_protocol_ledger_and_proxy_file_import_neither_torch_timm_nor_lightning(module):
    assert loaded_after_import(module, ("torch", "timm") + LIGHTNING) == []


def test_the_fleet_loads_flower_only_for_a_secure_round_on_it():
    assert loaded_after_import("ecos_lightning.fleet", ("flwr", "ray")) == []


@pytest.mark.parametrize("module", COMMANDS)
def test_the_commands_never_import_lightning(module):
    assert loaded_after_import(module, LIGHTNING) == []


def imported_modules(path: Path) -> set[str]:
    """Full names of every module ``path`` imports (absolute imports, anywhere in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_library_never_imports_the_lightning_adapters():
    offenders = {str(path.relative_to(ROOT)): sorted(name for name in imported_modules(path)
                                                     if any(name == a or name.startswith(a + ".") for a in ADAPTERS))
                 for path in sorted((ROOT / "ecos_lightning").rglob("*.py"))}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_every_package_is_installed_and_the_adapters_under_a_name_no_project_shadows():
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    library = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ecos_lightning").rglob("__init__.py")}
    assert set(setuptools["packages"]) == library | {"ecos_lightning.datamodules", "ecos_lightning.callbacks"}
    assert setuptools["package-dir"] == {"ecos_lightning.datamodules": "datamodules",
                                         "ecos_lightning.callbacks": "callbacks"}
    code = ("import ecos_lightning.datamodules as d, ecos_lightning.callbacks as c, importlib.util as u; "
            "print(d.__file__, c.__file__, u.find_spec('datamodules'), u.find_spec('callbacks'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [str(ROOT / "datamodules" / "__init__.py"), str(ROOT / "callbacks" / "__init__.py"),
                                   "None", "None"]
