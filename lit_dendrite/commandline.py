"""What every command-line parser of the project shares: no abbreviated options, and checked numbers.

Without ``allow_abbrev=False`` argparse and jsonargparse take a unique prefix for an option, so a mistyped
``--model.l 5`` silently set the learning rate and ``--batch 5`` the batch size.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from lit_dendrite.errors import ConfigError

PARSER_OPTIONS: dict[str, Any] = {"allow_abbrev": False}
"""Keyword arguments of every parser the project builds (argparse's and jsonargparse's)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are the project's (:func:`lit_dendrite.errors.run_command` prints them in the
    project's style) instead of a usage text and an exit."""

    def error(self, message: str) -> NoReturn:
        command = self.prog if self.prog.startswith("python") else f"python {self.prog}"
        raise ConfigError(message, f"see {command} --help")


def argument_parser(prog: str, description: str | None = None) -> ArgumentParser:
    """An argparse parser with the project's options."""
    return ArgumentParser(prog=prog, description=description, **PARSER_OPTIONS)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a batch size or image count of 0 would fail only later)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def directory(text: str) -> Path:
    """An argparse type: a directory to write into, which may not exist yet but must not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
    return path
