"""A sweep's cost in GPU-hours, estimated from the benchmark's measured step times (``launch/sweep.py --dry-run``).

Work is counted (images trained, validated, attacked, corrupted) and multiplied by the benchmark's per-image
times of the path each session runs; every assumption the estimate makes is returned with it, to be printed.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lit_dendrite.data.datasets import dataset_spec
from lit_dendrite.nn.neurons import NEURONS
from lit_dendrite.nn.resnet import RESNET18_WIDTHS, scaled_widths
from lit_dendrite.sweeps.evaluation import settings_for
from lit_dendrite.sweeps.spec import Sweep

# Train and test images of each data set (the published sizes; digits: this project's split of scikit-learn's).
DATASET_IMAGES = {
    "digits": (1437, 360),
    "mnist": (60_000, 10_000),
    "fashion_mnist": (60_000, 10_000),
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
}
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
MIN_STEP_S = 0.003  # a training step costs at least this on a GPU (Lightning's loop, the optimizer, kernel launches)
# AutoAttack standard (Croce & Hein 2020): APGD-CE 100 iterations on every image; on the images still robust,
# APGD-T (9 targets x 100), FAB-T (9 targets x 100, counted as 2 gradients per iteration) and Square (5000 queries).
AUTOATTACK_GRADIENTS_ALL, AUTOATTACK_GRADIENTS_ROBUST, AUTOATTACK_QUERIES_ROBUST = 100, 900 + 1800, 5000
ASSUMED_ROBUST_FRACTION = 0.5
# Corrupted test sets per kind (CIFAR-10-C: 19 corruptions x 5 severities; MNIST-C: 15 and the identity).
CORRUPTED_SETS = {"cifar10_c": 95, "cifar100_c": 95, "mnist_c": 16, "generated": 95}


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


@dataclass(frozen=True)
class RunShape:
    """What a run's cost depends on, read from its resolved config."""

    experiment: str
    dataset: str
    net: str
    neuron: str
    input_side: int
    batch_size: int
    joint_epochs: int
    frozen_epochs: int
    fixed_schedule: bool
    width: int | None = None  # the ResNet's first-stage width (after its width multiplier)


