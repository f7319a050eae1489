"""Where a sweep is: the notebook's sweep directory, found whether its kernel starts in ``notebooks/`` or in the
repository root (Jupyter starts a kernel in the notebook's folder, a script in the folder it is run from)."""

from __future__ import annotations

import os
from pathlib import Path

SWEEP_DIR_VARIABLE = "LIT_DENDRITE_SWEEP_DIR"
DEMO_SWEEP = "runs/demo"  # where `make demo` writes its sweep
NOTEBOOKS = "notebooks"


def _checkout_root() -> Path | None:
    """The repository this package was imported from, when it is a checkout (an editable install or PYTHONPATH)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def find_sweep_dir(sweep_dir: str | os.PathLike | None = None) -> Path:
    """The sweep directory to analyse, absolute: ``sweep_dir``, else ``$LIT_DENDRITE_SWEEP_DIR``, else the demo sweep.

    A relative path is looked up in the working directory, then in the repository root above a ``notebooks/``
    working directory, then in the checkout this package came from. A path that is in none of them is an error naming
    every place looked in and how to point at another sweep.
    """
    given = sweep_dir if sweep_dir is not None else os.environ.get(SWEEP_DIR_VARIABLE) or DEMO_SWEEP
    path = Path(given).expanduser()
    here = Path.cwd()
    bases = [here, here.parent] if here.name == NOTEBOOKS else [here]
    bases += [root] if (root := _checkout_root()) is not None else []
    candidates = [path] if path.is_absolute() else list(dict.fromkeys(base / path for base in bases))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    looked = ", ".join(str(candidate) for candidate in candidates)
    hint = " (run `make demo` first to make it)" if str(given) == DEMO_SWEEP else ""
    raise FileNotFoundError(
        f"sweep directory {given} not found (looked in {looked}){hint}; set the environment variable "
        f"{SWEEP_DIR_VARIABLE} (or SWEEP_DIR in the notebook's first cell) to the directory of a sweep, "
        "<out>/<sweep name> of launch/sweep.py, e.g. runs/demo"
    )
