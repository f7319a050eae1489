"""The fused op's self-check on the device in hand, and the record of the paths the inner net took.

The first time a specialisation of the fused op (:mod:`lit_dendrite.nn.inner_op`) would run in a process (device,
the kernel's dtype, arity, widths), :func:`fused_unusable` runs it on a small random sample, with and without a
LayerNorm, and compares its values and gradients with the plain torch layers in float64; before that it checks that
the kernels can be imported and that the GPU's compute capability supports the dtype (``MIN_CAPABILITY``). A compile
or launch error, a mismatch beyond the dtype's tolerance (``TOLERANCE``), a missing Triton or a too old GPU is the
reason it returns: ``impl="auto"`` then takes the plain torch path for that specialisation and warns once, and an
explicit ``impl="fused"`` stops with the reason (:mod:`lit_dendrite.nn.inner_kernels`). The answer is kept for the
process. The sample draws from its own generator: the check never moves the training's random state.

Every choice of a path is noted in :data:`PATHS`; the protocol reads and resets it per session, so that each run
records the paths it used and why (``result.json``, see :func:`PathLog.summary`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from lit_dendrite.nn import inner_op

# The oldest compute capability whose Triton ``tl.dot`` supports the kernel's dtype; fp32 (IEEE products) runs on any.
MIN_CAPABILITY = {"bfloat16": (8, 0), "tf32": (8, 0), "float16": (7, 0)}
# The largest relative error (norm of the difference over the norm of the float64 reference) allowed in the values
# and in each gradient: TOLERANCE for the dtype plus PLAIN_FACTOR times the error of the plain layers in the same
# precision (autocast's; in bf16 the weight gradients lose ~6% to rounding there too). A wrong kernel is off by O(1)
# (a lost sign word: 0.66-1.0), far beyond either.
TOLERANCE = {"float32": 1e-4, "tf32": 1e-2, "float16": 1e-2, "bfloat16": 1e-2}
PLAIN_FACTOR = 2
SAMPLE_SEED = 20_260_101
SAMPLE_SAMPLES, SAMPLE_ROWS = 3, 40  # 120 rows: two forward blocks of 64 and a masked tail


@dataclass(frozen=True)
class Specialisation:
    """What a fused kernel is compiled and checked for."""

    device: str
    dtype: str  # the products' dtype: float32, tf32, bfloat16 or float16
    arity: int
    widths: tuple[int, int]

    def __str__(self) -> str:
        return f"{self.device} {self.dtype} arity {self.arity} widths {list(self.widths)}"


def specialisation(z: torch.Tensor, params: Sequence[torch.Tensor], bf16: bool = False) -> Specialisation:
    """The specialisation of the fused op that inputs ``z`` (as the op receives them) and ``params`` run, with
    ``bf16`` products (the native kernel's). The native kernel multiplies float32 (it casts bf16 and fp16 inputs up)
    unless ``bf16``. Cell types' params stacked along a leading dim (dim 3) are one type's specialisation: the kernel
    runs every type's rows with the same code, so a check of one type's shapes covers the stacked call."""
    arity, widths = params[0].shape[-1], (params[0].shape[-2], params[2].shape[-2])
    if inner_op.backend(z.device) == "native":
        return Specialisation(str(z.device), "bfloat16" if bf16 else "float32", arity, widths)
    dtype = inner_op.op_dtype(z)
    name = "tf32" if inner_op.tf32_products(dtype, z.device) else str(dtype).removeprefix("torch.")
    return Specialisation(str(z.device), name, arity, widths)


def fused_unusable(z: torch.Tensor, params: Sequence[torch.Tensor], bf16: bool = False) -> str | None:
    """Why the fused op must not evaluate ``params`` (one inner net's, or cell types' stacked) on ``z`` here with
    ``bf16`` products (it cannot run, or its self-check on this device failed), or None."""
    if (reason := inner_op.mismatch(z, params, bf16)) is not None:
        return reason
    spec = specialisation(z, params, bf16)
    return _checked(spec.device, spec.dtype, spec.arity, spec.widths)


@torch.compiler.assume_constant_result
def _checked(device: str, dtype: str, arity: int, widths: tuple[int, int]) -> str | None:
    """:func:`self_check`'s answer, a constant for torch.compile (which calls this once, while it traces)."""
    return self_check(Specialisation(device, dtype, arity, widths))


@functools.cache
def self_check(spec: Specialisation) -> str | None:
    """Why the fused kernels of ``spec`` cannot be trusted on its device (None: they can), found once per process."""
    device = torch.device(spec.device)
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        needed = MIN_CAPABILITY.get(spec.dtype)
        if needed is not None and capability < needed:
            name = torch.cuda.get_device_name(device)
            return (
                f"its {spec.dtype} products need compute capability {needed[0]}.{needed[1]} or newer, "
                f"and the {name} has {capability[0]}.{capability[1]}"
            )
    if inner_op.backend(device) == "triton":
        try:
            inner_op.triton_kernels()
        except Exception as error:  # a Triton too old or too new for the kernels' source is as good as none
            return f"its Triton kernels do not import ({type(error).__name__}: {_first_line(error)})"
    try:
        # It may first be asked for inside validation (inference mode) or no_grad: it needs autograd either way.
        with torch.inference_mode(False), torch.enable_grad():
            errors = _largest_errors(spec)
    except Exception as error:
        return f"its kernel failed to compile or run on {spec.device} ({type(error).__name__}: {_first_line(error)})"
    for name, (fused, plain) in errors.items():
        allowed = TOLERANCE[spec.dtype] + PLAIN_FACTOR * plain
        if not fused <= allowed:  # NaN fails too
            return (
                f"its kernel disagrees with the plain layers on {spec.device}: relative error {fused:.2g} in the "
                f"{name} (the plain layers' in {spec.dtype}: {plain:.2g}; allowed {allowed:.2g})"
            )
    return None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]


