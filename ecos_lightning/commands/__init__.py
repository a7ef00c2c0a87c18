"""Command-line tools that run ECOS across two machines: ``ecos-cloud`` and ``ecos-client``.

The machines exchange only files in the message container (``.ecos``). Every failure ends a command
with one ``error: ...`` line on stderr and exit status 2; outputs are written atomically, so a failed
command leaves no output behind.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from ..protocol.container import MAX_HEADER_BYTES, MAX_MESSAGE_BYTES, MessageError, message_kind


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


def read_kind(path: str | Path) -> str:
    """The kind of the message file ``path`` (its prefix and header only; see ``container.message_kind``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(64 + MAX_HEADER_BYTES)
    try:
        return message_kind(head)
    except MessageError as exc:
        raise MessageError(f"{path}: {exc}") from None


def add_settings(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable): a parameter of the component (sampler or label source), its value read as JSON."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter of the component, the value as JSON writes it, a bare word a string "
                        "(e.g. --set k=20, --set clusters=[10,20], --set within_cluster=nearest); repeatable")


def parse_settings(items: list[str]) -> dict:
    """``["k=20", "clusters=[10, 20]", "rule=nearest"]`` -> ``{"k": 20, "clusters": [10, 20], "rule": "nearest"}``.

    A value is JSON (numbers as JSON writes them: ``1e-3``, ``20``; ``true``, ``null``, lists), else a bare
    word taken as a string; a number JSON does not read (``010``, ``0x14``, ``1:30``, ``NaN``), a key given
    twice or a malformed item is a ``ValueError``."""
    settings = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--set {item!r}: write KEY=VALUE with KEY a parameter name")
        if key in settings:
            raise ValueError(f"--set {key} is given twice: give each parameter once")
        try:
            settings[key] = json.loads(text, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError):
            if not re.fullmatch(r"[A-Za-z_][\w.-]*", text):
                raise ValueError(f"--set {item!r}: the value is neither JSON (e.g. 20, 1e-3, [10, 20], true) nor a "
                                 "bare word") from None
            settings[key] = text
    return settings


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


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