@dataclass
class Estimate:
    """GPU-hours per experiment (training and evaluation, all its runs) and the assumptions behind them."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    @property
    def total_hours(self) -> float:
        return sum(row["train_h"] + row["evaluate_h"] for row in self.rows)

    def format(self) -> str:
        """The estimate as a table, its total and its assumptions."""
        lines = ["Cost estimate (GPU-hours):", "  experiment            runs  epochs II/III  train h  evaluate h"]
        for row in self.rows:
            lines.append(
                f"  {row['experiment']:<20} {row['runs']:>5}  {row['epochs']:>13}  {row['train_h']:>7.1f}"
                f"  {row['evaluate_h']:>10.1f}"
            )
        lines.append(f"  total: {self.total_hours:.1f} GPU-hours")
        lines.append("Assumptions:")
        lines += [f"  - {text}" for text in self.assumptions]
        return "\n".join(lines)


def _session_hours(times: StepTimes, shape: RunShape, batch_train: str, batch_eval: str, epochs: int) -> float:
    model = BENCHMARK_MODELS[shape.net][0]
    train_images, _ = DATASET_IMAGES[shape.dataset]
    val = round(dataset_spec(shape.dataset).val_fraction * train_images)
    scale = _scale(times, shape)
    steps = math.ceil((train_images - val) / shape.batch_size)
    step_s = max(shape.batch_size * times.train[model][batch_train] * scale, MIN_STEP_S)
    per_epoch = steps * step_s + val * times.inference[model][batch_eval] * scale
    return epochs * per_epoch / 3600


def _scale(times: StepTimes, shape: RunShape) -> float:
    """A run's time relative to the benchmark's model: conv nets scale with the input's area, the ResNet also with
    the square of its width (its convolutions' cost); the MLP's is taken as unchanged."""
    model, side = BENCHMARK_MODELS[shape.net]
    scale = (shape.input_side / side) ** 2 if model in CONV_MODELS else 1.0
    if model == "resnet" and shape.width is not None:
        scale *= (shape.width / times.resnet_width) ** 2
    return scale


def session_paths(times: StepTimes, shape: RunShape) -> tuple[str, str | None]:
    """The benchmark paths that time sessions II and III (None: the neuron has no session III, see its registry
    entry). Session II: a neuron the benchmark measured as its own variant (relu, 1arg, kan, celltypes) is timed
    by that row; another fixed neuron as the ReLU control, another learned one as the 2-arg inner net (see
    :func:`priced_as_2arg`). Session III: the frozen lookup tables where the neuron has them and the benchmark timed
    them, else session II's path. A name not registered here counts as a learned neuron, the dearer guess."""
    spec = NEURONS.get(shape.neuron)
    rows = times.train[BENCHMARK_MODELS[shape.net][0]]
    if shape.neuron in rows:  # the benchmark times it as its own variant
        joint = shape.neuron
    elif spec is not None and not spec.learned:
        return "relu", None
    else:
        joint = times.learned_path(BENCHMARK_MODELS[shape.net][0])
    if spec is not None and not spec.freeze:
        return joint, None
    tables = (spec is None or spec.tables) and "table" in rows
    return joint, "table" if tables else joint


def priced_as_2arg(times: StepTimes, shape: RunShape) -> bool:
    """Whether the estimate times this run's learned neuron by the 2-arg inner net's rows, for want of its own."""
    return shape.neuron != "2arg" and session_paths(times, shape)[0] not in (shape.neuron, "relu")


def train_hours(times: StepTimes, shape: RunShape) -> float:
    """Sessions II and III of one run (session I is seconds and not counted)."""
    joint, frozen = session_paths(times, shape)
    hours = _session_hours(times, shape, joint, joint, shape.joint_epochs)
    return hours + (_session_hours(times, shape, frozen, frozen, shape.frozen_epochs) if frozen else 0.0)


def evaluate_hours(
    times: StepTimes, shape: RunShape, settings: Mapping[str, Any] | None, robust_fraction: float | None
) -> float:
    """One run's evaluation under its data set's ``evaluate:`` settings (attacks, corrupted sets)."""
    if not settings:
        return 0.0
    model = BENCHMARK_MODELS[shape.net][0]
    path = session_paths(times, shape)[0]
    gradient = times.attack_gradient.get(model, {}).get(path, times.train[model][path])
    forward = times.inference[model][path]
    _, test_images = DATASET_IMAGES[shape.dataset]
    seconds = 0.0
    fraction = ASSUMED_ROBUST_FRACTION if robust_fraction is None else robust_fraction
    for name, attack in (settings.get("attacks") or {}).items():
        n = attack.get("n") or settings.get("n") or test_images
        epsilons = [e for e in attack.get("epsilons", [None]) if e != 0]
        if name.startswith("autoattack"):
            gradients = AUTOATTACK_GRADIENTS_ALL + fraction * AUTOATTACK_GRADIENTS_ROBUST
            per_image = gradients * gradient + fraction * AUTOATTACK_QUERIES_ROBUST * forward
        else:
            per_image = attack.get("steps", 100) * gradient
        seconds += n * per_image * max(len(epsilons), 1)
    corruptions = settings.get("corruptions")
    if corruptions:
        kind = corruptions["spec"].split(":", 1)[0]
        n = corruptions.get("n") or settings.get("n") or test_images
        seconds += CORRUPTED_SETS.get(kind, 95) * n * forward
    return seconds * _scale(times, shape) / 3600


def estimate(
    shapes: Sequence[RunShape],
    times: StepTimes,
    evaluation: Mapping[str, Mapping[str, Any]] | None = None,
    robust_fractions: Mapping[tuple[str, str, str], float] | None = None,
) -> Estimate:
    """GPU-hours of ``shapes`` (one per run) grouped by experiment; ``evaluation`` maps a data set to its
    evaluate settings, ``robust_fractions`` (dataset, net, neuron) to the fraction of images assumed to survive
    AutoAttack's first stage."""
    result = Estimate()
    grouped: dict[str, list[RunShape]] = {}
    for shape in shapes:
        grouped.setdefault(shape.experiment, []).append(shape)
    fractions = robust_fractions or {}
    for experiment, runs in grouped.items():
        shape = runs[0]
        fraction = fractions.get((shape.dataset, shape.net, shape.neuron))
        settings = (evaluation or {}).get(shape.dataset)
        epochs = f"{shape.joint_epochs}/{shape.frozen_epochs if session_paths(times, shape)[1] else '-'}"
        result.rows.append(
            {
                "experiment": experiment,
                "runs": len(runs),
                "epochs": epochs + ("" if shape.fixed_schedule else " max"),
                "train_h": sum(train_hours(times, s) for s in runs),
                "evaluate_h": sum(evaluate_hours(times, s, settings, fraction) for s in runs),
            }
        )
    result.assumptions = _assumptions(times, shapes)
    return result


def _assumptions(times: StepTimes, shapes: Sequence[RunShape]) -> list[str]:
    notes = [f"per-image step and inference times from {times.source.name} (batch-normalised medians)"]
    if times.device == "cuda":
        notes.append(f"the GPU benchmark's {GPU_PRECISION} rows at its largest batch per model")
    if times.device == "cpu":
        notes.append(
            f"ASSUMED: a GPU is {times.speedup:g}x faster than the benchmark's CPU run; no GPU benchmark "
            "(neurons_cuda.json) exists yet. Replace with --gpu-speedup, or run `python benchmarks/neurons.py --gpu`"
        )
    notes += [
        "session II of a neuron the benchmark timed as its own variant costs that row, of another learned neuron "
        "the 2-arg net's fastest measured exact path; session III the frozen lookup-table path where the neuron has "
        "tables, else session II's; session I is not counted",
        "CNN time scales with the input's area relative to CIFAR's 32x32; MLP time does not depend on the input",
        "every epoch trains on the training split and validates on the validation split; time is linear in images "
        f"(batch-normalised), with at least {MIN_STEP_S * 1000:g} ms per training step",
        f"AutoAttack standard: {AUTOATTACK_GRADIENTS_ALL} gradients per image, and on the images still robust "
        f"{AUTOATTACK_GRADIENTS_ROBUST} gradients and {AUTOATTACK_QUERIES_ROBUST} forward queries; the fraction "
        f"still robust is the paper's published robust accuracy where it has one, else {ASSUMED_ROBUST_FRACTION}",
        "other attacks: `steps` gradients per image and epsilon (100 when not set); corrupted sets: one forward pass "
        "per image of each set (CIFAR-10-C 19 x 5 sets, MNIST-C 16)",
        _gradient_assumption(times, shapes),
    ]
    if proxied := sorted({f"{s.neuron} ({BENCHMARK_MODELS[s.net][0]})" for s in shapes if priced_as_2arg(times, s)}):
        notes.append(f"the benchmark has no row of its own for {', '.join(proxied)}: priced as the 2-arg neuron")
    if times.resnet_source is not None and any(BENCHMARK_MODELS[s.net][0] == "resnet" for s in shapes):
        divided = "" if times.resnet_speedup == 1 else f", divided by the assumed {times.resnet_speedup:g}x"
        notes.append(
            f"ResNet: each neuron's own row of {times.resnet_source.name}{divided} (first-stage width "
            f"{times.resnet_width}), in both sessions (no lookup-table row); time scales with the square of the "
            "run's width relative to it (its convolutions' cost; the inner net's share grows only linearly, so a "
            "narrower run is underestimated, a wider one overestimated)"
        )
    if any(not s.fixed_schedule for s in shapes):
        notes.append("experiments marked `max` stop early: their cost is an upper bound at trainer.max_epochs")
    return notes


def _gradient_assumption(times: StepTimes, shapes: Sequence[RunShape]) -> str:
    models = sorted({BENCHMARK_MODELS[shape.net][0] for shape in shapes})
    measured = [model for model in models if model in times.attack_gradient]
    text = "an attack's gradient costs "
    if measured:
        text += f"the benchmark's image gradient with frozen weights ({', '.join(measured)})"
    unmeasured = [model for model in models if model not in measured]
    if unmeasured:
        text += "; " if measured else ""
        # measured elsewhere at 0.6-1.2x a training step (4x for kan's MLP): no bound either way
        text += f"a training step where the benchmark timed no image gradient ({', '.join(unmeasured)})"
    return text


def shape_of(experiment: str, config: Mapping[str, Any]) -> RunShape:
    """A run's :class:`RunShape` from its resolved config (as ``lit_dendrite.cli.resolved_config`` gives it)."""
    net = config["model"]["net"]
    net_name = net["class_path"].rsplit(".", 1)[-1]
    if net_name not in BENCHMARK_MODELS:
        raise ValueError(f"no benchmark model for {net_name}; the estimate knows {sorted(BENCHMARK_MODELS)}")
    protocol, trainer = config.get("protocol") or {}, config.get("trainer") or {}
    args = net.get("init_args") or {}
    width = None
    if BENCHMARK_MODELS[net_name][0] == "resnet":
        width = scaled_widths(args.get("widths", RESNET18_WIDTHS), args.get("width_multiplier", 1.0))[0]
    max_epochs = trainer.get("max_epochs") or 1000
    joint, frozen = protocol.get("joint_epochs"), protocol.get("frozen_epochs")
    return RunShape(
        experiment=experiment,
        dataset=config["data"]["dataset"],
        net=net_name,
        neuron=net["init_args"]["neuron"],
        input_side=dataset_spec(config["data"]["dataset"]).in_shape[-1],
        batch_size=int(config["data"]["batch_size"]),
        joint_epochs=joint or max_epochs,
        frozen_epochs=frozen or max_epochs,
        fixed_schedule=joint is not None and (frozen is not None or net["init_args"]["neuron"] == "relu"),
        width=width,
    )


def run_shapes(sweep: Sweep) -> list[RunShape]:
    """Every run's :class:`RunShape` from its experiment config with the run's overrides applied (dotted keys);
    each experiment config is read once."""
    shapes, configs = [], {}
    for run in sweep.runs:
        if run.config not in configs:
            configs[run.config] = yaml.safe_load(run.config.read_text())
        config = copy.deepcopy(configs[run.config])
        for key, value in run.overrides:
            *parents, last = key.split(".")
            node = config
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        try:
            shapes.append(shape_of(run.experiment, config))
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"{run.config}: no {error} for the cost estimate; the config lacks a key it needs"
            ) from None
    return shapes


