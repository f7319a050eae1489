"""The layout of a run directory: every file name, and the one resolved spelling of the directory."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
FAILED_RESULT_FILE = "result.failed.json"
STALLED_RESULT_FILE = "result.stalled.json"
SESSION_FILE = "session.json"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_SUFFIX = ".ckpt"
LAST_CHECKPOINT = "last"
BEST_CHECKPOINT = "best"
PRETRAIN, JOINT, FROZEN = "I_pretrain", "II_joint", "III_frozen"
SESSIONS = (PRETRAIN, JOINT, FROZEN)
PRETRAINED_INNER_FILE = "inner.pt"
BEST_INNER_FILE = "inner_best.pt"
ROBUSTNESS_FILE = "robustness.json"
ROBUSTNESS_DIR = "robustness"
SEARCH_DIR = "search"  # a sweep's hyperparameter search: its studies and trial run directories (not compared)
PARTIAL_FILE = "partial.json"
EVALUATION_ERROR_FILE = "error.json"
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
SET_ASIDE_MARK = ".corrupt-"


def resolve_run_dir(path: str | Path) -> Path:
    """The one spelling of a run directory used everywhere: ``~`` expanded, absolute, symlinks resolved."""
    return Path(path).expanduser().resolve()


@dataclass(frozen=True)
class SessionDir:
    """The files of one session of a run."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def summary(self) -> Path:
        return self.path / SESSION_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / f"{LAST_CHECKPOINT}{CHECKPOINT_SUFFIX}"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / f"{BEST_CHECKPOINT}{CHECKPOINT_SUFFIX}"

    def read_summary(self) -> dict[str, Any] | None:
        """The finished session's summary, or None while it has not finished."""
        return json.loads(self.summary.read_text()) if self.summary.is_file() else None


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (always resolved, see :func:`resolve_run_dir`)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", resolve_run_dir(self.path))

    @property
    def result(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def config(self) -> Path:
        """The configuration the run directory holds, written when its first session starts."""
        return self.path / CONFIG_FILE

    @property
    def lock(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def failed_result(self) -> Path:
        """Where a failed job's record is set aside when the sweep submits the run again."""
        return self.path / FAILED_RESULT_FILE

    @property
    def stalled_result(self) -> Path:
        """Where a stalled run's record is set aside when a sweep is asked to train it again (--retry-stalled)."""
        return self.path / STALLED_RESULT_FILE

    def session(self, name: str) -> SessionDir:
        return SessionDir(self.path / name)

    def retry_stalled(self) -> None:
        """Make a stalled run trainable again: its record set aside, the session that stalled (the one without a
        summary) removed so that it starts afresh; the sessions it finished are kept."""
        for name in SESSIONS:
            session = self.session(name)
            if session.path.is_dir() and not session.summary.is_file():
                shutil.rmtree(session.path)
        self.result.replace(self.stalled_result)

    @property
    def pretrained_inner(self) -> Path:
        return self.session(PRETRAIN).path / PRETRAINED_INNER_FILE

    @property
    def best_inner(self) -> Path:
        return self.session(JOINT).path / BEST_INNER_FILE

    @property
    def robustness(self) -> Path:
        return self.path / ROBUSTNESS_FILE

    @property
    def robustness_dir(self) -> Path:
        return self.path / ROBUSTNESS_DIR

    @property
    def robustness_partial(self) -> Path:
        return self.robustness_dir / PARTIAL_FILE

    @property
    def evaluation_error(self) -> Path:
        return self.robustness_dir / EVALUATION_ERROR_FILE

    def last_checkpoints(self) -> list[Path]:
        """The ``last.ckpt`` of every session that has one."""
        return sorted(self.path.glob(f"*/{CHECKPOINT_DIR}/{LAST_CHECKPOINT}{CHECKPOINT_SUFFIX}"))

    def results(self) -> list[Path]:
        """Everything a run has produced (the lock file aside): what ``--overwrite`` discards."""
        names = [
            RESULT_FILE,
            FAILED_RESULT_FILE,
            STALLED_RESULT_FILE,
            CONFIG_FILE,
            *SESSIONS,
            ROBUSTNESS_FILE,
            ROBUSTNESS_DIR,
        ]
        return [self.path / name for name in names if (self.path / name).exists()]

    def discard_results(self) -> None:
        """Remove everything the run has produced, so that it starts afresh."""
        for path in self.results():
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    def relative(self, path: str | Path) -> str:
        """``path`` (inside the run directory) relative to it, as stored in the record."""
        return resolve_run_dir(path).relative_to(self.path).as_posix()


def find_records(directory: str | Path, depth: int | None = None) -> list[Path]:
    """The run records under ``directory``, sorted: at any depth, or only in folders ``depth`` levels down."""
    if depth is None:
        return sorted(Path(directory).rglob(RESULT_FILE))
    return sorted(Path(directory).glob("/".join(["*"] * depth + [RESULT_FILE])))


def set_aside(path: Path) -> Path:
    """Rename an unreadable file to ``<name>.corrupt-<time>`` beside it (kept for inspection); returns the new path."""
    target = path.with_name(f"{path.name}{SET_ASIDE_MARK}{time.strftime('%Y%m%dT%H%M%S')}")
    path.replace(target)
    return target
