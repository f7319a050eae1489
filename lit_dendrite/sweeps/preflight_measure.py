"""What a preflight job measures on the compute node for one kind of run (see :mod:`lit_dendrite.sweeps.preflight`):
the data read where the run reads it, the net built on the node's device with the fused op's self-check and the
paths it took, a few timed steps of each session after a warm-up, one image gradient per attack, and peak memory.

Steps are timed as plain torch steps (the loss, its backward and Adam's update), without Lightning's loop around them;
the cost estimate adds its minimum per step (:data:`~lit_dendrite.sweeps.cost.MIN_STEP_S`) as for the benchmark.
"""

from __future__ import annotations

import itertools
import resource
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lit_dendrite.data.corrupted import CorruptedDataModule
from lit_dendrite.models.pretrain import InnerPretrain
from lit_dendrite.nn.inner_check import PATHS, device_description, fused_unusable, specialisation
from lit_dendrite.nn.inner_kernels import bf16_products
from lit_dendrite.nn.neurons import inner_net_neurons, net_neuron_spec
from lit_dendrite.nn.tabulated import tabulate_inner, use_exact_inner
from lit_dendrite.runs import FROZEN, JOINT, PRETRAIN
from lit_dendrite.sweeps.evaluation import settings_for

DATA_BATCHES = 3  # batches read of each data set: proves the files are there and readable, not their whole content
WARMUP_STEPS, TIMED_STEPS = 2, 5  # the warm-up includes Triton's compilation and the self-check
TIMING_BUDGET_S = 10.0  # fewer timed steps (at least one) where they take longer: a slow CPU node stays in the limit
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def node_device() -> torch.device:
    """The device the preflight measures on: the node's GPU where it has one, else its CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_info(device: torch.device) -> dict[str, Any]:
    """The device's name, capability and memory (a GPU's total memory; on CPU the machine's physical memory)."""
    info = device_description(device)
    if device.type == "cuda":
        info["memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
        info["memory_measure"] = "CUDA caching allocator's peak of allocated memory (torch.cuda.max_memory_allocated)"
    else:
        import os

        info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        info["memory_measure"] = (
            "the preflight process's peak resident memory (getrusage ru_maxrss: Python, torch and every kind measured "
            "before, so an upper bound for one run)"
        )
    return info


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], device: torch.device) -> float:
    """Seconds per call of ``step``: the mean of :data:`TIMED_STEPS` calls after :data:`WARMUP_STEPS` (fewer, at
    least one, once :data:`TIMING_BUDGET_S` is spent)."""
    start = time.perf_counter()
    for _ in range(WARMUP_STEPS):
        step()
        if time.perf_counter() - start > TIMING_BUDGET_S:
            break
    _sync(device)
    start, count = time.perf_counter(), 0
    while count < TIMED_STEPS and (count == 0 or time.perf_counter() - start < TIMING_BUDGET_S):
        step()
        count += 1
        _sync(device)
    return (time.perf_counter() - start) / count


def _batches(loader: Iterable, count: int = DATA_BATCHES) -> list:
    return list(itertools.islice(loader, count))


def check_clean_data(data: Any) -> dict[str, Any]:
    """Read a few training batches of the run's clean set where the run reads it (raises with the path if not)."""
    start = time.perf_counter()
    data.check_available()
    data.setup("fit")
    batches = _batches(data.train_dataloader())
    return {"root": str(Path(data.root).resolve()), "batches": len(batches), "read_s": time.perf_counter() - start}


def check_corrupted_data(settings: dict[str, Any]) -> dict[str, Any] | None:
    """Read a few batches of the first and last corrupted set the run is evaluated on (None: none is)."""
    corruptions = settings.get("corruptions")
    if not corruptions:
        return None
    start = time.perf_counter()
    module = CorruptedDataModule.from_spec(
        corruptions["spec"], corruptions["root"], batch_size=settings["batch_size"], n=settings["batch_size"]
    )
    module.setup("test")
    loaders = module.test_dataloader()
    read = sum(len(_batches(loader, 1)) for loader in (loaders[0], loaders[-1]))
    return {"root": str(module.source.directory.resolve()), "batches": read, "read_s": time.perf_counter() - start}


