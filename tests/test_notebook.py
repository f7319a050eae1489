"""The checkpoint notebook: committed without outputs, finds its sweep from ``notebooks/`` or the repository root, and
runs clean against a tiny sweep with its kernel started in ``notebooks/``, as Jupyter starts it."""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from tiny_sweep import make_fake_sweep

from lit_dendrite.analysis.locate import DEMO_SWEEP, SWEEP_DIR_VARIABLE, find_sweep_dir

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analyze_checkpoints.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert SWEEP_DIR_VARIABLE in code[0].source


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A repository root holding notebooks/ and the demo sweep's directory, with no sweep variable set."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / DEMO_SWEEP).mkdir(parents=True)
    monkeypatch.delenv(SWEEP_DIR_VARIABLE, raising=False)
    return tmp_path


@pytest.mark.parametrize("start", ["notebooks", "."])
def test_the_demo_sweep_is_found_from_notebooks_or_the_root(checkout, monkeypatch, start):
    monkeypatch.chdir(checkout / start)
    assert find_sweep_dir() == (checkout / DEMO_SWEEP).resolve()


def test_the_sweep_variable_and_the_notebook_parameter_choose_the_sweep(checkout, monkeypatch, tmp_path_factory):
    other = tmp_path_factory.mktemp("other_sweep")
    monkeypatch.chdir(checkout / "notebooks")
    monkeypatch.setenv(SWEEP_DIR_VARIABLE, str(other))
    assert find_sweep_dir() == other.resolve()
    assert find_sweep_dir(DEMO_SWEEP) == (checkout / DEMO_SWEEP).resolve(), "the parameter wins over the variable"


def test_a_missing_sweep_names_where_it_looked_and_the_variable_to_set(checkout, monkeypatch):
    shutil.rmtree(checkout / DEMO_SWEEP)
    monkeypatch.chdir(checkout / "notebooks")
    with pytest.raises(FileNotFoundError) as error:
        find_sweep_dir()
    message = str(error.value)
    assert str(checkout / "notebooks" / DEMO_SWEEP) in message and str(checkout / DEMO_SWEEP) in message
    assert SWEEP_DIR_VARIABLE in message and "make demo" in message


@pytest.mark.slow
def test_notebook_runs_clean_from_notebooks_on_the_demo_sweep(checkout):
    """Jupyter starts the kernel in the notebook's folder; the sweep lies at runs/demo of the repository root."""
    make_fake_sweep(checkout / DEMO_SWEEP, seeds=(1, 2))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(checkout / "notebooks")}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 3, "learning curves, a gallery and the chosen run's surface are shown"
    text = "".join(output.get("text", "") for output in outputs)
    assert "saddle" in text and f"4 runs under {(checkout / DEMO_SWEEP).resolve()}" in text
    summary = next(output["data"]["text/plain"] for output in outputs if "test acc %" in str(output.get("data", "")))
    assert "86.50 ± 0.71" in summary, "the 2-arg runs' test accuracy (0.86, 0.87) in % with two decimals"
