"""The README's and docs/'s commands, run as written from a repository root, and their links (issues 12 and 24).

Every command of a ``bash`` code block in README.md and docs/*.md is either run here or listed in :data:`NOT_RUN` with
the reason (an excused command changed in its document fails the first test below until its excuse follows); blocks
fenced otherwise (``yaml``, ``python``, plain) are shown, not run. A command is a line of a block, continued by the
lines after it that end in a backslash or start indented. Commands run in a scratch copy of the repository root (its
top-level entries linked, so that ``runs/`` and ``data/`` are the test's own), in the order of the README then of docs/
by file name, each distinct command once, with ``python`` this interpreter and only these changes: :data:`SHORTER`'s
options appended where a command does not set them itself, and :data:`PLACEHOLDERS` replaced. The fast test plays the
README's first recipes (a quick 2-arg run and its control, the curves they log, an attack, the sweep's dry run); the
slow test runs every other command.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
QUICK_RUN = "runs/mlp_digits_2arg/variant=quick,seed=0"

NOT_RUN = {
    "make install": "creates .venv and installs from the package index (network); the tests run in such an environment",
    "source .venv/bin/activate": "a shell builtin that activates .venv; the tests already run with its python",
    "make demo": "creates .venv and installs from the package index (network); its sweep is run below as written",
    "make notebook": "installs JupyterLab (network) and starts a server that runs until stopped; "
    "tests/test_notebook.py executes the notebook from notebooks/ as Jupyter does",
    "make test": "installs from the package index (network) and runs this test suite",
    "make test-slow": "installs from the package index (network) and runs this test suite; needs root and apt",
    "make lint": "installs from the package index (network); CI runs the lint itself",
    "make bench": "installs from the package index (network); a benchmark, not a check",
    "tensorboard --logdir runs": "starts a server that runs until stopped; the fast test reads the event files",
    "python launch/train.py --config configs/experiment/mlp_mnist_2arg.yaml --data.root ~/data --data.download true":
        "downloads MNIST (network)",
    "python launch/train.py --config configs/experiment/cnn_cifar10_relu.yaml --trainer.max_epochs 50 "
    "--seed_everything 3": "needs CIFAR-10, which is downloaded (network)",
    "python launch/evaluate.py RUN_DIR --corruptions cifar10_c --corruption-root data --attacks linf_pgd --n 1000":
        "needs the published CIFAR-10-C files (network)",
    "python launch/sweep.py --cluster slurm": "submits to a Slurm cluster (the cluster tests cover submission)",
    "python launch/sweep.py evaluate runs/paper --cluster slurm": "submits to a Slurm cluster",
    "OMP_NUM_THREADS=1 python launch/sweep.py --sweep configs/sweep/digits_repro.yaml --cluster local --max-parallel 2 "
    "--wait": "trains 33 runs on digits: hours on 2 cores (docs/results.md reports them)",
    "python launch/sweep.py collect runs/digits_repro": "needs the 33 runs of the sweep above",
    "for n in relu 1arg 2arg; do mkdir -p runs/beyond_digits/mlp_digits_$n cp -a "
    "runs/digits_repro/mlp_digits_$n/seed={1..5} runs/beyond_digits/mlp_digits_$n/; done":
        "shell loop copying the runs of the digits_repro sweep (hours to train)",
    "OMP_NUM_THREADS=1 python launch/sweep.py --sweep configs/sweep/beyond_digits.yaml --cluster local "
    "--max-parallel 2 --wait": "trains 45 runs on digits: hours on 2 cores (docs/results.md reports them)",
    "python launch/sweep.py collect runs/beyond_digits": "needs the 45 runs of the sweep above",
    "python launch/train.py --config configs/experiment/resnet18_digits_2arg.yaml --protocol.pretrain_epochs 100 "
    "--trainer.max_epochs 30 --protocol.patience 5 --seed_everything 1 --run_dir runs/zero_init/seed=1 "
    "--model.net.init_args.residual_bn_init 0 --protocol.sessions [I_pretrain,II_joint]":
        "a ResNet's sessions I and II: about 29 minutes on one core",
}  # fmt: skip
PLACEHOLDERS = {"RUN_DIR": QUICK_RUN, "runs/paper": "runs/demo"}  # runs/paper exists after a Slurm sweep only
# Each appended to a command of the script that does not set it itself: fewer epochs or images.
SHORTER = {
    "launch/train.py": {"--trainer.max_epochs": "1", "--protocol.pretrain_epochs": "1"},
    "launch/evaluate.py": {"--n": "100"},
}
FAST = [  # the README's first recipes, run by the fast suite in this order; the rest by the slow test
    "python launch/train.py --config configs/experiment/mlp_digits_2arg.yaml --config configs/quick.yaml",
    "python launch/train.py --config configs/experiment/mlp_digits_relu.yaml --config configs/quick.yaml",
    f"python launch/evaluate.py {QUICK_RUN} --attacks linf_pgd,fgsm",
    "python launch/sweep.py --cluster slurm --dry-run",
]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def block_commands(block: str) -> dict[str, list[str]]:
    """The commands of one shell block, each a line with its continuations, comments stripped: the command as its
    words joined by single spaces (what :data:`NOT_RUN` and :data:`FAST` name) -> its words."""
    lines: list[str] = []
    for line in block.splitlines():
        if lines and (lines[-1].endswith("\\") or line[:1].isspace()):
            lines[-1] = lines[-1].removesuffix("\\").rstrip() + " " + line.strip()
        else:
            lines.append(line.rstrip())
    commands = (shlex.split(line, comments=True) for line in lines)
    return {" ".join(words): words for words in commands if words}


def documented_commands(document: Path) -> dict[str, list[str]]:
    """Every command of the ``bash`` blocks of ``document``, in order."""
    blocks = [block for language, block in FENCE.findall(document.read_text()) if language == "bash"]
    return {command: words for block in blocks for command, words in block_commands(block).items()}


def all_commands() -> dict[str, list[str]]:
    """The README's commands, then docs/'s by file name; each distinct command once."""
    return {command: words for document in DOCUMENTS for command, words in documented_commands(document).items()}


def _run(words: list[str], root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    words = list(words)
    while re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # NAME=value before the command
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    words = [PLACEHOLDERS.get(word, word) for word in words]
    if words[0] == "python":
        words[0] = sys.executable
    shorter = next((options for script, options in SHORTER.items() if script in words), {})
    words += [word for option, value in shorter.items() if option not in words for word in (option, value)]
    done = subprocess.run(words, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"{shlex.join(words)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def repository_root(tmp_path_factory) -> Path:
    """A scratch repository root: the real one's top-level entries linked, except its runs/ and data/."""
    root = tmp_path_factory.mktemp("checkout")
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", "data", ".git", ".venv"):
            (root / entry.name).symlink_to(entry)
    return root


