"""How the benchmarks measure: the timed functions (a training step, inference, an attack's image gradient), timing
in interleaved rounds, and the environment of the child processes that measure peak memory.

Shared by ``neurons.py``, ``neurons_gpu.py`` and ``resnet.py`` (next to this file).
"""

from __future__ import annotations

import ctypes
import gc
import math
import statistics
import time
from collections.abc import Collection
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lit_dendrite.robustness.adversarial import exact_model
from lit_dendrite.sweeps.step_times import UNMEASURED_PATHS

MIN_MEASURE_S = 0.05

# glibc malloc raises its mmap threshold as large blocks are freed, after which freed tensors stay in the heap and the
# RSS high-water mark depends on allocation history: the same ReLU CNN step peaked 140-154 MiB above its model in
# three runs, the 2-arg step 144-168. With the threshold fixed at 1 MiB, freed tensors go back to the OS and the
# three runs agreed within 2% (ReLU 94.0-95.9 MiB, 2-arg native 121.3-125.1).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer sees it done."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``fn`` after ``warmup`` calls (the minimum is the figure least
    disturbed by other processes on a shared machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def train_step_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: bool):
    """One training step (train mode, forward, backward, Adam step)."""
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def step() -> None:
        net.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()

    return step


def inference_fn(net: nn.Module, x: torch.Tensor, autocast: bool):
    """One forward pass in eval mode, without gradients."""

    def infer() -> None:
        net.eval()
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            net(x)

    return infer


def attack_gradient_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One gradient of the loss with respect to the images, as an attack takes it (``exact_model``: eval mode, exact
    inner net, frozen weights)."""

    def gradient() -> None:
        with exact_model(net):
            images = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(net(images), y), images)

    return gradient


def timed_kinds(
    nets: dict[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    x_eval: torch.Tensor,
    device: torch.device,
    warmup: int,
    rounds: int,
    autocast: bool = False,
    autocast_variants: Collection[str] = (),
) -> dict[str, dict[str, float]]:
    """Median seconds of each net's training step (on ``x``), inference and attack gradient (on ``x_eval``; none for
    :data:`UNMEASURED_PATHS`), ``{"train" | "inference" | "attack": {variant: s}}``. All are timed in the same
    interleaved rounds, so that load coming and going hits the ratio of an attack gradient to a training step as
    little as the ratio of one variant to another. Training and inference run under bf16 autocast with ``autocast``,
    or for the ``autocast_variants``; attacks take their gradients without autocast, as evaluations run (so an
    autocast variant gets none: it would time its net's float32 path)."""
    fns = {}
    for variant, net in nets.items():
        under_autocast = autocast or variant in autocast_variants
        fns[f"train {variant}"] = train_step_fn(net, x, y, under_autocast)
        fns[f"inference {variant}"] = inference_fn(net, x_eval, under_autocast)
        if variant not in (*UNMEASURED_PATHS, *autocast_variants):
            fns[f"attack {variant}"] = attack_gradient_fn(net, x_eval, y)
    seconds = interleaved_medians(fns, device, warmup, rounds)
    kinds: dict[str, dict[str, float]] = {"train": {}, "inference": {}, "attack": {}}
    for name, value in seconds.items():
        kind, variant = name.split(" ", 1)
        kinds[kind][variant] = value
    return kinds


def interleaved_medians(fns: dict[str, object], device: torch.device, warmup: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds (every function once per round,
    repeated so that one measurement lasts at least ``MIN_MEASURE_S``): load that comes and goes on a shared
    machine then hits every variant alike instead of whichever ran at the time."""
    calls = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        calls[name] = max(1, math.ceil(MIN_MEASURE_S / (time.perf_counter() - start)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def step_peak_bytes(make_step) -> int:
    """Peak RSS of two training steps above the built model, in bytes. ``make_step()`` builds a model and returns
    its training step. A first model's step runs and is thrown away before the measurement, so that what a process
    does once (loading kernels' code, oneDNN's JIT for bf16, the fused kernels' self-check) is not counted as the
    step's memory: it counted 5-12 MiB, more than the MLP's whole step (about 4 MiB)."""
    make_step()()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the thrown-away step freed goes back to the OS
    step = make_step()
    base = status_kib("VmRSS") * 1024
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux 4.0+)
    for _ in range(2):
        step()
    return status_kib("VmHWM") * 1024 - base


def status_kib(field: str) -> int:
    """A field of this process's ``/proc/self/status`` in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")
