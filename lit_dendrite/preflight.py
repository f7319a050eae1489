"""What the training command checks before anything is allocated or written: the configuration files, the seed,
the memory the net needs and the Trainer options on this machine. A bad input found here leaves no run directory."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException

from lit_dendrite.config_files import config_chain
from lit_dendrite.errors import ConfigError, ResourceError
from lit_dendrite.nn.memory import device_memory, format_bytes, training_bytes
from lit_dendrite.nn.nets import CONFIG_KEY

SEED_RANGE = (0, 2**32 - 1)
"""The seeds numpy (hence the data split and the per-batch seeds) accepts."""
LIGHTNING_LOG = "lightning.pytorch.utilities.rank_zero"
"""Lightning's logger of the device lines (``GPU available: ...``) every Trainer prints."""


def check_config_files(args: Sequence[str]) -> None:
    """A ConfigError naming the file (and the line of a YAML error) of a ``--config`` file, or of a file it extends,
    that cannot be read as a chain of YAML mappings (jsonargparse's own message names neither)."""
    files = [b for a, b in zip(args, args[1:]) if a == "--config"]
    files += [a.removeprefix("--config=") for a in args if a.startswith("--config=")]
    for name in files:
        try:
            is_file = Path(name).is_file()
        except OSError:  # a config given as a YAML string too long to be a file name
            is_file = False
        if is_file:  # jsonargparse names a missing file
            config_chain(name)


def check_seed(seed: Any) -> None:
    """A ConfigError for a seed outside :data:`SEED_RANGE` (numpy would refuse it after the run started)."""
    low, high = SEED_RANGE
    if not isinstance(seed, int) or not low <= seed <= high:
        raise ConfigError(f"--seed_everything is {seed!r}: a seed must be an integer in {low}..{high}")


def check_memory(init: Namespace) -> None:
    """A ResourceError, before anything is allocated, when the net of ``init`` (built on the meta device) cannot be
    trained at the configured batch size in the memory of the device it would train on."""
    needed, parameters = training_bytes(init.model.net, init.data.in_shape, init.data.batch_size)
    where, available = device_memory(init.trainer.get("accelerator"))
    if needed > available:
        raise ResourceError(
            f"{CONFIG_KEY}.widths and data.batch_size {init.data.batch_size}: training this net needs about "
            f"{format_bytes(needed)} ({parameters:,} parameters and one batch's activations), more than the "
            f"{format_bytes(available)} of {where}",
            f"reduce --{CONFIG_KEY}.widths (or --data.batch_size)",
        )


def check_trainer(options: Callable[[], Mapping[str, Any]]) -> None:
    """A ConfigError when a Trainer cannot be built from ``options()`` on this machine (an accelerator, device count
    or strategy it lacks): Lightning would refuse it only when the first session starts. Lightning's warnings while
    the options and this Trainer are made (``srun`` is available but not used, ...) are left to the real Trainer."""
    log = logging.getLogger(LIGHTNING_LOG)
    level = log.level
    log.setLevel(logging.WARNING)  # the real Trainer prints the device lines and warnings
    try:
        quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "callbacks": []}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            L.Trainer(**{**options(), **quiet, "enable_model_summary": False})
    except MisconfigurationException as error:
        raise ConfigError(
            f"the trainer options cannot run on this machine: {error}",
            "change --trainer.accelerator, --trainer.devices or --trainer.strategy to what this machine has",
        ) from None
    finally:
        log.setLevel(level)
