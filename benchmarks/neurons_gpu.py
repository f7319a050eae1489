"""The GPU half of ``benchmarks/neurons.py`` (``--gpu``): speed and memory of two-argument nets on one CUDA device.

For the paper's MLP (batch 200) and CNN (batch 50 and 256), in fp32, tf32 and bf16-mixed, it measures the training
step (forward, backward, Adam step), inference images/s, an attack's image gradient (eval mode, exact inner net,
frozen weights; not for ``table``) and the step's CUDA allocator peak above the built model
(``max_memory_allocated``) of the paper's controls (ReLU, and 1-arg along its ``impl="auto"`` path) and of the 2-arg
net along three paths: ``lean`` (chunked torch ops;
under bf16-mixed, where it cannot run, ``plain``: what ``impl="auto"`` did there before the fused op), ``fused`` (the
Triton kernel, what ``impl="auto"`` picks on CUDA) and ``table`` (the frozen table of session III). Then the inner
net's achieved TFLOP/s in forward and forward+backward on the CNN's first layer (batch 256) for each precision,
against the largest dense matmul the device runs in that precision in the same process and the datasheet's dense
peak where the device is known. ``neurons.py --gpu`` then prints ``configs/sweep/paper.yaml``'s GPU-hours from the
JSON just written, through the same estimate as ``sweep.py --dry-run`` (``lit_dendrite/sweeps/cost.py``). Times are
medians of interleaved rounds (see :func:`measure.interleaved_medians`).
"""

from __future__ import annotations

import math
import traceback
from pathlib import Path
from typing import Any

import torch
from measure import interleaved_medians, sync, timed_kinds, train_step_fn
from neurons import CONTROLS, PATHS, build, data, forward_flops, set_path, variant_neuron
from torch import nn

from lit_dendrite.io import write_json_atomic
from lit_dendrite.nn.inner_check import PATHS as INNER_PATHS

PRECISIONS = ("fp32", "tf32", "bf16-mixed")
PRODUCT = {"fp32": "fp32", "tf32": "tf32", "bf16-mixed": "bf16"}
# What runs, most important first (the GPU targets: CNN batch 256, bf16 first), so that a run cut short by its time
# limit has measured what matters: ("case", model, batch, precision) or ("inner", precision).
PLAN = (
    ("case", "cnn", 256, "bf16-mixed"), ("inner", "bf16-mixed"), ("case", "cnn", 256, "fp32"),
    ("case", "cnn", 256, "tf32"), ("inner", "fp32"), ("inner", "tf32"),
    *(("case", "cnn", 50, precision) for precision in PRECISIONS),
    *(("case", "mlp", 200, precision) for precision in PRECISIONS),
)  # fmt: skip
# Datasheet dense (no sparsity) tensor-core peaks in TFLOP/s (bf16, tf32), by the exact name torch reports
# (``torch.cuda.get_device_name``): SXM, PCIe and NVL parts differ in clocks and power, so a substring would mislead.
DATASHEET_PEAK = {
    "NVIDIA H100 80GB HBM3": {"bf16": 989.4, "tf32": 494.7},  # H100 SXM5
    "NVIDIA H100 PCIe": {"bf16": 756.0, "tf32": 378.0},
    "NVIDIA H100 NVL": {"bf16": 835.5, "tf32": 417.5},
    "NVIDIA H200": {"bf16": 989.4, "tf32": 494.7},  # H200 SXM
    "NVIDIA H200 NVL": {"bf16": 835.5, "tf32": 417.5},
    "NVIDIA A100-SXM4-40GB": {"bf16": 312.0, "tf32": 156.0},
    "NVIDIA A100-SXM4-80GB": {"bf16": 312.0, "tf32": 156.0},
    "NVIDIA A100-PCIE-40GB": {"bf16": 312.0, "tf32": 156.0},
    "NVIDIA A100 80GB PCIe": {"bf16": 312.0, "tf32": 156.0},
}
# --simulate: the same plan on CPU with tiny problems, to try the machinery (and gpu_check.sh) before an allocation.
SIMULATED_BATCH = {"cnn": 2, "mlp": 8}
SIMULATED_MATMUL = 128


