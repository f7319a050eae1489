"""A run directory holds one configuration: what identifies it, and in which keys two configurations differ.

The identity is the resolved training configuration minus :data:`NOT_IDENTITY`, the keys that cannot change a
result: where the run is written and under which name, whether an existing other configuration may be discarded,
where the data set is read from, and what is displayed while training. Every other key (settings, seed, data set,
trainer options such as devices or precision, callbacks) is part of the identity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lit_dendrite.errors import ConfigError
from lit_dendrite.io import read_json, write_json_atomic
from lit_dendrite.runs.layout import RunDir

NOT_IDENTITY = (
    "run_dir",
    "experiment",
    "variant",
    "overwrite",
    "data.root",
    "data.download",
    "data.num_workers",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)
MAX_SHOWN = 8


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"dotted.key": value}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def config_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved training config that determines the results, flattened to dotted keys. A key set to
    null is the same configuration as the key absent, so an argument added later with a null default (a net's
    ``neuron_args``) leaves the identity of configurations recorded before it unchanged."""
    plain = json.loads(json.dumps(config, default=str))
    return {key: value for key, value in flatten(plain).items() if key not in NOT_IDENTITY and value is not None}


def config_hash(config: Mapping[str, Any]) -> str:
    """A short hash of :func:`config_identity`, recorded as ``config_hash``."""
    text = json.dumps(config_identity(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (recorded value, wanted value)}`` wherever the two identities differ (None: absent or null)."""
    old, new = config_identity(recorded), config_identity(wanted)
    return {
        key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)
    }


class ConfigMismatch(ConfigError):
    """A run directory already holds another configuration; the message lists the differing keys, the fix names
    ``overwrite``, the command's own spelling of the option that discards it (``--overwrite true`` for train.py)."""

    def __init__(
        self, run_dir: Path, recorded_in: Path, differences: dict[str, tuple[Any, Any]], overwrite: str
    ) -> None:
        self.run_dir, self.differences = run_dir, differences
        shown = [f"  {key}: {old!r} (recorded) != {new!r} (now)" for key, (old, new) in differences.items()]
        if len(shown) > MAX_SHOWN:
            shown = [*shown[:MAX_SHOWN], f"  ... and {len(shown) - MAX_SHOWN} more"]
        super().__init__(
            f"{run_dir} holds another configuration (recorded in {recorded_in}); {len(differences)} key(s) "
            "differ:\n" + "\n".join(shown),
            f"use another run directory (--run_dir) for this configuration, or add {overwrite} to the same command "
            "to discard this run directory's results and train it afresh",
        )


def recorded_config(run_dir: RunDir) -> tuple[dict[str, Any], Path] | None:
    """The configuration a run directory holds and the file that records it, or None for an unused directory."""
    for path, key in ((run_dir.config, "config"), (run_dir.result, "config")):
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            return data[key], path
    return None


def record_config(run_dir: RunDir, config: Mapping[str, Any]) -> None:
    """Record ``config`` as the run directory's configuration (before its first session writes anything)."""
    write_json_atomic(run_dir.config, {"config": config, "config_hash": config_hash(config)})