def _largest_errors(spec: Specialisation) -> dict[str, tuple[float, float]]:
    """Per quantity (values, input gradient, each weight's gradient), the largest relative error against float64
    plain layers on a random sample, with and without a LayerNorm, of the fused op and of the plain layers in the
    spec's precision (under autocast for bf16 and fp16, as training runs them)."""
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    h1, h2 = spec.widths
    shapes = [(h1, spec.arity), (h1,), (h2, h1), (h2,), (1, h2), (1,)]
    params = [(torch.rand(shape, generator=generator) - 0.5) * 2 / max(shape) ** 0.5 for shape in shapes]
    z = torch.randn(SAMPLE_SAMPLES, SAMPLE_ROWS * spec.arity, generator=generator) * 2 + 0.5
    upstream = torch.randn(SAMPLE_SAMPLES, SAMPLE_ROWS, generator=generator)
    device, dtype = torch.device(spec.device), getattr(torch, spec.dtype.replace("tf32", "float32"))
    names = ["values", "input gradient", "w1 gradient", "b1 gradient", "w2 gradient", "b2 gradient", "w3 gradient",
             "b3 gradient"]  # fmt: skip
    errors = dict.fromkeys(names, (0.0, 0.0))
    low_precision = dtype in (torch.bfloat16, torch.float16)
    bf16 = inner_op.backend(device) == "native" and dtype == torch.bfloat16  # the native kernel's bf16 products
    with torch.enable_grad():
        for normalized_ndim in (0, 1):
            with torch.autocast(device.type, enabled=False):
                fused = _values_and_grads(z.to(device, dtype), params, upstream, normalized_ndim, True, bf16)
                exact = _values_and_grads(z.double(), [p.double() for p in params], upstream, normalized_ndim, False)
            with torch.autocast(device.type, dtype=dtype if low_precision else None, enabled=low_precision):
                plain = _values_and_grads(z.to(device, dtype), params, upstream, normalized_ndim, fused=False)
            for name, a, b, want in zip(names, fused, plain, exact):
                pair = (_relative_error(a, want), _relative_error(b, want))
                errors[name] = (max(errors[name][0], pair[0]), max(errors[name][1], pair[1]))
    return errors


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    error = float((got.cpu().double() - want.cpu()).norm() / want.norm().clamp_min(1e-30))
    return error if error == error else float("inf")  # NaN: as bad as can be