def self_checks(net: torch.nn.Module, autocast: Any) -> dict[str, str | None]:
    """``{specialisation: why the fused op must not run it (None: it passed)}`` of each distinct inner net of
    ``net`` on its device, in the run's precision: the self-check the run's first large batch would trigger."""
    verdicts = {}
    for neuron in inner_net_neurons(net).values():
        params = [t for linear in neuron.inner.linears for t in (linear.weight, linear.bias)]
        z = torch.zeros(1, neuron.inner.arity, device=params[0].device)
        with autocast:
            bf16 = bf16_products(z.device)  # impl="auto"'s fused_bf16 under CPU bf16 autocast
            verdicts[str(specialisation(z, params, bf16))] = fused_unusable(z, params, bf16)
    return verdicts


def measure_kind(args: list[str], evaluate: dict[str, Any] | None) -> dict[str, Any]:
    """Everything the preflight records of one kind of run, from a representative run's ``train`` arguments; an
    exception propagates (the caller records it as the kind's failure)."""
    from lit_dendrite.cli import build, parse

    init = build(parse(args))
    model, data, protocol = init.model, init.data, init.protocol
    precision = str(init.trainer.get("precision") or "32-true")
    settings = settings_for(evaluate, data.dataset) if evaluate else {}
    record: dict[str, Any] = {"data": {"clean": check_clean_data(data), "corrupted": check_corrupted_data(settings)}}
    device = node_device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    net = model.net.to(device)
    autocast = torch.autocast(device.type, AUTOCAST[precision]) if precision in AUTOCAST else nullcontext()
    images, labels = (t.to(device) for t in _batches(data.train_dataloader(), 1)[0])
    spec = net_neuron_spec(net)
    checks = self_checks(net, autocast)
    sessions: dict[str, dict[str, Any]] = {}
    paths: dict[str, Any] = {}

    def session(name: str, parameters: Iterable[torch.Tensor], loss: Callable[[], torch.Tensor], batch: int) -> None:
        optimizer = torch.optim.Adam([p for p in parameters if p.requires_grad], lr=1e-3)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                value = loss()
            value.backward()
            optimizer.step()

        PATHS.reset()
        sessions[name] = {"step_s": timed(step, device), "batch": batch}
        paths[name] = PATHS.summary()

    if spec is not None and spec.pretrain is not None and PRETRAIN in protocol.sessions and protocol.pretrain_epochs:
        pretrain = InnerPretrain(
            net.inner, 0, protocol.pretrain_lr, protocol.pretrain_batch_size, target_of=spec.pretrain
        )
        inputs, targets = (t.to(device) for t in _batches(pretrain.train_dataloader(), 1)[0])
        steps = len(pretrain.train_dataloader())
        session(PRETRAIN, net.inner.parameters(), lambda: F.mse_loss(net.inner(inputs), targets), len(targets))
        sessions[PRETRAIN]["steps_per_epoch"] = steps
    net.train()
    session(JOINT, net.parameters(), lambda: F.cross_entropy(net(images), labels), len(labels))
    if spec is not None and spec.freeze and FROZEN in protocol.sessions:
        net.inner.requires_grad_(False)
        if protocol.frozen_fast_path and spec.tables:
            tabulate_inner(net, calibration=[images])
            net.train()
        session(FROZEN, net.parameters(), lambda: F.cross_entropy(net(images), labels), len(labels))
        use_exact_inner(net)
    net.eval()
    with torch.no_grad(), autocast:
        sessions["inference"] = {"step_s": timed(lambda: net(images), device), "batch": len(labels)}
    attacks = {}
    for name in settings.get("attacks") or {}:
        x = images[: settings["batch_size"]]

        def gradient(x: torch.Tensor = x, y: torch.Tensor = labels[: settings["batch_size"]]) -> None:
            x = x.detach().requires_grad_(True)
            with autocast:
                loss = F.cross_entropy(net(x), y)
            torch.autograd.grad(loss, x)

        attacks[name] = {"gradient_s": timed(gradient, device), "batch": len(x)}
    return {
        **record,
        "self_check": checks,
        "sessions": sessions,
        "attacks": attacks,
        "paths": paths,
        "peak_memory_bytes": _peak_memory(device),
    }
