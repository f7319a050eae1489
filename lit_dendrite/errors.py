"""The project's errors and the one way every command reports them.

A :class:`ProjectError` is a problem with what a user gave (a configuration key, a file, a run directory), not a
bug: its message says what is wrong, naming the key or file, and its ``fix`` what to do. Every command
(``launch/train.py``, ``launch/evaluate.py``, ``launch/sweep.py``, ``python -m lit_dendrite.data.corrupt``) runs
through :func:`run_command`, which prints such an error as ``error: <what>`` and the fix on the next line and exits
with status 2; a traceback only with ``LIT_DENDRITE_DEBUG=1`` in the environment. Anything else is a bug and keeps
its traceback. This module imports nothing of the project, so that every package may use it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import TypeVar

DEBUG_VARIABLE = "LIT_DENDRITE_DEBUG"
"""Set to 1 to see the traceback of an error a command reports in one line."""
EXIT_STATUS = 2
T = TypeVar("T")


class ProjectError(Exception):
    """A problem with the user's input: the message names the key or file, ``fix`` says what to do about it."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


class ConfigError(ProjectError, ValueError):
    """A configuration key or command-line option has a value the project cannot use."""


class DataError(ProjectError, ValueError):
    """A data file is missing, damaged or not what its data set should hold."""


class MissingFile(ProjectError, FileNotFoundError):
    """A file or directory the command needs does not exist."""


class RecordError(ProjectError, ValueError):
    """A run record, robustness file or checkpoint cannot be read or holds values of the wrong kind."""


class UntrustedInput(ProjectError, ValueError):
    """A file asks for something that reading it never does (unpickling objects, building a class outside the
    allow-list); the message names the file and what was refused."""


class ResourceError(ProjectError, RuntimeError):
    """The machine cannot provide what a configuration asks for (a device, memory)."""


def debugging() -> bool:
    """Whether the user asked for tracebacks (:data:`DEBUG_VARIABLE`)."""
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def _parser_message(error: argparse.ArgumentError) -> str:
    """An argparse / jsonargparse error as one line: ``Parser key "model.lr": Expected a <class 'float'>. Got value:
    nan`` becomes ``--model.lr: expected a float, got value: nan``."""
    text = " ".join(str(error).split())
    text = re.sub(r"""Parser key "([^"]+)":\s*""", r"--\1: ", text)
    text = re.sub(
        r"Call to compute_fn of link '[^(]*\(([\w.]+)\) --> [^']*' with args \([^)]*\) failed: ", r"--\1: ", text
    )
    text = re.sub(r"<class '(\w+)'>", r"\1", text)
    return text.replace("Expected", "expected").replace(". Got", ", got")


def error_lines(error: BaseException, usage: str) -> list[str]:
    """What a command prints for ``error``: ``error: <what>`` and, where known, the fix."""
    if isinstance(error, ProjectError):
        what, fix = str(error), error.fix
    else:
        what, fix = _parser_message(error), f"see {usage} --help"
    lines = [f"error: {what}"]
    return [*lines, fix] if fix else lines


def run_command(command: Callable[[], T], usage: str) -> T:
    """Run a command's ``main``; report a :class:`ProjectError` or an argument error as described in the module
    (``usage`` names the command, e.g. ``python launch/train.py``) and exit with :data:`EXIT_STATUS`."""
    try:
        return command()
    except (ProjectError, argparse.ArgumentError) as error:
        if debugging():
            raise
        print("\n".join(error_lines(error, usage)), file=sys.stderr)
        raise SystemExit(EXIT_STATUS) from None
