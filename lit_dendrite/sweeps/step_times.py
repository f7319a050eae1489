"""The benchmark's measured step times (``benchmarks/results/``) as the cost estimate (:mod:`lit_dendrite.sweeps.cost`)
reads them: seconds per image of each benchmarked model and path, on a GPU, or on the CPU divided by an assumed
speedup."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_dendrite.nn.neurons import NEURONS
from lit_dendrite.nn.resnet import RESNET18_WIDTHS, scaled_widths

# The benchmark's models and the input side it measured them at (MLP: MNIST 28x28; CNN and ResNet: CIFAR 32x32).
BENCHMARK_MODELS = {"DendriticMLP": ("mlp", 28), "DendriticCNN": ("cnn", 32), "DendriticResNet": ("resnet", 32)}
CONV_MODELS = ("cnn", "resnet")  # time scales with the input's area
UNMEASURED_PATHS = ("reference", "table")  # neither what session II trains with nor what attacks run
BF16_PATHS = ("fused_bf16", "bf16_mixed")  # bf16 products: not what a float32 run trains with
DEFAULT_GPU_SPEEDUP = 100.0
BENCHMARK_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
GPU_RESULTS, CPU_RESULTS = "neurons_cuda.json", "neurons_cpu.json"
RESNET_RESULTS = "resnet_{device}.json"  # benchmarks/resnet.py: the ResNet-18 and its controls, one width
GPU_PRECISION = "fp32"


@dataclass(frozen=True)
class StepTimes:
    """Seconds per image of each benchmark model and path (training step, inference), on the estimate's device."""

    source: Path
    device: str
    speedup: float
    train: dict[str, dict[str, float]]
    inference: dict[str, dict[str, float]]
    # an attack's image gradient (eval mode, frozen weights, exact inner net), where the benchmark timed one
    attack_gradient: dict[str, dict[str, float]] = field(default_factory=dict)
    resnet_source: Path | None = None
    resnet_width: int | None = None  # the benchmarked ResNet's first-stage width (64 at multiplier 1)
    resnet_speedup: float = 1.0

    def learned_path(self, model: str) -> str:
        """The fastest measured path of the learned neuron (what ``impl="auto"`` is meant to pick)."""
        # rows named after a neuron (relu, kan, celltypes, ...) time that neuron, not a path of the inner net
        excluded = (*UNMEASURED_PATHS, *BF16_PATHS, *NEURONS)
        candidates = {p: t for p, t in self.train[model].items() if p not in excluded}
        if not candidates:  # a model timed per neuron only (benchmarks/resnet.py): the 2-arg neuron's row
            return "2arg"
        return min(candidates, key=candidates.get)


def load_step_times(results_dir: str | Path, gpu_speedup: float = DEFAULT_GPU_SPEEDUP) -> StepTimes:
    """The benchmark's GPU results (``neurons_cuda.json``) if they exist, else its CPU results divided by
    ``gpu_speedup`` (an assumption the estimate states); the ResNet's from ``resnet_cuda.json`` or, divided alike,
    ``resnet_cpu.json`` where one exists."""
    results_dir = Path(results_dir)
    gpu, cpu = results_dir / GPU_RESULTS, results_dir / CPU_RESULTS
    source = gpu if gpu.is_file() else cpu
    if not source.is_file():
        raise FileNotFoundError(f"no benchmark results in {results_dir}; run `python benchmarks/neurons.py` first")
    if gpu_speedup <= 0:
        raise ValueError(f"the GPU speedup must be positive, got {gpu_speedup}")
    data = json.loads(source.read_text())
    speedup = 1.0 if source == gpu else gpu_speedup
    tables: tuple[dict[str, dict[str, float]], ...] = ({}, {}, {})
    for model, batch, rows in _measured_rows(data):
        _add_rows(tables, model, batch, rows, speedup)
    resnet: dict[str, Any] = {}
    for device, divisor in (("cuda", 1.0), ("cpu", gpu_speedup)):
        path = results_dir / RESNET_RESULTS.format(device=device)
        if path.is_file():
            measured = json.loads(path.read_text())
            _add_rows(tables, "resnet", measured["batch"], measured["rows"], divisor)
            width = scaled_widths(RESNET18_WIDTHS, measured["width_multiplier"])[0]
            resnet = {"resnet_source": path, "resnet_width": width, "resnet_speedup": divisor}
            break
    return StepTimes(source, "cuda" if source == gpu else "cpu", speedup, *tables, **resnet)


def _add_rows(
    tables: tuple[dict[str, dict[str, float]], ...],
    model: str,
    batch: int,
    rows: Mapping[str, Mapping[str, float]],
    divisor: float,
) -> None:
    """Per-image seconds of each measured path of ``model`` (rows timed at ``batch``), divided by ``divisor``, into
    ``tables`` (training step, inference, attack gradient: the last only for rows that time one)."""
    train, inference, attack_gradient = tables
    train[model] = {p: r["train_step_s"] / batch / divisor for p, r in rows.items()}
    inference[model] = {p: 1 / r["inference_images_per_s"] / divisor for p, r in rows.items()}
    if gradients := {p: r["attack_gradient_s"] / batch / divisor for p, r in rows.items() if "attack_gradient_s" in r}:
        attack_gradient[model] = gradients


def _measured_rows(data: Mapping[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """(model, batch, rows by path) of a benchmark result: the CPU file's ``models``, or the GPU file's fp32
    ``cases`` (the experiment configs train in fp32), the largest batch of each model."""
    if "models" in data:
        return [(model, measured["batch"], measured["rows"]) for model, measured in data["models"].items()]
    largest: dict[str, Mapping[str, Any]] = {}
    for case in data["cases"]:
        if case["precision"] == GPU_PRECISION and case["batch"] >= largest.get(case["model"], {}).get("batch", 0):
            largest[case["model"]] = case
    return [(model, case["batch"], case["rows"]) for model, case in largest.items()]
