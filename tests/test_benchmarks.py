"""The benchmarks run as the README gives them (small), and the sweep's cost estimate reads what they write."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lit_dendrite.sweeps.cost import RunShape, estimate, load_step_times, session_paths

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run_benchmark(script: str, *args: str) -> None:
    command = [sys.executable, str(REPO / "benchmarks" / script), "--threads", "1", *args]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_neuron_benchmark_times_the_1arg_control_and_the_estimate_prices_1arg_runs_by_its_row(tmp_path):
    out = tmp_path / "neurons_cpu.json"
    run_benchmark("neurons.py", "--quick", "--variants", "1arg", "--out", str(out))
    result = json.loads(out.read_text())
    for model in ("mlp", "cnn"):
        rows = result["models"][model]["rows"]
        assert set(rows) == {"relu", "1arg"}
        for row in rows.values():  # training step, inference and attack gradient, all timed in the same rounds
            assert row["train_step_s"] > 0 and row["inference_images_per_s"] > 0 and row["attack_gradient_s"] > 0
            assert row["peak_train_memory_mib"] > 0
        assert rows["relu"]["inner_paths"] == [] and rows["1arg"]["inner_paths"] == ["fused"]  # what each step ran
        assert result["ratios"][f"{model}_1arg_train_step_ratio"] > 1  # an inner net per unit costs more than ReLU
    times = load_step_times(tmp_path, gpu_speedup=10)
    shape = RunShape("cnn_cifar10_1arg", "cifar10", "DendriticCNN", "1arg", 32, 200, 2, 3, True)
    assert session_paths(times, shape) == ("1arg", "1arg")  # no table row in this file: exact in both sessions
    assert "no row of its own" not in estimate([shape], times).format()


def test_the_resnet_benchmark_times_every_neuron_and_the_estimate_reads_it(tmp_path):
    out = tmp_path / "resnet_cpu.json"
    run_benchmark("resnet.py", "--width-multiplier", "0.0625", "--batch", "2", "--rounds", "1", "--out", str(out))
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert set(rows) == {"relu", "2arg", "1arg"}
    for row in rows.values():
        assert row["train_step_s"] > 0 and row["attack_gradient_s"] > 0 and row["peak_train_memory_mib"] > 0
        assert row["parameters"] == pytest.approx(rows["2arg"]["parameters"], rel=0.01)  # parameter-matched
    (tmp_path / "neurons_cpu.json").write_text((REPO / "benchmarks" / "results" / "neurons_cpu.json").read_text())
    times = load_step_times(tmp_path, gpu_speedup=10)
    assert times.resnet_width == 4 and times.train["resnet"]["1arg"] == pytest.approx(rows["1arg"]["train_step_s"] / 20)
