"""Speed and memory of two-argument neurons and the baseline neurons against the ReLU control and a plain vectorised
reference.

    python benchmarks/neurons.py [--quick] [--gpu] [--threads N] [--compile] [--variants V...] [--out PATH]

On the CPU, for the paper's MLP (MNIST shapes, batch 200) and CNN (CIFAR shapes, batch 50) it measures, in one process,
the training step time (forward, backward, Adam step) and inference images/s of the 2-arg net along each path
(``reference``: the plain vectorised implementation kept below; ``plain``, ``lean`` and ``fused``: the library's exact
implementations, ``fused`` (the custom op, here its native kernel) being the one that ``impl="auto"`` picks;
``fused_bf16``: the same op with bf16 products and float32 accumulation, asked for in float32 training; ``table``:
the frozen fast path, whose training step is session III's, outer net only, and whose CPU inference runs the native pass
of ``lit_dendrite/nn/native.py``; ``LIT_DENDRITE_NATIVE=0`` times the pure-torch one), the 2-arg net under bf16
autocast (``bf16_mixed``: ``impl="auto"``, as ``--trainer.precision bf16-mixed`` trains), the image gradient an attack
takes at every step (eval mode, exact inner net, frozen weights; not for ``reference`` and ``table``, which no attack
runs, nor for ``bf16_mixed``: attacks run without autocast), the paper's controls at matched parameters
(:data:`CONTROLS`: ReLU, and the 1-arg neuron along its ``impl="auto"`` path), each of :data:`BASELINE_NEURONS`
(``pau``, ``kan``, ``celltypes`` with its 10 types) at matched parameters along its own path, the analytic forward
FLOPs per image, the machine's dense fp32 matmul GFLOP/s and the inner net's achieved training GFLOP/s on the CNN's
first layer. Peak training memory is measured in a child process per model and path (RSS high-water mark of two
steps minus RSS after building the model, after a thrown-away first model's step has loaded what a process loads once,
with glibc's mmap threshold fixed so that the mark follows live memory). Step, inference and
attack-gradient times are medians over rounds that time each of them for every variant in turn, so that load coming and
going on a shared machine hits them alike. Prints a table and writes JSON atomically.

``--gpu`` runs the GPU measurements of ``benchmarks/neurons_gpu.py`` instead (CNN batch 50 and 256, fp32, tf32 and
bf16-mixed, CUDA allocator peaks, the inner net's TFLOP/s and the paper sweep's GPU-hours), most important first, the
JSON rewritten after each step; ``--gpu --simulate NAME`` runs the same steps on CPU with tiny problems, as a dry run of
``benchmarks/gpu_check.sh`` (see docs/gpu.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from measure import CHILD_ENV, step_peak_bytes, timed, timed_kinds, train_step_fn  # next to this file
from neurons_table import markdown_table, print_table
from torch import nn

from lit_dendrite.commandline import argument_parser
from lit_dendrite.io import write_json_atomic
from lit_dendrite.nn import DendriticCNN, DendriticMLP, InnerNet, maybe_compile
from lit_dendrite.nn.inner_check import PATHS as INNER_PATHS
from lit_dendrite.nn.neurons import LearnedNeuron, Neuron
from lit_dendrite.nn.tabulated import exact_inner, tabulate_inner
from lit_dendrite.sweeps.cost import sweep_cost
from lit_dendrite.sweeps.spec import load_sweep
from lit_dendrite.sweeps.step_times import BENCHMARK_RESULTS, CPU_RESULTS, GPU_RESULTS

PATHS = ("reference", "plain", "lean", "fused", "fused_bf16", "table")
"""The 2-arg net's evaluation paths (see :func:`set_path`)."""
AUTOCAST_VARIANTS = ("bf16_mixed",)
"""Variants of the 2-arg net whose training step, inference and memory run under CPU bf16 autocast (``impl="auto"``)."""
CONTROLS = ("relu", "1arg")
"""The paper's controls, each timed as a variant of its own name, width-matched to the 2-arg net (ReLU is every
ratio's baseline)."""
BASELINE_NEURONS = ("pau", "kan", "celltypes")
"""Other learned neurons, each timed as a variant of its own name, width-matched to the 2-arg net."""
SIMULATED_RESULTS = "neurons_simulated.json"  # --gpu --simulate: never mistaken for a GPU's figures
PAPER_SWEEP = Path(__file__).resolve().parents[1] / "configs" / "sweep" / "paper.yaml"  # priced after a --gpu run
MODELS = {
    "mlp": {"build": DendriticMLP, "in_shape": (1, 28, 28), "batch": 200},
    "cnn": {"build": DendriticCNN, "in_shape": (3, 32, 32), "batch": 50},
}


