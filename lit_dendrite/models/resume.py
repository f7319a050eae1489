"""What makes an interrupted session resume as if it had never stopped.

- Checkpoints are written atomically on the run directory's own file system (a temporary file beside the target,
  flushed to disk, then renamed over it), so a job killed while writing leaves the previous checkpoint intact.
- The resume point is the session's last checkpoint; one that cannot be read (a file damaged outside this code, or
  one holding objects that a weights-only load refuses, which Lightning would unpickle) is named, set aside as
  ``<name>.corrupt-<time>``, and the session resumes from its best checkpoint (an earlier epoch) or, failing that,
  restarts from its beginning, saying so.
- Random numbers are reseeded before every training batch from (run seed, session, epoch, batch), and the
  training data are shuffled per epoch from a seed and the epoch (:class:`~lit_dendrite.data.shuffle.EpochShuffle`),
  so an epoch's order and dropout do not depend on whether the process ran the epochs before it: a resumed run
  is bit-identical to an uninterrupted one on the CPU (on a GPU, up to its nondeterministic kernels).
- Every checkpoint carries the hash of the run's configuration (:class:`ConfigIdentity`), so that a run directory
  whose ``config.json`` was damaged or deleted is still known by its checkpoints and never resumed under another
  configuration.
- Each session's wall time is carried in its checkpoints, so a resumed session reports the time of all its
  processes (an epoch cut short by the interruption is not counted).
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO

from lit_dendrite.errors import RecordError
from lit_dendrite.io import atomic_path
from lit_dendrite.models.loading import load_checkpoint
from lit_dendrite.runs import CHECKPOINT_DIR, CHECKPOINT_SUFFIX, RunDir, SessionDir, set_aside

CONFIG_HASH_KEY = "lit_dendrite_config_hash"
"""The key of a checkpoint holding the configuration hash of the run that wrote it."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer through a temporary file in the target's directory, fsynced and renamed."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def with_atomic_checkpoints(plugins: Any) -> list[Any]:
    """The Trainer's ``plugins`` plus :class:`AtomicCheckpointIO` unless one writes checkpoints already."""
    plugins = list(plugins if isinstance(plugins, (list, tuple)) else [plugins] if plugins is not None else [])
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def unreadable(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be read, or None: it must be a torch zip archive whose members all check
    out and that loads with ``weights_only=True`` (Lightning's own resume would unpickle whatever it holds)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        return f"{type(error).__name__}: {error}"
    if bad is not None:
        return f"member {bad} is damaged"
    try:
        load_checkpoint(path)
    except RecordError as error:
        return str(error).removeprefix(f"{path} ")
    return None


def resume_point(session: SessionDir, echo: Any = print) -> Path | None:
    """The checkpoint a session resumes from: its last one, else its best one, else None (start afresh).

    An unreadable candidate is set aside (renamed) and the choice is reported through ``echo``."""
    set_aside_any = False
    for candidate in (session.last_checkpoint, session.best_checkpoint):
        if not candidate.is_file():
            continue
        problem = unreadable(candidate)
        if problem is None:
            if candidate != session.last_checkpoint:
                echo(f"[lit_dendrite] session {session.name} resumes from {candidate} (an earlier epoch)")
            return candidate
        moved = set_aside(candidate)
        set_aside_any = True
        echo(f"[lit_dendrite] checkpoint {candidate} cannot be read ({problem}); set aside as {moved.name}")
    if set_aside_any:
        echo(f"[lit_dendrite] session {session.name} restarts from its beginning (no readable checkpoint left)")
    return None


class ConfigIdentity(Callback):
    """Writes the run's configuration hash into every checkpoint (see the module)."""

    def __init__(self, config_hash: str) -> None:
        self.config_hash = config_hash

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_HASH_KEY] = self.config_hash


def checkpoint_config_hashes(run_dir: RunDir) -> dict[Path, str | None]:
    """The configuration hash each readable checkpoint of the run directory carries (None: a checkpoint written
    before checkpoints carried one); unreadable checkpoints are left out."""
    hashes = {}
    for path in sorted(run_dir.path.glob(f"*/{CHECKPOINT_DIR}/*{CHECKPOINT_SUFFIX}")):
        try:
            hashes[path] = load_checkpoint(path).get(CONFIG_HASH_KEY)
        except RecordError:
            continue
    return hashes


def batch_seed(seed: int, session: int, epoch: int, batch: int) -> int:
    """The seed of one training batch: a function of the run's seed, the session, the epoch and the batch only."""
    return int(np.random.SeedSequence([seed, session, epoch, batch]).generate_state(1)[0])


class BatchSeed(Callback):
    """Reseeds torch, numpy and Python's random before every training batch (see the module)."""

    def __init__(self, seed: int, session: int) -> None:
        self.seed, self.session = seed, session

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int) -> None:
        seed = batch_seed(self.seed, self.session, trainer.current_epoch, index)
        L.seed_everything(seed, workers=True, verbose=False)


class WallClock(Callback):
    """Seconds spent in a session over all its processes; saved in and restored from its checkpoints."""

    def __init__(self) -> None:
        self.before = 0.0
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return round(self.before + time.monotonic() - self.started, 2)

    def state_dict(self) -> dict[str, float]:
        return {"wall_time_s": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = float(state_dict.get("wall_time_s", 0.0))
        self.started = time.monotonic()