def _values_and_grads(
    z: torch.Tensor,
    params: Sequence[torch.Tensor],
    upstream: torch.Tensor,
    normalized_ndim: int,
    fused: bool,
    bf16: bool = False,
) -> list[torch.Tensor]:
    device = z.device
    z = z.detach().requires_grad_(True)
    params = [p.to(device).requires_grad_(True) for p in params]
    if fused:
        out = inner_op.inner_net(z, normalized_ndim, 1e-5, True, bf16, *params)[0]
    else:
        rows = F.layer_norm(z, z.shape[-1:], eps=1e-5) if normalized_ndim else z
        w1, b1, w2, b2, w3, b3 = params
        hidden = torch.relu(torch.relu(rows.unflatten(-1, (-1, w1.shape[1])) @ w1.t() + b1) @ w2.t() + b2)
        out = (hidden @ w3.t() + b3).squeeze(-1)
    grads = torch.autograd.grad(out, [z, *params], upstream.to(device, out.dtype))
    return [out.detach(), *grads]


@dataclass
class PathLog:
    """The paths the inner net took since the last :meth:`reset`: which implementation was asked for, which ran, and
    why the fused op did not where it would have."""

    requested: dict[str, None] = field(default_factory=dict)
    used: dict[str, None] = field(default_factory=dict)
    fallbacks: dict[tuple[str, str, str], None] = field(default_factory=dict)
    warned: set[tuple[str, str]] = field(default_factory=set)

    def note(self, requested: str, used: str) -> None:
        """An inner-net evaluation asked for ``requested`` and ran ``used``."""
        self.requested[requested] = None
        self.used[used] = None

    def fell_back(self, spec: Specialisation | str, used: str, reason: str) -> None:
        """``impl="auto"`` would have taken the fused op for ``spec`` but ran ``used``, for ``reason``: noted, and
        warned once per process."""
        self.note("auto", used)
        self.fallbacks[(str(spec), used, reason)] = None
        if (str(spec), reason) not in self.warned:
            self.warned.add((str(spec), reason))
            warnings.warn(
                f"the fused inner net is not used for {spec}: {reason}; the {used} torch path runs instead "
                "(slower, same results; recorded in result.json)",
                FusedPathFallback,
                stacklevel=4,
            )

    def reset(self) -> None:
        """Forget the paths noted so far (not the warnings given)."""
        self.requested.clear()
        self.used.clear()
        self.fallbacks.clear()

    def summary(self) -> dict[str, Any]:
        """What a session records: ``{"requested": [...], "used": [...], "fallbacks": [{specialisation, used,
        reason}]}``; empty lists where no inner net ran."""
        return {
            "requested": list(self.requested),
            "used": list(self.used),
            "fallbacks": [{"specialisation": s, "used": u, "reason": r} for s, u, r in self.fallbacks],
        }


class FusedPathFallback(UserWarning):
    """The fused inner net could not be used and a torch path ran instead."""


PATHS = PathLog()
"""The process's path log (one per process: each DDP rank notes its own)."""


def device_description(device: torch.device) -> dict[str, Any]:
    """The name and compute capability of ``device`` (CUDA), or its type, for a run's record."""
    if device.type != "cuda":
        return {"type": device.type, "name": None, "capability": None}
    major, minor = torch.cuda.get_device_capability(device)
    return {"type": "cuda", "name": torch.cuda.get_device_name(device), "capability": f"{major}.{minor}"}