class ReferenceNeuron(Neuron):
    """The plain vectorised implementation: rows made contiguous, one MLP call on (rows, arity), reshaped back
    (the permute copies it needed on NCHW maps are free on the channels-last maps the conv layers now give)."""

    def __init__(self, inner: InnerNet) -> None:
        super().__init__()
        self.inner = inner
        self.arity = inner.arity

    def forward(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        moved = x.movedim(dim, -1).contiguous()
        rows = moved.reshape(-1, moved.shape[-1])
        for linear in self.inner.linears[:-1]:
            rows = F.relu(linear(rows))
        return self.inner.linears[-1](rows).view(moved.shape[:-1])


def build(model: str, neuron: str, device: torch.device) -> nn.Module:
    """The paper's net (2-arg) or its parameter-matched control, with dropout as in the paper."""
    torch.manual_seed(0)
    spec = MODELS[model]
    kwargs = {"neuron": neuron} if neuron == "2arg" else {"neuron": neuron, "match_neuron": "2arg"}
    return spec["build"](**kwargs).to(device)


def variant_neuron(variant: str) -> str:
    """The neuron a benchmark variant builds: a control, a baseline neuron, or the 2-arg net (its paths)."""
    return variant if variant in (*CONTROLS, *BASELINE_NEURONS) else "2arg"


def set_path(net: nn.Module, path: str, calibration: torch.Tensor | None) -> None:
    """Switch a 2-arg net to one evaluation path (``table`` freezes the inner net and tabulates it)."""
    if path == "reference":
        for module in list(net.modules()):
            if isinstance(getattr(module, "neuron", None), LearnedNeuron):
                module.neuron = ReferenceNeuron(module.neuron.inner)
    elif path in ("plain", "lean", "fused", "fused_bf16"):
        net.inner.impl = path
    elif path == "table":
        tabulate_inner(net, calibration=[calibration])
    else:
        raise ValueError(f"unknown path {path!r}; choose one of {PATHS}")


def data(model: str, batch: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *MODELS[model]["in_shape"], generator=generator)
    return x.to(device), (torch.arange(batch) % 10).to(device)


def forward_flops(net: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Analytic multiply-add FLOPs (x2) per image of convolutions, linears and inner nets (elementwise ops excluded)."""
    counts = {"outer": 0.0, "inner": 0.0}

    def count(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            counts["outer"] += 2 * out.numel() * per_output
        elif isinstance(module, nn.Linear):
            counts["outer"] += 2 * out.numel() * module.in_features
        elif isinstance(module, LearnedNeuron):
            macs = sum(lin.in_features * lin.out_features for lin in module.inner.linears)
            counts["inner"] += 2 * out.numel() * macs

    inner_linears = {id(lin) for m in net.modules() if isinstance(m, InnerNet) for lin in m.linears}
    handles = [
        m.register_forward_hook(count)
        for m in net.modules()
        if isinstance(m, nn.Conv2d | LearnedNeuron) or (isinstance(m, nn.Linear) and id(m) not in inner_linears)
    ]
    with torch.no_grad():
        net(x[:1])
    for handle in handles:
        handle.remove()
    return {**counts, "total": counts["outer"] + counts["inner"]}


def matmul_gflops(device: torch.device, size: int) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    seconds = timed(lambda: a @ b, device, warmup=2, repeats=5)
    return 2 * size**3 / seconds / 1e9


def inner_gflops(device: torch.device, batch: int, quick: bool) -> dict[str, float]:
    """Achieved training GFLOP/s (3x forward FLOPs per fwd+bwd) of the inner net on the CNN's first layer."""
    torch.manual_seed(0)
    inner = InnerNet(arity=2).to(device)
    x = torch.randn(batch, 30, 30, 60, 2, device=device, requires_grad=True)  # as the conv layer lays it out
    rows = x.numel() // 2
    flops = 3 * 2 * rows * sum(lin.in_features * lin.out_features for lin in inner.linears)
    reference = ReferenceNeuron(inner)
    result = {}
    for name in (path for path in PATHS if path != "table"):
        inner.impl = "plain" if name == "reference" else name
        neuron = reference if name == "reference" else inner.evaluate
        seconds = timed(lambda neuron=neuron: neuron(x, -1).sum().backward(), device, 1, 3 if quick else 5)
        result[name] = flops / seconds / 1e9
    return result


def peak_memory_child(model: str, path: str, device: str) -> tuple[int, list[str]]:
    """Run one training-step measurement in a fresh process; returns the peak bytes above the built model and the
    inner-net implementations its steps ran (``[]`` where no inner net runs)."""
    spec = json.dumps({"model": model, "path": path, "device": device})
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child", spec, "--threads", str(torch.get_num_threads())],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **CHILD_ENV},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {model}/{path} failed:\n{proc.stderr[-2000:]}")
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    return int(measured["peak_bytes"]), measured["inner_paths"]


def memory_child(spec: dict[str, str]) -> None:
    """Child process body: print the peak of two training steps above the built model (:func:`step_peak_bytes`) and
    the inner-net implementations they ran (a fresh process: its path log holds this variant's only)."""
    device = torch.device(spec["device"])
    model, path = spec["model"], spec["path"]

    def make_step():
        net = build(model, variant_neuron(path), device).train()
        x, y = data(model, MODELS[model]["batch"], device)
        if path in PATHS:
            set_path(net, path, x)
        return train_step_fn(net, x, y, autocast=path in AUTOCAST_VARIANTS)

    peak = step_peak_bytes(make_step)
    print(json.dumps({"peak_bytes": peak, "inner_paths": INNER_PATHS.summary()["used"]}))


def benchmark_model(
    model: str, device: torch.device, quick: bool, compile_: bool, only: Sequence[str] | None = None
) -> dict[str, object]:
    batch = MODELS[model]["batch"]
    warmup, rounds = (1, 3) if quick else (2, 7)
    x, y = data(model, batch, device)
    x_eval, _ = data(model, batch, device, seed=1)
    variants = [*CONTROLS, *BASELINE_NEURONS, *PATHS, *AUTOCAST_VARIANTS] + (["compiled"] if compile_ else [])
    variants = [v for v in variants if only is None or v == "relu" or v in only]  # ReLU is every ratio's baseline
    paths = [v for v in variants if v in PATHS]
    nets = {}
    for variant in variants:
        net = nets[variant] = build(model, variant_neuron(variant), device)
        if variant in paths:
            set_path(net, variant, x)
        maybe_compile(net, variant == "compiled")
    seconds = timed_kinds(nets, x, y, x_eval, device, warmup, rounds, autocast_variants=AUTOCAST_VARIANTS)
    rows: dict[str, dict[str, float]] = {}
    for variant, net in nets.items():
        net.eval()
        row = {"train_step_s": seconds["train"][variant]}
        row["inference_images_per_s"] = batch / seconds["inference"][variant]
        if variant in seconds["attack"]:
            row["attack_gradient_s"] = seconds["attack"][variant]
        if variant != "compiled":
            peak, row["inner_paths"] = peak_memory_child(model, variant, device.type)
            row["peak_train_memory_mib"] = peak / 2**20
        if variant == "table":
            with torch.no_grad():
                fast = net(x_eval)
            with torch.no_grad(), exact_inner(net):
                exact = net(x_eval)
            row["prediction_disagreement_pp"] = 100 * float((fast.argmax(1) != exact.argmax(1)).float().mean())
            row["max_logit_error"] = float((fast - exact).abs().max())
        rows[variant] = row
        print(f"  {model} {variant}: {row}", file=sys.stderr, flush=True)
    flops = {
        "2arg": forward_flops(build(model, "2arg", device).eval(), x),
        "relu": forward_flops(build(model, "relu", device).eval(), x),
    }
    return {"batch": batch, "rows": rows, "forward_flops_per_image": flops}


def ratios(models: dict[str, dict[str, object]], matmul: float, inner: dict[str, float]) -> dict[str, float]:
    """The issue's target figures: 2-arg (each path), the 1-arg control and the baseline neurons over the ReLU
    control, and the inner
    net's fraction of dense matmul."""
    out = {}
    for model, result in models.items():
        rows, relu = result["rows"], result["rows"]["relu"]
        flops = result["forward_flops_per_image"]
        out[f"{model}_flop_ratio"] = flops["2arg"]["total"] / flops["relu"]["total"]
        for path in (*PATHS, *AUTOCAST_VARIANTS, *CONTROLS[1:], *BASELINE_NEURONS, "compiled"):
            if path not in rows:
                continue
            out[f"{model}_{path}_train_step_ratio"] = rows[path]["train_step_s"] / relu["train_step_s"]
            out[f"{model}_{path}_inference_speed_ratio"] = (
                rows[path]["inference_images_per_s"] / relu["inference_images_per_s"]
            )
            if "attack_gradient_s" in rows[path]:
                out[f"{model}_{path}_attack_gradient_ratio"] = (
                    rows[path]["attack_gradient_s"] / relu["attack_gradient_s"]
                )
            if "peak_train_memory_mib" in rows[path]:
                out[f"{model}_{path}_peak_memory_ratio"] = (
                    rows[path]["peak_train_memory_mib"] / relu["peak_train_memory_mib"]
                )
    for path, gflops in inner.items():
        out[f"inner_{path}_fraction_of_matmul"] = gflops / matmul
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("benchmarks/neurons.py", __doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (numbers are noisier)")
    parser.add_argument("--gpu", action="store_true", help="the GPU measurements (benchmarks/neurons_gpu.py)")
    parser.add_argument(
        "--simulate",
        metavar="DEVICE_NAME",
        default=None,
        help="with --gpu: run its plan on CPU with tiny problems as if on DEVICE_NAME (tries the machinery, measures "
        "nothing of a GPU; default output benchmarks/results/neurons_simulated.json)",
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the plain path")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=[*CONTROLS[1:], *BASELINE_NEURONS, *PATHS, *AUTOCAST_VARIANTS, "compiled"],
        default=None,
        help="time only these variants beside the ReLU control (default: all); the inner net's GFLOP/s need a path",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benchmarks/results/neurons_<device>.json)"
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="JSON",
        default=None,
        help="measure nothing: print the CPU results file JSON as docs/performance.md's table",
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.markdown is not None:
        print(markdown_table(json.loads(args.markdown.read_text())))
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(json.loads(args.memory_child))
        return
    command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    if args.gpu:
        if args.simulate is None and not torch.cuda.is_available():
            parser.error("--gpu needs a CUDA device; run without --gpu for the CPU figures (or try it with --simulate)")
        import triton
        from neurons_gpu import print_gpu_table, run_gpu  # the GPU half, next to this file

        device = torch.device("cpu" if args.simulate else "cuda")
        name = args.simulate or torch.cuda.get_device_name()
        out = args.out or BENCHMARK_RESULTS / (SIMULATED_RESULTS if args.simulate else GPU_RESULTS)
        header = {"command": command, "torch": torch.__version__, "triton": triton.__version__}
        result = run_gpu(args.quick or bool(args.simulate), out, header, device, name, simulated=bool(args.simulate))
        print_gpu_table(result)
        print(f"wrote {out}")
        if out.name == GPU_RESULTS and not result["errors"]:  # the paper sweep's cost from these very step times
            print(sweep_cost(load_sweep(PAPER_SWEEP), out.parent))
        return
    device = torch.device("cpu")
    out = args.out or BENCHMARK_RESULTS / CPU_RESULTS
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    matmul = matmul_gflops(device, 1024 if args.quick else 2048)
    models = {name: benchmark_model(name, device, args.quick, args.compile, args.variants) for name in MODELS}
    timed_paths = args.variants is None or any(v in PATHS for v in args.variants)
    inner = inner_gflops(device, MODELS["cnn"]["batch"], args.quick) if timed_paths else {}
    result = {
        "command": command,
        "machine": machine,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "matmul_gflops": matmul,
        "inner_gflops": inner,
        "models": models,
    }
    result["ratios"] = ratios(models, matmul, inner)
    print_table(result)
    write_json_atomic(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
