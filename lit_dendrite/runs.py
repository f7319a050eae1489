"""The run directory: its layout, its record (``result.json``), the run-name format, and the provenance of a run.

Training writes a run directory, sweeps create and watch them, evaluation adds robustness results to them, and
the analysis reads them; every file name and the layout are spelled here and nowhere else::

    <run_dir>/result.json                       the run record (RunRecord), written last
    <run_dir>/<session>/session.json            a finished session's summary (I_pretrain, II_joint, III_frozen)
    <run_dir>/<session>/checkpoints/last.ckpt   resumable state of an unfinished session
    <run_dir>/<session>/checkpoints/best.ckpt   the best epoch by validation loss (sessions II and III)
    <run_dir>/I_pretrain/inner.pt               the pretrained inner net (weights only)
    <run_dir>/II_joint/inner_best.pt            the inner net of session II's best checkpoint
    <run_dir>/robustness.json                   robustness results (launch/evaluate.py)
    <run_dir>/robustness/                       their figures and an interrupted evaluation's partial.json
    <run_dir>/robustness/error.json             why the sweep's last evaluation of the run failed

A run directory is always used resolved (``~`` expanded, symlinks followed, absolute): Lightning resolves the
checkpoint paths it reports, and paths stored relative to the run directory must be computed against the same
spelling. This module imports no torch, so that the sweep's status command stays fast.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
FAILED_RESULT_FILE = "result.failed.json"
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
PARTIAL_FILE = "partial.json"
EVALUATION_ERROR_FILE = "error.json"
DEFAULT_RUNS_ROOT = "runs"
FINISHED = ("done", "diverged")
SEED_AXIS = "seed"
NAME_SIGNIFICANT_DIGITS = 4
CONFIG_KEYS_NOT_IDENTITY = ("run_dir", "experiment")
PACKAGES = ("lit_dendrite", "torch", "torchvision", "lightning", "torchmetrics", "numpy", "submitit", "foolbox")


class UntrustedRecord(ValueError):
    """A run record or checkpoint asks for something that reading a run never does (building a class outside the
    allow-list, unpickling objects); the message names the file and what was refused."""


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
    def failed_result(self) -> Path:
        """Where a failed job's record is set aside when the sweep submits the run again."""
        return self.path / FAILED_RESULT_FILE

    def session(self, name: str) -> SessionDir:
        return SessionDir(self.path / name)

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

    def relative(self, path: str | Path) -> str:
        """``path`` (inside the run directory) relative to it, as stored in the record."""
        return resolve_run_dir(path).relative_to(self.path).as_posix()


def find_records(directory: str | Path, depth: int | None = None) -> list[Path]:
    """The run records under ``directory``, sorted: at any depth, or only in folders ``depth`` levels down."""
    if depth is None:
        return sorted(Path(directory).rglob(RESULT_FILE))
    return sorted(Path(directory).glob("/".join(["*"] * depth + [RESULT_FILE])))


@dataclass(frozen=True)
class RunRecord:
    """A run's ``result.json`` with typed accessors; ``name`` labels it (e.g. its path inside a sweep)."""

    dir: RunDir
    data: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""

    @classmethod
    def read(cls, run_dir: str | Path | RunDir, name: str = "") -> RunRecord:
        """The record of ``run_dir``; a clear error when there is none or it is not JSON."""
        directory = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
        path = directory.result
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished run (train it first)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); the run's record is damaged") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds {type(data).__name__}, not a run record (a JSON object)")
        return cls(directory, data, name or directory.path.name)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def finished(self) -> bool:
        """Done or diverged: nothing more to train."""
        return self.status in FINISHED

    @property
    def experiment(self) -> str | None:
        return self.data.get("experiment")

    @property
    def seed(self) -> int | None:
        return self.data.get("seed")

    @property
    def dataset(self) -> str | None:
        return self.data.get("dataset")

    @property
    def net(self) -> str | None:
        return self.data.get("net")

    @property
    def neuron(self) -> str | None:
        return self.data.get("neuron")

    @property
    def test_acc(self) -> float | None:
        return self.data.get("test_acc")

    @property
    def config(self) -> dict[str, Any]:
        return self.data.get("config") or {}

    @property
    def config_hash(self) -> str | None:
        return self.data.get("config_hash")

    @property
    def net_config(self) -> dict[str, Any]:
        """The ``model.net`` entry of the resolved config (``class_path`` and ``init_args``)."""
        net = (self.config.get("model") or {}).get("net")
        if not isinstance(net, dict):
            raise ValueError(f"{self.dir.result} has no config.model.net; it was not written by a training run")
        return net

    @property
    def data_root(self) -> Path:
        return Path((self.config.get("data") or {}).get("root", "data"))

    @property
    def best_checkpoint_name(self) -> str:
        """The best checkpoint of the final session, relative to the run directory, as recorded."""
        name = self.data.get("best_checkpoint")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.dir.result} records no best_checkpoint (status {self.status!r})")
        return name

    @property
    def best_checkpoint(self) -> Path:
        """The best checkpoint of the final session, which must lie inside the run directory."""
        path = (self.dir.path / self.best_checkpoint_name).resolve()
        if not path.is_relative_to(self.dir.path):
            raise ValueError(f"{self.dir.result}: best_checkpoint {self.best_checkpoint_name!r} is outside the run")
        return path

    @property
    def condition(self) -> str:
        """The run's condition: its experiment and its name's axis values other than the seed."""
        return condition_of(self.experiment or self.dir.path.parent.name, self.dir.path.name)


def name_value(value: Any) -> str:
    """Format an axis value for a run name: compact, no path separators or name delimiters."""
    if isinstance(value, (list, tuple)):
        return "-".join(name_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:.{NAME_SIGNIFICANT_DIGITS}g}"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value).replace("/", "_").replace(",", "_").replace("=", "_")


def run_name(axes: Iterable[tuple[str, str]]) -> str:
    """A run's name from its (short key, formatted value) axes, e.g. ``lr=0.001,seed=1``."""
    return ",".join(f"{key}={value}" for key, value in axes)


def parse_run_name(name: str) -> dict[str, str]:
    """The axes of a run name (``lr=0.001,seed=1`` -> ``{"lr": "0.001", "seed": "1"}``); other names have none."""
    parts = [part.partition("=") for part in name.split(",") if part]
    return {key: value for key, sep, value in parts if sep}


def condition_of(experiment: str, name: str) -> str:
    """The condition of a run: its experiment, plus its name's ``key=value`` parts other than the seed."""
    axes = [f"{key}={value}" for key, value in parse_run_name(name).items() if key != SEED_AXIS]
    return "/".join([experiment, ",".join(axes)]) if axes else experiment


def default_run_dir(experiment: str, seed: int) -> Path:
    """Where ``train`` writes without ``--run_dir``: ``runs/<experiment>/seed=<seed>``."""
    return Path(DEFAULT_RUNS_ROOT) / experiment / run_name([(SEED_AXIS, str(seed))])


def config_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved training config that determines the results (where and under which name a run is
    written does not)."""
    return {key: value for key, value in config.items() if key not in CONFIG_KEYS_NOT_IDENTITY}


def config_hash(config: Mapping[str, Any]) -> str:
    """A short hash of :func:`config_identity`, recorded as ``config_hash``."""
    text = json.dumps(config_identity(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on, and Python's."""
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """What produced a result: package versions and the git commit."""
    return {"versions": versions(), "git_commit": git_commit()}