def test_every_documented_command_is_run_or_excused():
    commands = all_commands()
    readme = list(documented_commands(README))
    assert readme[2] == FAST[0], "the README's first recipe after installing is the quick run"
    assert set(NOT_RUN) <= set(commands), f"excused but documented nowhere: {sorted(set(NOT_RUN) - set(commands))}"
    assert set(FAST) <= set(readme), sorted(set(FAST) - set(readme))


def test_a_command_is_a_line_with_its_continuations():
    block = (
        "A=1 python a.py --x '[1, 2]' \\\n  --y 2   # why\nfor n in 1 2; do echo $n\n  echo done; done\n\npython b.py\n"
    )
    commands = block_commands(block)
    assert list(commands) == [
        "A=1 python a.py --x [1, 2] --y 2",
        "for n in 1 2; do echo $n echo done; done",
        "python b.py",
    ]
    assert commands["A=1 python a.py --x [1, 2] --y 2"] == ["A=1", "python", "a.py", "--x", "[1, 2]", "--y", "2"]


def test_the_readme_recipes_run_as_written(repository_root):
    """Goals 1-3 and 5 of the README: a quick 2-arg run and its ReLU control, their curves in TensorBoard's files, an
    attack on the 2-arg run, the sweep's dry run (goal 4, the notebook, is tests/test_notebook.py)."""
    commands = documented_commands(README)
    outputs = [_run(commands[command], repository_root).stdout for command in FAST]
    assert all("status=done" in output for output in outputs[:2]), outputs[:2]
    for run in (QUICK_RUN, "runs/mlp_digits_relu/variant=quick,seed=0"):
        for session in ("II_joint", "III_frozen") if run == QUICK_RUN else ("II_joint",):
            events = EventAccumulator(str(repository_root / run / session)).Reload()
            assert {"val/acc", "val/loss", "train/acc", "test/acc"} <= set(events.Tags()["scalars"]), (run, session)
            assert run != QUICK_RUN or "inner/surface" in events.Tags()["images"], "the 2-arg net's surface image"
    assert (repository_root / QUICK_RUN / "robustness.json").is_file() and "linf_pgd" in outputs[2]
    assert "GPU-hours" in outputs[3]


@pytest.mark.slow
def test_every_other_offline_documented_command_runs_as_written(repository_root):
    commands = all_commands()
    if not (repository_root / QUICK_RUN / "robustness.json").is_file():
        for command in FAST:
            _run(commands[command], repository_root)
    for command, words in commands.items():
        if command not in NOT_RUN and command not in FAST:
            _run(words, repository_root)
    assert (repository_root / QUICK_RUN / "robustness.json").is_file()
    assert (repository_root / "runs" / "demo" / "report.md").is_file()


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a document's headings (code blocks left out): lower case, punctuation dropped, spaces to
    hyphens, a repeated heading numbered."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", markdown), flags=re.MULTILINE):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        numbered, index = anchor, 0
        while numbered in anchors:
            index += 1
            numbered = f"{anchor}-{index}"
        anchors.add(numbered)
    return anchors


def relative_links(markdown: str) -> list[str]:
    """The targets of the links and images of a document that are not web addresses (code left out)."""
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", markdown))
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [target for target in targets if not re.match(r"[a-z]+:", target)]


def test_heading_anchors_are_githubs():
    anchors = heading_anchors("# A, b: c\n```bash\n# not a heading\n```\n## 5. Pre-emption\n## A, b: c\n")
    assert anchors == {"a-b-c", "5-pre-emption", "a-b-c-1"}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(document):
    broken = []
    for target in relative_links(document.read_text()):
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    assert not broken, "\n".join(broken)
