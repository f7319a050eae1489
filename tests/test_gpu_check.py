"""``benchmarks/gpu_check.sh`` end to end on CPU (``SIMULATE``: the GPU benchmark's plan on tiny problems under a
device name): a case that raises is recorded and the next runs, a step that hangs is cut by the time limit, and the
JSON, copied to ``$OUT`` on exit, keeps every step finished before it. Faults are injected by a ``sitecustomize``."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"

FAULTS = '''
import importlib.abc, importlib.machinery, sys, time


class Faults(importlib.abc.MetaPathFinder):
    """On import of neurons_gpu: CNN bf16 raises, CNN fp32 returns at once, CNN tf32 hangs."""

    def find_spec(self, name, path, target=None):
        if name != "neurons_gpu":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)

            def benchmark_case(model, batch, precision, quick, device):
                if precision == "bf16-mixed":
                    raise RuntimeError("simulated: CUDA out of memory")
                if precision == "tf32":
                    time.sleep(3600)
                return {"model": model, "batch": batch, "precision": precision, "rows": {}}

            module.benchmark_case = benchmark_case
            module.inner_tflops = lambda precision, device, batch: {"forward": 1.0, "forward_backward": 2.0}

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, Faults())
'''


def _run(tmp_path, **env):
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "TEST_TIMEOUT": "0", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # about a minute: it waits out the benchmark's time limit, generous for a loaded CI machine
def test_the_gpu_check_keeps_what_it_measured_through_a_failing_case_and_a_timeout(tmp_path):
    hooks, out = tmp_path / "hooks", tmp_path / "out"
    hooks.mkdir()
    out.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(FAULTS))
    result = tmp_path / "simulated.json"
    child = _run(
        tmp_path,
        PYTHON=sys.executable,
        SIMULATE="NVIDIA H200 NVL",
        BENCH_TIMEOUT="60",
        RESULT=str(result),
        OUT=str(out),
        PYTHONPATH=str(hooks),
    )
    assert child.returncode == 124, child.stdout[-3000:] + child.stderr[-3000:]
    assert "ran past BENCH_TIMEOUT=60s" in child.stdout
    copied = json.loads((out / "simulated.json").read_text())
    assert copied == json.loads(result.read_text())
    assert copied["device"] == "NVIDIA H200 NVL" and copied["simulated"] is True
    assert copied["datasheet_peak_tflops"] == {"bf16": 835.5, "tf32": 417.5}
    assert set(copied["matmul_tflops"]) == {"fp32", "bf16", "tf32"}
    # The plan's order: CNN 256 bf16 (raised, recorded), the inner net in bf16, CNN fp32; then CNN tf32 hung.
    error = "RuntimeError: simulated: CUDA out of memory"
    assert copied["errors"] == [{"step": "cnn batch 2 bf16-mixed", "error": error}]
    assert [(c["model"], c["precision"]) for c in copied["cases"]] == [("cnn", "fp32")]
    assert copied["inner_tflops"]["bf16-mixed"]["fraction_of_datasheet_peak"] == pytest.approx(2.0 / 835.5)
    assert "gpu_check.log" in os.listdir(out)


def test_the_gpu_check_says_why_it_cannot_run(tmp_path):
    no_torch = tmp_path / "python"
    no_torch.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    no_torch.chmod(0o755)
    child = _run(tmp_path, PYTHON=str(no_torch))
    assert child.returncode == 2
    assert "cannot run: " in child.stdout and "No module named 'torch'" in child.stdout
    child = _run(tmp_path, PYTHON=str(tmp_path / "nowhere"))
    assert child.returncode == 2 and "set PYTHON=/path/to/python" in child.stdout


def test_datasheet_peaks_are_looked_up_by_exact_device_name():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from neurons_gpu import datasheet_peak
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert datasheet_peak("NVIDIA H100 80GB HBM3") == {"bf16": 989.4, "tf32": 494.7}
    assert datasheet_peak("NVIDIA H100 PCIe") == {"bf16": 756.0, "tf32": 378.0}
    assert datasheet_peak("NVIDIA H100 NVL")["bf16"] == 835.5
    assert datasheet_peak("NVIDIA A100-SXM4-40GB") == datasheet_peak("NVIDIA A100 80GB PCIe")
    assert datasheet_peak("NVIDIA H100") is None and datasheet_peak("Tesla V100-SXM2-16GB") is None
