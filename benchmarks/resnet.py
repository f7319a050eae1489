"""Training-step time, inference and peak memory of the dendritic ResNet-18: 2-arg and 1-arg against ReLU.

    python benchmarks/resnet.py [--width-multiplier M] [--batch N] [--rounds R] [--threads N] [--out PATH]

Builds ``DendriticResNet`` on CIFAR-shaped input (2-arg, and 1-arg and ReLU with ``match_neuron: 2arg``), times
a training step (forward, backward, Adam step), inference (a forward pass in eval mode, with the exact inner net
as attacks use it) and an attack's image gradient (the same, with frozen weights) of each in interleaved rounds in
one process (medians, see ``benchmarks/measure.py``), and measures each step's peak memory: on CUDA the allocator's
peak, on the CPU in a child process per net (RSS high-water mark above the built model, as ``benchmarks/neurons.py``
does). Prints the ratios to ReLU and writes JSON atomically (default ``benchmarks/results/resnet_<device>.json``),
which the sweep's cost estimate (``lit_dendrite/sweeps/cost.py``) reads for ResNet runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
from measure import CHILD_ENV, step_peak_bytes, sync, timed_kinds, train_step_fn  # next to this file

from lit_dendrite.commandline import argument_parser
from lit_dendrite.io import write_json_atomic
from lit_dendrite.nn import DendriticResNet, count_parameters
from lit_dendrite.sweeps.step_times import BENCHMARK_RESULTS

NEURONS = ("relu", "2arg", "1arg")


def build(neuron: str, multiplier: float, device: torch.device) -> DendriticResNet:
    """The 2-arg ResNet-18 or its parameter-matched control, CIFAR-10 shaped."""
    torch.manual_seed(0)
    match = {} if neuron == "2arg" else {"match_neuron": "2arg"}
    return DendriticResNet(neuron=neuron, width_multiplier=multiplier, **match).to(device).train()


def batch_data(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, 32, 32, generator=generator).to(device), (torch.arange(batch) % 10).to(device)


def peak_memory_mib(neuron: str, args: argparse.Namespace, device: torch.device) -> float:
    """Peak memory of two training steps above the built model: CUDA allocator peak, or a child process's RSS."""
    if device.type == "cuda":
        net = build(neuron, args.width_multiplier, device)
        step = train_step_fn(net, *batch_data(args.batch, device), autocast=False)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    child = [sys.executable, __file__, "--memory-child", neuron, "--threads", str(torch.get_num_threads())]
    child += ["--width-multiplier", str(args.width_multiplier), "--batch", str(args.batch)]
    proc = subprocess.run(child, capture_output=True, text=True, check=False, env={**os.environ, **CHILD_ENV})
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {neuron} failed:\n{proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]) / 2**20


def memory_child(neuron: str, args: argparse.Namespace) -> None:
    """Child process body: print the peak RSS of two training steps above the built model (``step_peak_bytes``)."""
    device = torch.device("cpu")

    def make_step():
        return train_step_fn(build(neuron, args.width_multiplier, device), *batch_data(args.batch, device), False)

    print(json.dumps({"peak_bytes": step_peak_bytes(make_step)}))


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("benchmarks/resnet.py", __doc__.split("\n\n")[0])
    parser.add_argument("--width-multiplier", type=float, default=0.25, help="of ResNet-18's widths (default 0.25)")
    parser.add_argument("--batch", type=int, default=32, help="images per training step (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.memory_child, args)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x, y = batch_data(args.batch, device)
    nets = {neuron: build(neuron, args.width_multiplier, device) for neuron in NEURONS}
    seconds = timed_kinds(nets, x, y, x, device, warmup=1, rounds=args.rounds)
    sync(device)
    rows = {
        neuron: {
            "widths": list(net.widths),
            "parameters": count_parameters(net),
            "train_step_s": seconds["train"][neuron],
            "inference_images_per_s": args.batch / seconds["inference"][neuron],
            "attack_gradient_s": seconds["attack"][neuron],
            "peak_train_memory_mib": peak_memory_mib(neuron, args, device),
        }
        for neuron, net in nets.items()
    }
    relu = rows["relu"]
    for row in rows.values():
        row["train_step_ratio"] = row["train_step_s"] / relu["train_step_s"]
        row["attack_gradient_ratio"] = row["attack_gradient_s"] / relu["attack_gradient_s"]
        row["peak_memory_ratio"] = row["peak_train_memory_mib"] / relu["peak_train_memory_mib"]
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()}, {os.cpu_count()} CPUs"
    result = {
        "command": " ".join(["resnet.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "width_multiplier": args.width_multiplier,
        "batch": args.batch,
        "rows": rows,
    }
    print(f"machine: {machine}  threads: {result['threads']}  load: {result['load_average'][0]:.1f}")
    header = f"{'neuron':6} {'widths':>20} {'params':>10} {'step s':>8} {'x ReLU':>7} {'infer img/s':>11}"
    print(f"{header} {'attack s':>8} {'x ReLU':>7} {'peak MiB':>9} {'x ReLU':>7}")
    for neuron, row in rows.items():
        print(
            f"{neuron:6} {row['widths']!s:>20} {row['parameters']:>10,} {row['train_step_s']:8.3f} "
            f"{row['train_step_ratio']:7.2f} {row['inference_images_per_s']:11.1f} "
            f"{row['attack_gradient_s']:8.3f} {row['attack_gradient_ratio']:7.2f} "
            f"{row['peak_train_memory_mib']:9.1f} {row['peak_memory_ratio']:7.2f}"
        )
    out = args.out or BENCHMARK_RESULTS / f"resnet_{device.type}.json"
    write_json_atomic(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
