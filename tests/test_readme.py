"""The README's commands, run as written from a repository root (issue 12).

Every line of the README's ``bash`` code blocks is either run here or listed in :data:`NOT_RUN` with the reason,
so a command added to or changed in the README fails :func:`test_every_readme_command_is_run_or_excused` until
it is handled here. Commands run in a scratch copy of the repository root (its top-level entries linked, so
that ``runs/`` and ``data/`` are the test's own), with ``python`` this interpreter, and only these changes:
:data:`SHORTER` appended (fewer epochs or images) and :data:`PLACEHOLDERS` replaced.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIRST_RUN = "runs/mlp_digits_2arg/seed=0"

NOT_RUN = {
    "make demo": "creates .venv and installs from the package index (network); its sweep is run below as written",
    "make test": "installs from the package index (network) and runs this test suite",
    "make test-slow": "installs from the package index (network) and runs this test suite; needs root and apt",
    "make lint": "installs from the package index (network); CI runs the lint itself",
    "make bench": "installs from the package index (network); a benchmark, not a check",
    "python launch/train.py --config configs/experiment/mlp_mnist_2arg.yaml --data.root ~/data --data.download true":
        "downloads MNIST (network)",
    "python launch/train.py --config configs/experiment/cnn_cifar10_relu.yaml --trainer.max_epochs 50 "
    "--seed_everything 3": "needs CIFAR-10, which is downloaded (network)",
    "tensorboard --logdir runs": "starts a server that runs until stopped",
    "python launch/evaluate.py RUN_DIR --corruptions cifar10_c --corruption-root data --attacks linf_pgd --n 1000":
        "needs the published CIFAR-10-C files (network)",
    "python launch/sweep.py --cluster slurm": "submits to a Slurm cluster (the cluster tests cover submission)",
    "python launch/sweep.py evaluate runs/paper --cluster slurm": "submits to a Slurm cluster",
}  # fmt: skip
PLACEHOLDERS = {"RUN_DIR": FIRST_RUN, "runs/paper": "runs/demo"}  # runs/paper exists after a Slurm sweep only
SHORTER = {
    "launch/train.py": ["--trainer.max_epochs", "1", "--protocol.pretrain_epochs", "1"],
    "launch/evaluate.py": ["--n", "100"],
}
FAST = [  # run by the fast suite, in README order; the rest by the slow test
    "python launch/train.py fit --config configs/experiment/mlp_digits_2arg.yaml",
    "python launch/train.py --config configs/experiment/mlp_digits_2arg.yaml --print_config",
    "python launch/sweep.py --cluster slurm --dry-run",
]


def readme_commands() -> list[str]:
    """Every command line of the README's ``bash`` blocks, comments stripped, in order."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    lines = [" ".join(shlex.split(line, comments=True)) for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def _run(command: str, root: Path) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    for placeholder, value in PLACEHOLDERS.items():
        words = [value if word == placeholder else word for word in words]
    if words[0] == "python":
        words[0] = sys.executable
    words += next((extra for script, extra in SHORTER.items() if script in words), [])
    done = subprocess.run(
        words, cwd=root, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def repository_root(tmp_path_factory) -> Path:
    """A scratch repository root: the real one's top-level entries linked, except its runs/ and data/."""
    root = tmp_path_factory.mktemp("checkout")
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", "data", ".git", ".venv"):
            (root / entry.name).symlink_to(entry)
    return root


def test_every_readme_command_is_run_or_excused():
    commands = readme_commands()
    assert FIRST_RUN.split("/")[1] in commands[2] and commands[2] == FAST[0], "the README's first training command"
    assert set(NOT_RUN) <= set(commands), sorted(set(NOT_RUN) - set(commands))
    assert set(FAST) <= set(commands)


def test_fast_readme_commands_run_as_written(repository_root):
    for command in FAST:
        done = _run(command, repository_root)
        if "fit" in command.split():
            assert "status=done" in done.stdout
            assert (repository_root / FIRST_RUN / "result.json").is_file()


@pytest.mark.slow
def test_every_other_offline_readme_command_runs_as_written(repository_root):
    if not (repository_root / FIRST_RUN / "result.json").is_file():
        _run(FAST[0], repository_root)
    for command in readme_commands():
        if command not in NOT_RUN and command not in FAST:
            _run(command, repository_root)
    assert (repository_root / FIRST_RUN / "robustness.json").is_file()
    assert (repository_root / "runs" / "demo" / "report.md").is_file()
