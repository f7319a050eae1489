"""Reading a run directory never executes anything it names (issue 12.2): a result.json whose net is
``subprocess.run`` is refused by every reader, and checkpoints are read as tensors only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_sweep import make_fake_sweep

from lit_dendrite.models import load_net

ROOT = Path(__file__).resolve().parents[1]
TWO_ARG_RUN = "mlp_digits_2arg/seed=1"


def _poisoned_sweep(tmp_path: Path) -> tuple[Path, Path]:
    """A fake sweep whose 2-arg run's record names ``subprocess.run`` as its net; returns it and the marker file."""
    sweep = make_fake_sweep(tmp_path / "sweep", seeds=(1,))
    marker = tmp_path / "PWNED"
    record_path = sweep / TWO_ARG_RUN / "result.json"
    record = json.loads(record_path.read_text())
    record["config"]["model"]["net"] = {"class_path": "subprocess.run", "init_args": {"args": ["touch", str(marker)]}}
    record_path.write_text(json.dumps(record))
    return sweep, marker


def test_load_net_refuses_a_class_outside_the_allow_list(tmp_path):
    sweep, marker = _poisoned_sweep(tmp_path)
    with pytest.raises(ValueError, match=r"refusing to build net class_path 'subprocess.run'.*result.json|result.json"):
        load_net(sweep / TWO_ARG_RUN)
    assert not marker.exists()


@pytest.mark.parametrize(
    "net",
    [
        {"class_path": "os.system", "init_args": {"command": "true"}},
        {"class_path": "lit_dendrite.nn.DendriticMLP", "init_args": {"neuron": {"class_path": "subprocess.run"}}},
        {"class_path": "lit_dendrite.nn.nets.torch.nn.Linear", "init_args": {}},
    ],
)
def test_build_net_builds_only_the_projects_nets_with_plain_arguments(net):
    from lit_dendrite.models import build_net

    with pytest.raises(ValueError, match="refusing to build"):
        build_net(net)


def test_build_net_builds_both_allow_listed_spellings():
    from lit_dendrite.models import build_net

    for class_path in ("lit_dendrite.nn.DendriticMLP", "lit_dendrite.nn.nets.DendriticMLP"):
        net = build_net({"class_path": class_path, "init_args": {"widths": [8], "neuron": "relu"}})
        assert type(net).__name__ == "DendriticMLP"


@pytest.fixture
def net_registry():
    """The allow-list of nets, restored after a test registers its own."""
    from lit_dendrite.nn.nets import NETS

    saved = dict(NETS)
    yield NETS
    NETS.clear()
    NETS.update(saved)


def test_a_net_registered_outside_the_package_is_allowed_and_a_clashing_name_refused(net_registry):
    from lit_dendrite.models import build_net
    from lit_dendrite.nn import DendriticMLP, register_net

    class TestMLP(DendriticMLP):
        """An outer net defined outside lit_dendrite.nn."""

    config = {"class_path": f"{__name__}.{TestMLP.__qualname__}", "init_args": {"widths": [8], "neuron": "relu"}}
    with pytest.raises(ValueError, match="refusing to build"):
        build_net(config)
    register_net(TestMLP)
    assert type(build_net(config)) is TestMLP
    with pytest.raises(ValueError, match="'TestMLP' is already registered"):
        register_net(type("TestMLP", (DendriticMLP,), {}))
    with pytest.raises(TypeError, match="OuterNet subclass"):
        register_net(torch.nn.Linear)
    assert net_registry["TestMLP"] is TestMLP


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.run, (["touch", self.marker],))


def test_a_checkpoint_holding_objects_is_not_unpickled(tmp_path):
    sweep = make_fake_sweep(tmp_path / "sweep", seeds=(1,))
    marker = tmp_path / "PWNED"
    checkpoint = sweep / TWO_ARG_RUN / "III_frozen" / "checkpoints" / "best.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(str(marker))}, checkpoint)
    with pytest.raises(ValueError, match=r"best.ckpt holds objects other than tensors"):
        load_net(sweep / TWO_ARG_RUN)
    assert not marker.exists()


def _launch(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, f"launch/{script}", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_evaluate_refuses_the_poisoned_run(tmp_path):
    sweep, marker = _poisoned_sweep(tmp_path)
    evaluated = _launch("evaluate.py", str(sweep / TWO_ARG_RUN), "--attacks", "none", "--device", "cpu")
    assert evaluated.returncode == 2, evaluated.stdout + evaluated.stderr
    assert "refusing to build net class_path 'subprocess.run'" in evaluated.stderr
    assert "Traceback" not in evaluated.stderr  # one line that names the file, not a stack
    assert not marker.exists()


def test_sweep_collect_fails_on_the_poisoned_run_instead_of_swallowing_it(tmp_path):
    sweep, marker = _poisoned_sweep(tmp_path)
    collected = _launch("sweep.py", "collect", str(sweep))
    assert collected.returncode == 2, collected.stdout + collected.stderr
    assert "refusing to build net class_path 'subprocess.run'" in collected.stderr
    assert not marker.exists()


def test_notebook_loading_path_refuses_the_poisoned_run(tmp_path):
    """The notebook loads runs through report.load_runs and nonlinearity_report.analyse_surfaces (then load_net)."""
    from lit_dendrite.analysis import nonlinearity_report, report

    sweep, marker = _poisoned_sweep(tmp_path)
    with pytest.raises(ValueError, match="refusing to build"):
        nonlinearity_report.analyse_surfaces(report.load_runs(sweep), n_images=50)
    assert not marker.exists()


@pytest.mark.slow
def test_notebook_stops_on_the_poisoned_run(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    sweep, marker = _poisoned_sweep(tmp_path)
    monkeypatch.setenv("LIT_DENDRITE_SWEEP_DIR", str(sweep))
    notebook = nbformat.read(ROOT / "notebooks" / "analyze_checkpoints.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    with pytest.raises(CellExecutionError, match="UntrustedRecord"):
        client.execute()
    assert not marker.exists()
