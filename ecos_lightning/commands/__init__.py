"""Command-line tools that run ECOS across two machines: ``ecos-cloud`` and ``ecos-client``.

The machines exchange only files in the message container (``.ecos``). Every failure ends a command
with one ``error: ...`` line on stderr and exit status 2; outputs are written atomically, so a failed
command leaves no output behind.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from ..protocol.container import MAX_MESSAGE_BYTES, MessageError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one ``error: ...`` line (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Parse ``argv`` and run the chosen sub-command's ``func(args)``; errors -> one line, exit 2."""
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            args.func(args)
    except (ValueError, OSError, RuntimeError) as exc:  # MessageError is a ValueError
        text = str(exc).strip().splitlines()
        print(f"error: {text[0] if text else type(exc).__name__}", file=sys.stderr)
        sys.exit(2)


def read_message(cls, path: str | Path):
    """Read a message file: (``cls.from_bytes`` of it, its bytes). Checked against its kind's size limit before
    it is read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    limit = MAX_MESSAGE_BYTES[cls.KIND]
    if path.stat().st_size > limit:
        raise MessageError(f"{path}: larger than the size limit of a {cls.KIND} message ({limit:,} bytes)")
    blob = path.read_bytes()
    try:
        return cls.from_bytes(blob), blob
    except MessageError as exc:
        raise MessageError(f"{path}: {exc}") from None


def epsilon_text(epsilon: float | None) -> str:
    return "inf (not private)" if epsilon is None or math.isinf(epsilon) else f"{epsilon:.3f}"


def positive(cast: Callable) -> Callable:
    """argparse type: ``cast(text)`` that must be > 0."""
    def parse(text: str):
        value = cast(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = cast.__name__
    return parse


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)