def set_precision(precision: str) -> bool:
    """Set torch's tf32 switches for ``precision``; returns whether it trains under bf16 autocast."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return precision == "bf16-mixed"


def variant_net(model: str, variant: str, x: torch.Tensor) -> nn.Module:
    """A control, or the 2-arg net on one path (``table`` tabulates on ``x``)."""
    net = build(model, variant_neuron(variant), x.device)
    if variant in PATHS:
        set_path(net, variant, x)
    return net


def peak_step_memory(step, device: torch.device) -> float:
    """CUDA allocator peak above what is allocated before two training steps, in MiB (NaN off CUDA)."""
    if device.type != "cuda":
        return math.nan
    sync(device)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step()
    sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def benchmark_case(model: str, batch: int, precision: str, quick: bool, device: torch.device) -> dict[str, Any]:
    autocast = set_precision(precision)
    warmup, rounds = (1, 3) if quick else (2, 7)
    variants = (*CONTROLS, "plain" if autocast else "lean", "fused", "table")
    x, y = data(model, batch, device)
    x_eval, _ = data(model, batch, device, seed=1)
    nets = {variant: variant_net(model, variant, x) for variant in variants}
    rows: dict[str, dict[str, float]] = {
        v: {"peak_train_memory_mib": peak_step_memory(train_step_fn(net, x, y, autocast), device)}
        for v, net in nets.items()
    }
    # attacks take their gradients in the evaluation's precision: fp32 (tf32 where the case allows it)
    seconds = timed_kinds(nets, x, y, x_eval, device, warmup, rounds, autocast)
    train_s, inference_s, gradient_s = seconds["train"], seconds["inference"], seconds["attack"]
    relu = train_s["relu"], inference_s["relu"], rows["relu"]["peak_train_memory_mib"]
    for variant in variants:
        row = rows[variant]
        row |= {"train_step_s": train_s[variant], "inference_images_per_s": batch / inference_s[variant]}
        row["train_step_x_relu"] = train_s[variant] / relu[0]
        if variant in gradient_s:
            row["attack_gradient_s"] = gradient_s[variant]
            row["attack_gradient_x_relu"] = gradient_s[variant] / gradient_s["relu"]
        row["inference_speed_x_relu"] = relu[1] / inference_s[variant]
        row["peak_memory_x_relu"] = row["peak_train_memory_mib"] / relu[2]
    del nets
    torch.cuda.empty_cache()
    return {"model": model, "batch": batch, "precision": precision, "rows": rows, "inner_path": INNER_PATHS.summary()}


def dense_matmul_tflops(dtype: torch.dtype, device: torch.device, size: int = 8192) -> float:
    """Achieved TFLOP/s of one large square matmul in ``dtype`` (tf32 when allowed and dtype is float32)."""
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    seconds = interleaved_medians({"mm": lambda: a @ b}, device, 2, 5)["mm"]
    return 2 * size**3 / seconds / 1e12


def inner_tflops(precision: str, device: torch.device, batch: int = 256) -> dict[str, float]:
    """Achieved TFLOP/s of the fused inner net on the CNN's first layer (its LayerNorm included, not counted): the
    forward alone, and forward + backward (counted as 3x the forward's FLOPs, the three 64x64 products a row costs)."""
    autocast = set_precision(precision)
    net = build("cnn", "2arg", device)
    neuron = net.features[0].neuron
    dtype = torch.bfloat16 if autocast else torch.float32
    z = torch.randn(batch, 30, 30, 2 * 60, device=device, dtype=dtype, requires_grad=True)
    rows = z.numel() // 2
    flops = 2 * rows * sum(lin.in_features * lin.out_features for lin in neuron.inner.linears)
    upstream = torch.randn(batch, 30, 30, 60, device=device, dtype=dtype)

    def forward() -> None:
        with torch.no_grad():
            neuron.normalized(z, 3)

    def train() -> None:
        neuron.normalized(z, 3).backward(upstream)

    seconds = interleaved_medians({"forward": forward, "train": train}, device, 2, 7)
    return {"forward": flops / seconds["forward"] / 1e12, "forward_backward": 3 * flops / seconds["train"] / 1e12,
            "path": neuron.inner.implementation(z)}  # fmt: skip


def datasheet_peak(name: str) -> dict[str, float] | None:
    """The datasheet's dense peaks of the device named exactly ``name``, or None for a device not listed."""
    return DATASHEET_PEAK.get(name)


def run_gpu(
    quick: bool, out: Path, header: dict[str, Any], device: torch.device, name: str, simulated: bool = False
) -> dict[str, Any]:
    """Every GPU measurement in the order of ``PLAN``, the JSON document at ``out`` rewritten after each (a step that
    raises is recorded in ``errors`` and the next one runs; a run killed by its time limit keeps the steps before it).
    ``simulated``: tiny problems, for a try on CPU under the device name ``name``."""
    peak = datasheet_peak(name)
    result: dict[str, Any] = {**header, "device": name, "simulated": simulated, "datasheet_peak_tflops": peak,
                              "matmul_tflops": {}, "cases": [], "inner_tflops": {}, "errors": []}  # fmt: skip
    if peak is None:
        result["datasheet_peak_note"] = f"no datasheet peak for {name!r}: fractions of the peak left out"
        print(result["datasheet_peak_note"], flush=True)

    def step(label: str, measure) -> None:
        try:
            measure()
        except Exception as error:  # one failed case (OOM, compile error) must not lose the others
            traceback.print_exc()
            result["errors"].append({"step": label, "error": f"{type(error).__name__}: {error}"})
        _inner_fractions(result)
        write_json_atomic(out, result)
        print(f"[gpu] {label}: written to {out}", flush=True)

    size = SIMULATED_MATMUL if simulated else 8192
    for product, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("tf32", torch.float32)):
        set_precision("tf32" if product == "tf32" else "fp32")
        step(f"matmul {product}", lambda p=product, d=dtype: result["matmul_tflops"].update(
            {p: dense_matmul_tflops(d, device, size)}))  # fmt: skip
    for kind, *what in PLAN:
        if kind == "case":
            model, batch, precision = what
            batch = SIMULATED_BATCH[model] if simulated else batch
            INNER_PATHS.reset()
            step(f"{model} batch {batch} {precision}", lambda m=model, b=batch, p=precision: result["cases"].append(
                benchmark_case(m, b, p, quick, device)))  # fmt: skip
        else:
            precision = what[0]
            step(f"inner net {precision}", lambda p=precision: result["inner_tflops"].update(
                {p: inner_tflops(p, device, 2 if simulated else 256)}))  # fmt: skip
    set_precision("fp32")
    x = torch.rand(1, 3, 32, 32, device=device)
    step("forward FLOPs", lambda: result.update(cnn_forward_flops_per_image={
        neuron: forward_flops(build("cnn", neuron, device).eval(), x) for neuron in ("2arg", "relu")}))  # fmt: skip
    return result


