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
from typing import Any

import torch
from measure import interleaved_medians, sync, timed_kinds, train_step_fn
from neurons import CONTROLS, PATHS, build, data, forward_flops, set_path, variant_neuron
from torch import nn

CASES = (("mlp", 200), ("cnn", 50), ("cnn", 256))
PRECISIONS = ("fp32", "tf32", "bf16-mixed")
# Datasheet dense (no sparsity) tensor-core peaks in TFLOP/s, SXM parts: bf16, tf32.
DATASHEET_PEAK = {"H200": {"bf16": 989.4, "tf32": 494.7}, "H100": {"bf16": 989.4, "tf32": 494.7},
                  "A100": {"bf16": 312.0, "tf32": 156.0}}  # fmt: skip


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
    return {"model": model, "batch": batch, "precision": precision, "rows": rows}


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
    assert neuron.inner.implementation(z) == "fused", "the benchmark must time the fused op"
    return {"forward": flops / seconds["forward"] / 1e12, "forward_backward": 3 * flops / seconds["train"] / 1e12}


def datasheet_peak(name: str) -> dict[str, float] | None:
    return next((peak for key, peak in DATASHEET_PEAK.items() if key in name), None)


def run_gpu(quick: bool) -> dict[str, Any]:
    """Every GPU measurement; the JSON document ``neurons.py --gpu`` writes."""
    device = torch.device("cuda")
    name = torch.cuda.get_device_name()
    set_precision("fp32")
    matmul = {"fp32": dense_matmul_tflops(torch.float32, device), "bf16": dense_matmul_tflops(torch.bfloat16, device)}
    set_precision("tf32")
    matmul["tf32"] = dense_matmul_tflops(torch.float32, device)
    cases = [
        benchmark_case(model, batch, precision, quick, device) for model, batch in CASES for precision in PRECISIONS
    ]
    inner = {precision: inner_tflops(precision, device) for precision in PRECISIONS}
    product = {"fp32": "fp32", "tf32": "tf32", "bf16-mixed": "bf16"}
    peak = datasheet_peak(name)
    for precision, figures in inner.items():
        figures["fraction_of_dense_matmul"] = figures["forward_backward"] / matmul[product[precision]]
        if peak is not None and product[precision] in peak:
            figures["fraction_of_datasheet_peak"] = figures["forward_backward"] / peak[product[precision]]
    set_precision("fp32")
    x = torch.rand(1, 3, 32, 32, device=device)
    flops = {neuron: forward_flops(build("cnn", neuron, device).eval(), x) for neuron in ("2arg", "relu")}
    return {"device": name, "matmul_tflops": matmul, "datasheet_peak_tflops": peak, "cases": cases,
            "inner_tflops": inner, "cnn_forward_flops_per_image": flops}  # fmt: skip


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
        print(f"inner net {precision}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
