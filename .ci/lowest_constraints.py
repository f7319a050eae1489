"""Print pip constraints that hold torch, torchvision and triton at the lowest versions pyproject.toml allows.

``make test-lowest`` installs the project with them into a second virtualenv and runs the fast suite there, so that
the lower bounds in pyproject.toml are tested, not just written; the bounds themselves are spelled only there.
"""

import re
import sys
import tomllib
from pathlib import Path

LOWEST = ("torch", "torchvision", "triton")


def main() -> None:
    dependencies = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in LOWEST:
        spec = next((d for d in dependencies if re.match(rf"{name}\s*[><=;]", d)), None)
        bound = re.search(r">=\s*([\w.]+)", spec or "")
        if bound is None:
            sys.exit(f"pyproject.toml gives {name} no lower bound (>=): add one, the lowest supported version")
        marker = spec.split(";", 1)[1].strip() if ";" in spec else ""
        print(f"{name}=={bound.group(1)}.*" + (f"; {marker}" if marker else ""))


if __name__ == "__main__":
    main()
