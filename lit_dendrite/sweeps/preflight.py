"""A sweep's preflight: what one short job on the cluster's own nodes measured for every kind of run of the sweep
(``<out>/<sweep>/preflight.json``), and what the cost estimate and the submission make of it.

A kind of run is net x neuron x data set x precision x evaluation (:func:`kind_key`); the runs of one kind differ in
seeds and other settings the preflight takes as costing the same. The job is submitted by
:mod:`lit_dendrite.sweeps.preflight_job` and measures with :mod:`lit_dendrite.sweeps.preflight_measure`; this module
imports no torch, so the plan and the submission read the file at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_dendrite.io import read_json
from lit_dendrite.runs import FROZEN, JOINT, PRETRAIN

PREFLIGHT = "preflight.json"
DEFAULT_TIME_MIN = 15
SESSION_ORDER = (PRETRAIN, JOINT, FROZEN, "inference")  # the run's sessions, then evaluation's forward
MEMORY_HEADROOM = 0.9  # a kind whose peak exceeds this share of the memory it may use is refused
PRECISIONS = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true", "None": "32-true"}


def precision_name(value: Any) -> str:
    """Lightning's precision setting in its long form (``32`` and ``None`` are ``32-true``, ``bf16`` ``bf16-mixed``)."""
    return PRECISIONS.get(str(value), str(value))


def evaluation_name(settings: Mapping[str, Any] | None) -> str:
    """What a run's evaluation does, as part of its kind: its attacks and corrupted set, or ``none``."""
    settings = settings or {}
    parts = [f"attacks={'+'.join(sorted(settings['attacks']))}"] if settings.get("attacks") else []
    if settings.get("corruptions"):
        parts.append(f"corruptions={settings['corruptions']['spec']}")
    return ",".join(parts) or "none"


def kind_key(net: str, neuron: str, dataset: str, precision: Any, settings: Mapping[str, Any] | None) -> str:
    """The kind of a run: ``net/neuron/dataset/precision/evaluation`` (net as its class name)."""
    return "/".join((net.rsplit(".", 1)[-1], neuron, dataset, precision_name(precision), evaluation_name(settings)))


def memory_failure(peak: int, limit: int, source: str) -> str | None:
    """Why a kind does not fit ``limit`` bytes of memory (``source`` says what the limit is), or None."""
    if peak <= MEMORY_HEADROOM * limit:
        return None
    return (
        f"does not fit in memory: peak {peak / 2**30:.2f} GiB, more than {MEMORY_HEADROOM:.0%} of the "
        f"{limit / 2**30:.2f} GiB of {source}; lower data.batch_size or ask for a larger GPU (constraint/partition)"
    )


@dataclass(frozen=True)
class Preflight:
    """A sweep's ``preflight.json``, as the estimate and the submission read it."""

    path: Path
    data: dict[str, Any]

    @property
    def kinds(self) -> dict[str, dict[str, Any]]:
        return self.data["kinds"]

    @property
    def source(self) -> str:
        """Where the measured costs come from, as the plan says it."""
        device = self.data["device"]
        name = device.get("name") or f"{device['type']} ({self.data.get('host')})"
        return f"measured by preflight job {self.data.get('job_id')} on {name} at {self.data['finished']}"

    def failures(self) -> dict[str, str]:
        """``{kind: why}`` of the kinds whose preflight failed."""
        return {key: kind["failure"] for key, kind in self.kinds.items() if kind.get("failure")}

    def measured(self, key: str) -> dict[str, Any] | None:
        """The measured times of a kind (None: not measured, or it failed before its steps were timed)."""
        kind = self.kinds.get(key)
        return kind if kind is not None and "sessions" in kind else None

    def lines(self, keys: set[str]) -> list[str]:
        """The plan's preflight section: its source, then each kind of ``keys`` that failed or was not measured."""
        failed = {key: why for key, why in self.failures().items() if key in keys}
        missing = sorted(keys - set(self.kinds))
        lines = [f"Preflight ({self.path}): {self.source}; {len(keys) - len(failed) - len(missing)} of "
                 f"{len(keys)} kinds of run passed"]  # fmt: skip
        lines += [f"  FAILED {key}: {why}" for key, why in failed.items()]
        lines += [f"  not in the preflight (the sweep changed since?): {key}" for key in missing]
        return lines

    def report(self) -> list[str]:
        """What the preflight command prints: each kind's session steps, peak memory and inner-net paths, or its
        failure."""
        device = self.data["device"]
        lines = [
            f"{self.path}: {self.source}",
            f"  {device['name'] or device['type']}"
            f"{' (compute capability ' + device['capability'] + ')' if device['capability'] else ''}, "
            f"{device['memory_bytes'] / 2**30:.1f} GiB; peak memory: {device['memory_measure']}",
        ]
        for key, kind in self.kinds.items():
            lines.append(f"  {key}  ({kind['runs']} runs, e.g. {kind['representative']})")
            if "sessions" in kind:
                steps = ", ".join(
                    f"{name} {timing['step_s'] * 1000:.1f} ms/step of {timing['batch']}"
                    for name, timing in sorted(kind["sessions"].items(), key=lambda item: SESSION_ORDER.index(item[0]))
                )
                gradients = ", ".join(
                    f"{name} {timing['gradient_s'] * 1000:.1f} ms/gradient of {timing['batch']}"
                    for name, timing in kind["attacks"].items()
                )
                used = sorted({path for session in kind["paths"].values() for path in session["used"]})
                checks = kind["self_check"]
                passed = [spec for spec, why in checks.items() if why is None]
                checked = f"; fused op's self-check passed: {', '.join(passed)}" if passed else ""
                lines.append(f"    {steps}{'; ' + gradients if gradients else ''}")
                lines.append(
                    f"    peak memory {kind['peak_memory_bytes'] / 2**20:.0f} MiB; inner-net paths: "
                    f"{', '.join(used) or 'none (no inner net)'}{checked}"
                )
            lines.append(f"    {'FAILED: ' + kind['failure'] if kind.get('failure') else 'ok'}")
        return lines


def read_preflight(sweep_dir: Path) -> Preflight | None:
    """The sweep's preflight, or None where none was run (a file being written is never half read: it is atomic)."""
    path = Path(sweep_dir) / PREFLIGHT
    data = read_json(path)
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kinds"), dict) or "device" not in data:
        raise ValueError(f"{path} is not a preflight result; delete it and run the preflight again")
    return Preflight(path, data)


def per_image(timing: Mapping[str, Any], key: str = "step_s") -> float:
    """Seconds per image of a measured step (``{key: seconds, "batch": images}``)."""
    return timing[key] / timing["batch"]


def measured_train_seconds(
    kind: Mapping[str, Any], batch_size: int, epochs: Mapping[str, int], images: tuple[int, int], min_step_s: float
) -> float:
    """One run's training seconds from a kind's measured steps: ``epochs`` per session name, ``images`` (training,
    validation) per epoch of sessions II and III at ``batch_size`` (time linear in the batch), session I's measured
    steps per epoch; at least ``min_step_s`` per step (the loop around a step that the preflight does not time)."""
    sessions = kind["sessions"]
    train, val = images
    seconds = 0.0
    for name, count in epochs.items():
        if name not in sessions:
            continue
        timing = sessions[name]
        if "steps_per_epoch" in timing:  # session I: its own data, its own batch
            seconds += count * timing["steps_per_epoch"] * max(timing["step_s"], min_step_s)
            continue
        step = max(per_image(timing) * batch_size, min_step_s)
        seconds += count * (-(-train // batch_size) * step + val * per_image(sessions["inference"]))
    return seconds
