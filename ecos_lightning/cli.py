"""The training entry point on LightningCLI: ``python train.py fit --config configs/<task>.yaml``.

Bare ``python train.py`` runs the main job: ECOS + fine-tuning on digits-lite, then the test on the
client's held-out data, then a short summary.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from pytorch_lightning.cli import LightningCLI

from datamodules import ProxyDataModule
from ecos_lightning.modules import ClassifierModule
from ecos_lightning.protocol import MessageError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_ARGS = ["fit", "--config", str(CONFIG_DIR / "finetune_digits.yaml")]


class EcosCLI(LightningCLI):
    """LightningCLI with ``--test_after_fit``: test the best checkpoint on the client's data after fit."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, test the best checkpoint on the client's held-out data")

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit"):
            return
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)
        if self.trainer.is_global_zero:
            print(format_summary(self.datamodule, results[0] if results else {}, best, self.trainer.log_dir))


def format_summary(datamodule: ProxyDataModule, metrics: dict, checkpoint: str | None, log_dir: str | None) -> str:
    """A few lines for the terminal: accuracy, privacy, bytes, proxy composition, where things are."""
    info = datamodule.summary()
    epsilon = "inf (not private)" if math.isinf(info["epsilon"]) else f"{info['epsilon']:.3f}"
    lines = [
        "",
        "== ECOS run summary ==",
        f"client test accuracy : {metrics.get('test_acc', float('nan')):.4f}",
        f"privacy              : epsilon {epsilon} at delta {info['delta']:g}",
        f"bytes down / up      : {info['bytes_down']:,} / {info['bytes_up']:,}",
        f"proxy                : {info['size']} images from sampler '{info['sampler']}'",
    ]
    if "domains" in info:
        lines.append("proxy domains        : " + ", ".join(f"{k} {v}" for k, v in info["domains"].items() if v))
    if info.get("label_accuracy") is not None:
        lines.append(f"auto-label accuracy  : {info['label_accuracy']:.4f}")
    lines += [f"checkpoint           : {checkpoint}", f"logs                 : {log_dir}"]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> EcosCLI | None:
    """Run the CLI (``args`` default: the command line); bad input ends with one ``error:`` line, exit 2."""
    if args is None and len(sys.argv) <= 1:
        args = DEFAULT_ARGS
    try:
        return EcosCLI(ClassifierModule, ProxyDataModule, subclass_mode_model=True,
                       save_config_kwargs={"overwrite": True}, args=args)
    except (ValueError, FileNotFoundError, MessageError) as exc:
        print(f"error: {root_message(exc)}", file=sys.stderr)
        sys.exit(2)


def root_message(exc: BaseException) -> str:
    """First line of the innermost cause: the message our code raised, not the parser's wrapper."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