def published_robust_fractions() -> dict[tuple[str, str, str], float]:
    """The paper's robust accuracies as fractions, by (dataset, net, neuron)."""
    from lit_dendrite.analysis.paper import NEURONS, paper_numbers

    fractions = {}
    for row in paper_numbers()["robust_accuracy"]["rows"]:
        for neuron in NEURONS:
            fractions[(row["dataset"], row["net"], neuron)] = row[neuron] / 100
    return fractions


def sweep_cost(
    sweep: Sweep, results_dir: str | Path = BENCHMARK_RESULTS, gpu_speedup: float = DEFAULT_GPU_SPEEDUP
) -> str:
    """The sweep's GPU-hours from the benchmark's step times in ``results_dir``, formatted with its assumptions, or
    why there is no estimate (a dry run still shows the runs)."""
    try:
        shapes = run_shapes(sweep)
        times = load_step_times(results_dir, gpu_speedup)
    except (ValueError, FileNotFoundError) as error:
        return f"Cost estimate: not available: {error}"
    if unmeasured := sorted({s.net for s in shapes if BENCHMARK_MODELS[s.net][0] not in times.train}):
        return (
            f"Cost estimate: not available: no benchmark results for {', '.join(unmeasured)} in {results_dir}; "
            "run `python benchmarks/resnet.py` first"
        )
    datasets = sorted({shape.dataset for shape in shapes})
    evaluation = {d: settings_for(sweep.evaluate, d) for d in datasets} if sweep.evaluate else {}
    return estimate(shapes, times, evaluation, published_robust_fractions()).format()
