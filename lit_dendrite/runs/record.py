"""A run's record (``result.json``) with typed accessors, and the provenance recorded in it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from lit_dendrite.errors import MissingFile, RecordError, UntrustedInput
from lit_dendrite.runs.layout import RunDir
from lit_dendrite.runs.naming import condition_of

FINISHED = ("done", "diverged", "stalled")
"""Statuses of runs with nothing more to train: a diverged or stalled run would do the same again."""
DONE_NUMBERS = ("test_acc", "test_loss", "num_params")
"""The numbers a done run's record must hold (finite) for the report to use it."""
PACKAGES = (
    "lit_dendrite",
    "torch",
    "torchvision",
    "triton",
    "lightning",
    "torchmetrics",
    "numpy",
    "submitit",
    "foolbox",
)


class UntrustedRecord(RecordError, UntrustedInput):
    """A run record or checkpoint asks for something that reading a run never does (building a class outside the
    allow-list, unpickling objects); the message names the file and what was refused."""


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
        retrain = "train the run again: its training command rewrites the record"
        if not path.is_file():
            raise MissingFile(
                f"{path} not found: {directory.path} is not a finished run", "train it first (launch/train.py)"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RecordError(f"{path} is not valid JSON ({error}): the run's record is damaged", retrain) from None
        except OSError as error:
            raise RecordError(f"{path} cannot be read ({error})", retrain) from None
        if not isinstance(data, dict):
            raise RecordError(f"{path} holds {type(data).__name__}, not a run record (a JSON object)", retrain)
        return cls(directory, data, name or directory.path.name)

    def number_problems(self) -> list[str]:
        """What is wrong with the numbers of a done record (:data:`DONE_NUMBERS` missing, of another type, or not
        finite), one phrase per field naming it; empty when the report can use them."""
        if not self.done:
            return []
        problems = []
        for key in DONE_NUMBERS:
            value = self.data.get(key)
            if not is_number(value):
                problems.append(f"{key} is {value!r}, not a finite number" if key in self.data else f"{key} is missing")
        return problems

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
        """Done, diverged or stalled: nothing more to train."""
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
            raise RecordError(f"{self.dir.result} has no config.model.net; it was not written by a training run")
        return net

    @property
    def data_root(self) -> Path:
        return Path((self.config.get("data") or {}).get("root", "data"))

    @property
    def best_checkpoint_name(self) -> str:
        """The best checkpoint of the final session, relative to the run directory, as recorded."""
        name = self.data.get("best_checkpoint")
        if not isinstance(name, str) or not name:
            raise RecordError(f"{self.dir.result} records no best_checkpoint (status {self.status!r})")
        return name

    @property
    def best_checkpoint(self) -> Path:
        """The best checkpoint of the final session, which must lie inside the run directory."""
        path = (self.dir.path / self.best_checkpoint_name).resolve()
        if not path.is_relative_to(self.dir.path):
            raise RecordError(f"{self.dir.result}: best_checkpoint {self.best_checkpoint_name!r} is outside the run")
        return path

    @property
    def path_fallbacks(self) -> list[str]:
        """One line per session and fallback of the inner net's fused op (see :func:`path_fallbacks`)."""
        return path_fallbacks(self.data)

    @property
    def condition(self) -> str:
        """The run's condition: its experiment and its name's axis values other than the seed."""
        return condition_of(self.experiment or self.dir.path.parent.name, self.dir.path.name)


def path_fallbacks(data: Mapping[str, Any]) -> list[str]:
    """``"<session>: <specialisation> ran <path>: <reason>"`` for each fallback of the inner net's fused op that the
    record ``data`` notes (``sessions.<name>.inner_path.fallbacks``); none for records written before paths were."""
    lines = []
    for session, summary in (data.get("sessions") or {}).items():
        fallbacks = ((summary or {}).get("inner_path") or {}).get("fallbacks") or []
        lines += [f"{session}: {f.get('specialisation')} ran {f.get('used')}: {f.get('reason')}" for f in fallbacks]
    return lines


def is_number(value: Any) -> bool:
    """Whether ``value`` read from JSON is a finite number (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on, and Python's."""
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _checkout_commit() -> str | None:
    """HEAD of the checkout this package lies in, with ``+dirty`` where tracked files differ from it; None outside a
    git checkout."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


IMPORTED_COMMIT = _checkout_commit()
"""The commit of the code this process runs: read once, when the package is imported, because a process keeps the
code it imported while the checkout may move on (a ``git pull`` under a sweep job that trains several runs)."""


def git_commit() -> str | None:
    """The commit of the checkout this package was imported from (``+dirty``: with uncommitted changes), or None."""
    return IMPORTED_COMMIT


def provenance() -> dict[str, Any]:
    """What produced a result: package versions and the git commit."""
    return {"versions": versions(), "git_commit": git_commit()}
