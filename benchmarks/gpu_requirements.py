"""The project's dependencies that a GPU machine's Python may lack, for ``gpu_check.sh``.

``list`` prints the requirements to download as wheels on a machine with network (every dependency in pyproject.toml
except those that come with torch, which gpu_check.sh takes from the GPU machine, plus the test runner); ``missing``
prints those of them that this Python cannot find (one per line, nothing when all are there).
"""

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
FROM_THE_MACHINE = ("torch", "torchvision", "triton", "lightning", "torchmetrics")  # need a matching torch build
TEST_RUNNER = ("pytest>=8", "pytest-timeout>=2.3")


def requirements() -> list[str]:
    """The requirements to bring as wheels (pyproject's spelling, markers dropped)."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    wanted = [d.split(";")[0].strip() for d in dependencies if _name(d) not in FROM_THE_MACHINE]
    return [*wanted, *TEST_RUNNER]


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")


def missing() -> list[str]:
    """Those of :func:`requirements` not installed in this Python (any version counts)."""
    absent = []
    for requirement in requirements():
        try:
            metadata.version(_name(requirement).split("[")[0])
        except metadata.PackageNotFoundError:
            absent.append(requirement)
    return absent


if __name__ == "__main__":
    if sys.argv[1:] not in (["list"], ["missing"]):
        sys.exit("usage: python benchmarks/gpu_requirements.py list|missing")
    print("\n".join(requirements() if sys.argv[1] == "list" else missing()))