def _inner_fractions(result: dict[str, Any]) -> None:
    """The inner net's TFLOP/s as fractions of the dense matmul and of the datasheet peak, where both are known."""
    for precision, figures in result["inner_tflops"].items():
        product = PRODUCT[precision]
        if product in result["matmul_tflops"]:
            figures["fraction_of_dense_matmul"] = figures["forward_backward"] / result["matmul_tflops"][product]
        peak = result["datasheet_peak_tflops"] or {}
        if product in peak:
            figures["fraction_of_datasheet_peak"] = figures["forward_backward"] / peak[product]


def print_gpu_table(result: dict[str, Any]) -> None:
    print(f"\ndevice: {result['device']}  dense matmul TFLOP/s: {result['matmul_tflops']}")
    print(f"{'model':5} {'batch':>5} {'precision':10} {'variant':8} {'step s':>9} {'x ReLU':>7} {'img/s':>10} "
          f"{'x ReLU':>7} {'peak MiB':>9} {'x ReLU':>7}")  # fmt: skip
    for case in result["cases"]:
        for variant, row in case["rows"].items():
            print(f"{case['model']:5} {case['batch']:5d} {case['precision']:10} {variant:8} {row['train_step_s']:9.5f} "
                  f"{row['train_step_x_relu']:7.2f} {row['inference_images_per_s']:10.0f} "
                  f"{row['inference_speed_x_relu']:7.3f} {row['peak_train_memory_mib']:9.1f} "
                  f"{row['peak_memory_x_relu']:7.2f}")  # fmt: skip
    for precision, figures in result["inner_tflops"].items():
        print(f"inner net {precision}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in figures.items()))  # fmt: skip
    for error in result["errors"]:
        print(f"failed: {error['step']}: {error['error']}")
