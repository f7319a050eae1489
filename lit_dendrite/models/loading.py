"""Rebuild a trained network from a run directory without executing anything the run directory names.

A run record is data, possibly from someone else: its ``model.net.class_path`` is looked up in
the allow-list :data:`lit_dendrite.nn.nets.NETS` (never imported), its ``init_args`` must be plain values, and
checkpoints are read with ``torch.load(weights_only=True)`` (tensors only, no unpickling of objects).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_dendrite.errors import MissingFile, RecordError
from lit_dendrite.nn.nets import NETS
from lit_dendrite.runs import SESSIONS, RunDir, RunRecord, UntrustedRecord

PLAIN_VALUES = (str, int, float, bool, type(None))


def allowed_class_paths() -> dict[str, type[nn.Module]]:
    """``{class path: class}`` of the networks a run record may name (as the CLI writes them and by module)."""
    paths: dict[str, type[nn.Module]] = {}
    for name, cls in NETS.items():
        paths[f"lit_dendrite.nn.{name}"] = cls
        paths[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return paths


def _is_plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items()) and "class_path" not in value
    return isinstance(value, PLAIN_VALUES)


def build_net(net_config: dict[str, Any]) -> nn.Module:
    """Instantiate ``{"class_path": "lit_dendrite.nn.DendriticMLP", "init_args": {...}}`` as saved in a run's
    config; only the allow-listed networks (:data:`~lit_dendrite.nn.nets.NETS`) with plain arguments are built."""
    allowed = allowed_class_paths()
    class_path = net_config.get("class_path") if isinstance(net_config, dict) else None
    if class_path not in allowed:
        raise UntrustedRecord(
            f"refusing to build net class_path {class_path!r}: a run record may only name the project's networks "
            f"({', '.join(sorted(allowed))}); this record was not written by lit_dendrite's training or was altered"
        )
    init_args = net_config.get("init_args") or {}
    if not isinstance(init_args, dict) or not _is_plain(init_args):
        raise UntrustedRecord(f"refusing to build {class_path}: init_args must be plain values, got {init_args!r}")
    return allowed[class_path](**init_args)


def load_checkpoint(path: Path, fix: str | None = None) -> dict[str, Any]:
    """A checkpoint's contents read with ``weights_only=True`` (tensors and plain values); a :class:`RecordError`
    naming the file, with ``fix``, when it is damaged, truncated or holds objects (never torch's advice to unpickle
    them)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UntrustedRecord(
            f"{path} holds objects other than tensors and plain values; refusing to unpickle it", fix
        ) from None
    except FileNotFoundError:
        raise MissingFile(f"{path} is missing", fix) from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
        raise RecordError(f"{path} cannot be read: it is damaged or truncated ({reason})", fix) from None
    if not isinstance(data, dict):
        raise RecordError(f"{path} holds a {type(data).__name__}, not a checkpoint (a dict of tensors)", fix)
    return data


def retrain_advice(run_dir: RunDir, session: str) -> str:
    """How to train a run's session (and the sessions after it) again, its other sessions kept."""
    later = SESSIONS[SESSIONS.index(session) :] if session in SESSIONS else (session,)
    remove = [run_dir.path / name for name in later if (run_dir.path / name).exists()] or [run_dir.path / session]
    if run_dir.result.exists():
        remove.insert(0, run_dir.result)
    return (
        f"retrain the session: remove {' and '.join(map(str, remove))}, then run the run's training command again "
        "(or train the whole run afresh into another --run_dir)"
    )


def load_result(run_dir: str | Path) -> RunRecord:
    """A run's record, with a clear error when the run has not finished."""
    return RunRecord.read(RunDir(Path(run_dir)))


def load_net(run_dir: str | Path, checkpoint: str | Path | None = None) -> nn.Module:
    """The run's network with the weights of its final session's best checkpoint (or ``checkpoint``, relative to
    the run directory), in eval() mode."""
    record = load_result(run_dir)
    try:
        net = build_net(record.net_config)
    except UntrustedRecord as error:
        raise UntrustedRecord(f"{record.dir.result}: {error}") from None
    path = record.dir.path / checkpoint if checkpoint is not None else record.best_checkpoint
    session = record.dir.relative(path).split("/")[0]
    state = load_checkpoint(path, retrain_advice(record.dir, session)).get("state_dict")
    if not isinstance(state, dict):
        raise RecordError(
            f"{path} holds no state_dict: it is not a training checkpoint", retrain_advice(record.dir, session)
        )
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    return net.eval()
