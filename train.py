"""Train on an ECOS proxy set: the LightningCLI entry point, ``python train.py fit --config configs/<task>.yaml``.

Bare ``python train.py`` runs the main job: ECOS + fine-tuning on digits-lite, then the test on the
client's held-out data, then a short summary. A subcommand without ``--config`` starts from that job:
``python train.py fit --trainer.max_epochs 1`` is the main job with one override.
"""

from __future__ import annotations

import importlib
import math
import sys
import traceback
from argparse import ArgumentError
from pathlib import Path
from types import ModuleType

import pytorch_lightning
import yaml

from ecos_lightning.callbacks.proxy_report import labelled_text
from ecos_lightning.datamodules import ProxyDataModule
from ecos_lightning.frameworks import bases, unified

ROOT = Path(__file__).resolve().parent
SOURCES = tuple(str(ROOT / name) for name in ("ecos_lightning", "datamodules", "callbacks", "train.py"))
CONFIG_DIR = ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "finetune_digits.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class SaveConfigOnStart:
    """Writes ``config.yaml`` when the first loop starts, after every check of the run has passed,
    so a refused run leaves no config behind (mixed into the framework's ``SaveConfigCallback``)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        pass

    def _save(self, trainer, pl_module) -> None:
        super().setup(trainer, pl_module, trainer.state.fn)

    def on_train_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)


class EcosCLI:
    """LightningCLI with ``--test_after_fit`` (test the best checkpoint on the client's data after
    fit) and parse errors raised rather than printed with the usage (mixed into the framework's
    ``LightningCLI`` by :func:`cli_class`). ``--ckpt_path`` goes to the trainer as Lightning's own CLI
    passes it: the data module takes a resumed run's proxy from the checkpoint the trainer restores."""

    def init_parser(self, **kwargs):
        return super().init_parser(exit_on_error=False, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, test the best checkpoint on the client's held-out data")

    def add_core_arguments_to_parser(self, parser) -> None:
        """The trainer of this CLI's framework, a model of either Lightning package (the default job's
        model, which a ``--model`` override replaces, is checked before that override) and the data module."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_subclass_arguments(bases("LightningModule"), "model", fail_untyped=False, required=True)
        parser.add_lightning_class_args(self.datamodule_class, "data")

    def parse_arguments(self, parser, args) -> None:
        """Parse ``args``: the command line, with the default config filled in (hence given explicitly,
        which needs no warning about ``sys.argv``)."""
        self.config = parser.parse_args(args)

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit"):
            return
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)
        log_dir = self.trainer.log_dir  # a collective: every rank reads it
        if self.trainer.is_global_zero:
            print(format_summary(self.datamodule, results[0] if results else {}, best, log_dir))


def format_summary(datamodule: ProxyDataModule, metrics: dict, checkpoint: str | None, log_dir: str | None) -> str:
    """A few lines for the terminal: accuracy, privacy, bytes, proxy composition, where things are."""
    proxy, info = datamodule.proxy, datamodule.summary()
    epsilon = "inf (not private)" if math.isinf(proxy.epsilon) else f"{proxy.epsilon:.3f}"
    rdp = "" if proxy.epsilon_rdp is None or math.isinf(proxy.epsilon) else f" (PLD; RDP {proxy.epsilon_rdp:.3f})"
    lines = [
        "",
        "== ECOS run summary ==",
        f"client test accuracy : {metrics.get('test_acc', float('nan')):.4f}",
        f"privacy              : epsilon {epsilon} at delta {proxy.delta:g}{rdp}",
        f"bytes down / up      : {proxy.bytes_down:,} / {proxy.bytes_up:,}",
        f"proxy                : {len(proxy)} images from sampler '{info['sampler']}'",
    ]
    if "domains" in info:
        lines.append("proxy domains        : " + ", ".join(f"{k} {v}" for k, v in info["domains"].items() if v))
    if info.get("label_accuracy") is not None:
        lines.append(f"auto-label accuracy  : {info['label_accuracy']:.4f}{labelled_text(info)}")
    lines += [f"checkpoint           : {checkpoint}", f"logs                 : {log_dir}"]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> EcosCLI | None:
    """Run the CLI (``args`` default: the command line).

    Bad input (a bad option or value, a refused setting, a missing or unreadable file, a bad
    message, a failed check of this package's) ends with one ``error:`` line and exit code 2.
    """
    args = with_default_config(sys.argv[1:] if args is None else list(args))
    try:
        framework = model_framework(args)
        cli, save_config = cli_class(framework)
        return cli(None, ProxyDataModule, save_config_callback=save_config,
                   save_config_kwargs={"overwrite": True}, args=args)
    except (ValueError, OSError, ArgumentError) as exc:  # a MessageError is a ValueError
        fail(exc)
    except RuntimeError as exc:
        if not raised_here(exc):
            raise
        fail(exc)


def cli_class(framework: ModuleType) -> tuple[type, type]:
    """``EcosCLI`` and ``SaveConfigOnStart`` over ``framework``'s (``pytorch_lightning`` or
    ``lightning.pytorch``) own ``LightningCLI`` and ``SaveConfigCallback``: its Trainer takes only its
    own package's modules and callbacks."""
    cli = importlib.import_module(f"{framework.__name__}.cli")
    return (type("EcosCLI", (EcosCLI, cli.LightningCLI), {}),
            type("SaveConfigOnStart", (SaveConfigOnStart, cli.SaveConfigCallback), {}))


def model_framework(args: list[str]) -> ModuleType:
    """The Lightning package the run's model is built on: ``lightning.pytorch`` for a module of the
    unified ``lightning`` package, else ``pytorch_lightning`` (also when the model cannot be resolved
    here: the parser then names the problem).

    The model's class is the last one the arguments name: ``--model <class>``,
    ``--model.class_path <class>`` or ``model:`` in a ``--config`` file.
    """
    class_path = None
    for option, value in zip(args, args[1:] + [None]):
        option, inline, given = option.partition("=")
        value = given if inline else value
        if option in ("-c", "--config") and value:
            class_path = _config_model(value) or class_path
        elif option in ("--model", "--model.class_path") and value and not value.endswith((".yaml", ".yml")):
            class_path = value
        elif option == "--model" and value:
            class_path = _config_model(value, nested=False) or class_path
    module_class = _import_class(class_path)
    if unified is not None and isinstance(module_class, type) and issubclass(module_class, unified.LightningModule) \
            and not issubclass(module_class, pytorch_lightning.LightningModule):
        return unified
    return pytorch_lightning


def _config_model(path: str, nested: bool = True) -> str | None:
    """The model class a YAML config (``model:`` inside it when ``nested``) names, if any."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    model = config.get("model") if nested and isinstance(config, dict) else config
    if isinstance(model, dict):
        model = model.get("class_path")
    return model if isinstance(model, str) else None


def _import_class(class_path: str | None):
    module_name, _, name = (class_path or "").rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name) if module_name else None
    except (ImportError, AttributeError):
        return None


def with_default_config(args: list[str]) -> list[str]:
    """``args`` with the default job's config as the base when they name none.

    No arguments run the default job (``fit``); a subcommand without ``--config`` gets the default
    config right after it, so ``train.py fit --trainer.max_epochs 1`` is the default job with that
    override and ``train.py fit --print_config`` shows it.
    """
    if not args:
        return ["fit", "--config", str(DEFAULT_CONFIG)]
    named = any(a in ("-c", "--config") or a.startswith("--config=") for a in args[1:])
    if args[0] in SUBCOMMANDS and not named:
        return [args[0], "--config", str(DEFAULT_CONFIG), *args[1:]]
    return args


def fail(exc: BaseException) -> None:
    print(f"error: {root_message(exc)}", file=sys.stderr)
    sys.exit(2)


def raised_here(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by this package's own code (not by a library it calls)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(SOURCES)


def root_message(exc: BaseException) -> str:
    """First line of the innermost cause: the message our code raised, not the parser's wrapper.

    A parse error keeps the parser's first line, which names the option, and points to ``--help``.
    """
    root = exc
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    text = _first_line(root)
    if isinstance(exc, ArgumentError):
        head = _first_line(exc).rstrip(":")
        return (text if head == text else f"{head}: {text}") + " (options: --help)"
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


if __name__ == "__main__":
    main()
