"""Rebuild a trained network from a run directory, loading weights only (no unpickling of objects)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


def build_net(net_config: dict[str, Any]) -> nn.Module:
    """Instantiate ``{"class_path": "pkg.Class", "init_args": {...}}`` as saved in a run's config."""
    class_path = net_config.get("class_path")
    if not isinstance(class_path, str) or "." not in class_path:
        raise ValueError(f"net config needs a class_path like 'lit_dendrite.nn.DendriticMLP', got {class_path!r}")
    module_name, class_name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**(net_config.get("init_args") or {}))


def load_result(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``result.json``, with a clear error when the run has not finished."""
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished run (train it first)")
    return json.loads(path.read_text())


def load_net(run_dir: str | Path, checkpoint: str | Path | None = None) -> nn.Module:
    """The run's network with the weights of its final session's best checkpoint, in eval() mode."""
    result = load_result(run_dir)
    net = build_net(result["config"]["model"]["net"])
    path = Path(run_dir) / (checkpoint or result["best_checkpoint"])
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    return net.eval()
