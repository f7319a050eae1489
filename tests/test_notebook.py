"""The checkpoint notebook is committed without outputs and runs clean against a tiny sweep."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from tiny_sweep import make_fake_sweep

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analyze_checkpoints.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "LIT_DENDRITE_SWEEP_DIR" in code[0].source


@pytest.mark.slow
def test_notebook_runs_clean_on_a_tiny_sweep(tmp_path, monkeypatch):
    sweep = make_fake_sweep(tmp_path / "sweep", seeds=(1, 2))
    monkeypatch.setenv("LIT_DENDRITE_SWEEP_DIR", str(sweep))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parents[1])}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 3, "learning curves, a gallery and the chosen run's surface are shown"
    text = "".join(output.get("text", "") for output in outputs)
    assert "saddle" in text and "4 runs under" in text
