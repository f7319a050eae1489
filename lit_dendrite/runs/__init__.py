"""The run directory: its layout, its record (``result.json``), its configuration, its lock, the run-name format
and the provenance of a run.

Training writes a run directory, sweeps create and watch them, evaluation adds robustness results to them, and
the analysis reads them; every file name and the layout are spelled in this package and nowhere else::

    <run_dir>/config.json                       the configuration the directory holds (written at the start)
    <run_dir>/.lock                             held by the process training the run (holder written in it)
    <run_dir>/result.json                       the run record (RunRecord), written last
    <run_dir>/<session>/session.json            a finished session's summary (I_pretrain, II_joint, III_frozen)
    <run_dir>/<session>/checkpoints/last.ckpt   resumable state of an unfinished session
    <run_dir>/<session>/checkpoints/best.ckpt   the best epoch by validation loss (sessions II and III)
    <run_dir>/I_pretrain/inner.pt               the pretrained inner net (weights only)
    <run_dir>/II_joint/inner_best.pt            the inner net of session II's best checkpoint
    <run_dir>/robustness.json                   robustness results (launch/evaluate.py)
    <run_dir>/robustness/                       their figures and an interrupted evaluation's partial.json
    <run_dir>/robustness/error.json             why the sweep's last evaluation of the run failed

A run directory is always used resolved (``~`` expanded, symlinks followed, absolute): Lightning resolves the
checkpoint paths it reports, and paths stored relative to the run directory must be computed against the same
spelling. This package imports no torch, so that the sweep's status command stays fast.
"""

from lit_dendrite.runs.config import (
    NOT_IDENTITY,
    ConfigMismatch,
    config_differences,
    config_hash,
    config_identity,
    record_config,
    recorded_config,
)
from lit_dendrite.runs.layout import (
    BEST_CHECKPOINT,
    BEST_INNER_FILE,
    CHECKPOINT_DIR,
    CHECKPOINT_SUFFIX,
    CONFIG_FILE,
    EVALUATION_ERROR_FILE,
    FAILED_RESULT_FILE,
    FROZEN,
    JOINT,
    LAST_CHECKPOINT,
    LOCK_FILE,
    PARTIAL_FILE,
    PRETRAIN,
    PRETRAINED_INNER_FILE,
    RESULT_FILE,
    ROBUSTNESS_DIR,
    ROBUSTNESS_FILE,
    SEARCH_DIR,
    SESSION_FILE,
    SESSIONS,
    RunDir,
    SessionDir,
    find_records,
    resolve_run_dir,
    set_aside,
)
from lit_dendrite.runs.lock import FileLock, Locked
from lit_dendrite.runs.naming import (
    DEFAULT_RUNS_ROOT,
    NAME_SIGNIFICANT_DIGITS,
    SEED_AXIS,
    condition_of,
    default_run_dir,
    name_value,
    parse_run_name,
    run_name,
)
from lit_dendrite.runs.record import (
    DONE_NUMBERS,
    FINISHED,
    PACKAGES,
    RunRecord,
    UntrustedRecord,
    git_commit,
    is_number,
    path_fallbacks,
    provenance,
    versions,
)

__all__ = [
    "BEST_CHECKPOINT",
    "BEST_INNER_FILE",
    "CHECKPOINT_DIR",
    "CHECKPOINT_SUFFIX",
    "CONFIG_FILE",
    "DEFAULT_RUNS_ROOT",
    "DONE_NUMBERS",
    "EVALUATION_ERROR_FILE",
    "FAILED_RESULT_FILE",
    "FINISHED",
    "FROZEN",
    "JOINT",
    "LAST_CHECKPOINT",
    "LOCK_FILE",
    "NAME_SIGNIFICANT_DIGITS",
    "NOT_IDENTITY",
    "PACKAGES",
    "PARTIAL_FILE",
    "PRETRAIN",
    "PRETRAINED_INNER_FILE",
    "RESULT_FILE",
    "ROBUSTNESS_DIR",
    "ROBUSTNESS_FILE",
    "SEARCH_DIR",
    "SEED_AXIS",
    "SESSIONS",
    "SESSION_FILE",
    "ConfigMismatch",
    "FileLock",
    "Locked",
    "RunDir",
    "RunRecord",
    "SessionDir",
    "UntrustedRecord",
    "condition_of",
    "config_differences",
    "config_hash",
    "config_identity",
    "default_run_dir",
    "find_records",
    "git_commit",
    "is_number",
    "name_value",
    "parse_run_name",
    "path_fallbacks",
    "provenance",
    "record_config",
    "recorded_config",
    "resolve_run_dir",
    "run_name",
    "set_aside",
    "versions",
]
