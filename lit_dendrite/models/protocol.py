"""The paper's three-session protocol for one run, resumable session by session.

I   pretrain the inner net to a random smooth function (learned neurons only), keep its best fit;
II  train inner and outer nets jointly, early stopping on validation loss (or a fixed number of epochs), keep the
    best inner net;
III freeze that inner net, re-initialise the outer net, train again, test on the best checkpoint.
What "the inner net" is and which sessions apply come from the neuron's registry entry
(:class:`~lit_dendrite.nn.neurons.NeuronSpec`): session I runs where ``spec.pretrain`` gives a target, session III
where ``spec.freeze``; fixed neurons (relu, product, ...) run session II only. A session that finished wrote its
summary and is skipped on a rerun; an interrupted one resumes from its last checkpoint (layout:
:mod:`lit_dendrite.runs`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from lit_dendrite.errors import ConfigError, RecordError
from lit_dendrite.io import atomic_path, write_json_atomic
from lit_dendrite.models.classifier import Classifier, Diverged
from lit_dendrite.models.console import (
    SESSION_TITLES,
    epochs_budget,
    progress_callbacks,
    quiet_lightning,
    say,
    seconds_text,
)
from lit_dendrite.models.frozen_table import FrozenInnerTables
from lit_dendrite.models.loading import load_checkpoint, retrain_advice
from lit_dendrite.models.pretrain import InnerPretrain
from lit_dendrite.models.resume import BatchSeed, ConfigIdentity, WallClock, resume_point, with_atomic_checkpoints
from lit_dendrite.models.stall import STALL_MARGIN, Stalled, StallStop
from lit_dendrite.models.tensorboard_layout import LAYOUT
from lit_dendrite.nn.acceleration import maybe_compile
from lit_dendrite.nn.inner_check import PATHS, device_description
from lit_dendrite.nn.neurons import NeuronSpec, net_neuron_spec
from lit_dendrite.runs import BEST_CHECKPOINT, FROZEN, JOINT, LAST_CHECKPOINT, PRETRAIN, RunDir, SessionDir


@dataclass
class Protocol:
    """Settings of the three sessions (paper: 500 pretraining epochs, patience 20).

    ``pretrain_target``: stop session I once the inner net explains this fraction of the target's variance
    (None: the whole ``pretrain_epochs``). ``joint_epochs`` / ``frozen_epochs``: train session II / III exactly
    this many epochs without early stopping (the paper's 200 / 400), still testing the checkpoint of the best
    validation loss; None: early stopping with ``patience``, up to ``trainer.max_epochs``.
    ``frozen_fast_path`` trains session III through lookup tables of the frozen inner net (tests stay exact);
    ``compile`` wraps the network in ``torch.compile``. ``stall_epochs``: a session II or III whose mean training
    loss stays within ``stall_margin`` nats of chance (ln of the class count) for this many epochs in a row ends the
    run as ``stalled`` (:mod:`~lit_dendrite.models.stall`); null or 0: the rule is off (the default, see
    :data:`~lit_dendrite.models.stall.STALL_EPOCHS`). ``stall_margin`` null means
    :data:`~lit_dendrite.models.stall.STALL_MARGIN`; nulls keep the identity of configurations recorded before the
    rule.
    """

    pretrain_epochs: int = 500
    pretrain_lr: float = 1e-3
    pretrain_batch_size: int = 256
    pretrain_target: float | None = None
    patience: int = 20
    joint_epochs: int | None = None
    frozen_epochs: int | None = None
    sessions: tuple[str, ...] = (PRETRAIN, JOINT, FROZEN)
    frozen_fast_path: bool = True
    compile: bool = False
    stall_epochs: int | None = None
    stall_margin: float | None = None

    def __post_init__(self) -> None:
        unknown = set(self.sessions) - {PRETRAIN, JOINT, FROZEN}
        if unknown or JOINT not in self.sessions:
            raise ConfigError(
                f"protocol.sessions must contain {JOINT!r} and only {[PRETRAIN, JOINT, FROZEN]}, "
                f"got {list(self.sessions)}"
            )
        if self.pretrain_epochs < 0 or self.patience < 1:
            raise ConfigError("protocol.pretrain_epochs must be >= 0 and protocol.patience >= 1")
        if not (math.isfinite(self.pretrain_lr) and self.pretrain_lr > 0):
            raise ConfigError(f"protocol.pretrain_lr must be a finite number > 0, got {self.pretrain_lr}")
        if self.pretrain_batch_size < 1:
            raise ConfigError(f"protocol.pretrain_batch_size must be >= 1, got {self.pretrain_batch_size}")
        if self.pretrain_target is not None and not 0 < self.pretrain_target <= 1:
            raise ConfigError(f"protocol.pretrain_target must lie in (0, 1] or be null, got {self.pretrain_target}")
        for key in ("joint_epochs", "frozen_epochs"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"protocol.{key} must be a positive number of epochs or null, got {value}")

        if self.stall_epochs is not None and self.stall_epochs < 0:
            raise ValueError(f"protocol.stall_epochs must be >= 0 (0: no stall rule) or null, got {self.stall_epochs}")
        if self.stall_margin is not None and not (math.isfinite(self.stall_margin) and self.stall_margin > 0):
            raise ValueError(
                f"protocol.stall_margin must be a finite number > 0 (nats) or null, got {self.stall_margin}"
            )

    def stall_stop(self, num_classes: int) -> StallStop | None:
        """The stall rule's callback for a session of a ``num_classes`` classifier, or None where it is off."""
        epochs = self.stall_epochs or 0  # null: off (see STALL_EPOCHS for why)
        margin = STALL_MARGIN if self.stall_margin is None else self.stall_margin
        return StallStop(num_classes, epochs, margin) if epochs > 0 else None

    def fixed_epochs(self, session: str) -> int | None:
        """The fixed number of epochs of session II or III, or None where it stops early."""
        return {JOINT: self.joint_epochs, FROZEN: self.frozen_epochs}.get(session)


TRAINER_LIMITS = ("max_epochs", "max_steps", "limit_train_batches", "limit_val_batches")
"""Trainer options that, at 0, leave a session without a validated epoch and so without a best checkpoint to test."""


def check_trainer_options(options: Mapping[str, Any]) -> None:
    """Raise before any session when the Trainer options cannot give each session a best checkpoint: a limit of 0
    (``max_epochs`` and ``max_steps`` also below -1, Lightning's "no limit"), or ``fast_dev_run``, which saves none."""
    for key in TRAINER_LIMITS:
        value = options.get(key)
        if value is not None and (value == 0 or (key.startswith("max_") and value < -1)):
            raise ConfigError(
                f"trainer.{key} is {value}: every session needs at least 1 training epoch, step and validation batch "
                f"to keep and test a best checkpoint; set --trainer.{key} to at least 1"
                + (" (or -1 for no limit)" if key.startswith("max_") else "")
            )
    every, epochs = options.get("check_val_every_n_epoch"), options.get("max_epochs")
    if every is not None and epochs is not None and 0 < epochs < every:
        raise ConfigError(
            f"trainer.check_val_every_n_epoch is {every} but trainer.max_epochs is {epochs}: no session would validate "
            "and keep a best checkpoint; set --trainer.check_val_every_n_epoch to at most the epochs"
        )
    if options.get("fast_dev_run"):
        raise ConfigError(
            "trainer.fast_dev_run saves no checkpoints, which the protocol tests and passes between sessions; "
            "for a quick run add --config configs/quick.yaml after the experiment's config"
        )


def save_torch_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


SHARED_PREFIX = "net.inner."
"""Where a Classifier checkpoint stores the net's shared learned module (the inner net)."""


def inner_state_from_checkpoint(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The shared module's (inner net's) weights in a Classifier checkpoint (loaded with ``weights_only=True``)."""
    state = load_checkpoint(checkpoint).get("state_dict") or {}
    prefix = SHARED_PREFIX
    inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not inner:
        raise RecordError(f"{checkpoint} holds no inner-net weights ({prefix}*)")
    return inner


def session_paths(trainer: L.Trainer) -> dict[str, Any]:
    """What a session records of how it computed: the inner net's paths since the session began (requested, used,
    fallbacks with their reasons: :class:`~lit_dendrite.nn.inner_check.PathLog`) and the device (name, capability).
    A session resumed in another process records that process's paths."""
    return {"inner_path": PATHS.summary(), "device": device_description(trainer.strategy.root_device)}


def last_checkpoint(session: SessionDir) -> ModelCheckpoint:
    """The last checkpoint, rewritten at the end of every epoch (``save_last`` alone only writes it with a new best)."""
    return ModelCheckpoint(dirpath=session.checkpoints, filename=LAST_CHECKPOINT, enable_version_counter=False)


class RunProtocol:
    """Runs the sessions of one experiment into ``run_dir``; ``build_model()`` gives a fresh Classifier and
    ``hparams`` describe the condition in TensorBoard's HParams tab (with each session's final metrics);
    ``config_hash`` is written into every checkpoint (:class:`~lit_dendrite.models.resume.ConfigIdentity`)."""

    def __init__(
        self,
        build_model: Callable[[], Classifier],
        datamodule: L.LightningDataModule,
        trainer_kwargs: dict[str, Any],
        protocol: Protocol,
        run_dir: RunDir,
        seed: int,
        callbacks: Callable[[], list[Callback]] = list,
        hparams: dict[str, Any] | None = None,
        config_hash: str | None = None,
    ) -> None:
        self.build_model = build_model
        self.datamodule = datamodule
        self.trainer_kwargs = trainer_kwargs
        self.protocol = protocol
        self.run_dir = run_dir
        self.seed = seed
        self.callbacks = callbacks
        self.hparams = hparams or {}
        self.summaries: dict[str, dict[str, Any]] = {}
        self.layout_written = False
        self.identity = [ConfigIdentity(config_hash)] if config_hash is not None else []

    def _trainer(self, session: SessionDir, callbacks: list[Callback], **overrides: Any) -> L.Trainer:
        """A Trainer logging to the session's directory; the run's first one also writes TensorBoard's layout."""
        logger = TensorBoardLogger(
            save_dir=str(self.run_dir.path), name="", version=session.name, default_hp_metric=False
        )
        if not self.layout_written:
            logger.experiment.add_custom_scalars(LAYOUT)
            self.layout_written = True
        kwargs = {**self.trainer_kwargs, **overrides}
        kwargs["plugins"] = with_atomic_checkpoints(kwargs.get("plugins"))
        callbacks = progress_callbacks(
            kwargs.get("enable_progress_bar"),
            [*callbacks, *self.identity, *self.callbacks()],
            SESSION_TITLES[session.name],
        )
        kwargs["enable_progress_bar"] = any(isinstance(c, ProgressBar) for c in callbacks)
        return L.Trainer(logger=logger, callbacks=callbacks, default_root_dir=str(session.path), **kwargs)

    def _skipped(self, session: SessionDir) -> dict[str, Any] | None:
        """The summary of a session that finished in an earlier call (said on the console), else None."""
        done = session.read_summary()
        if done is not None:
            say(f"{SESSION_TITLES[session.name]}: finished before, kept ({session.summary})")
        return done

    def _fresh_model(self, offset: int) -> tuple[Classifier, BatchSeed, WallClock]:
        """A model built from the session's seed, and the callbacks that make the session resume exactly."""
        L.seed_everything(self.seed + offset, workers=True, verbose=False)
        return self.build_model(), BatchSeed(self.seed, offset), WallClock()

    def pretrain(self, spec: NeuronSpec) -> dict[str, Any]:
        """Session I: the shared module fitted to this seed's ``spec.pretrain`` target (the inner net's random smooth
        function), saved beside its summary."""
        session = self.run_dir.session(PRETRAIN)
        if (done := self._skipped(session)) is not None:
            return done
        model, seeds, clock = self._fresh_model(0)
        PATHS.reset()
        protocol = self.protocol
        module = InnerPretrain(
            model.inner,
            self.seed,
            protocol.pretrain_lr,
            protocol.pretrain_batch_size,
            protocol.pretrain_target,
            target_of=spec.pretrain,
        )
        checkpoint = last_checkpoint(session)
        trainer = self._trainer(
            session, [checkpoint, seeds, clock], max_epochs=protocol.pretrain_epochs, min_epochs=None, max_steps=-1
        )
        steps = len(module.train_dataloader())
        stop = (
            "" if protocol.pretrain_target is None else f", stopping at explained variance {protocol.pretrain_target}"
        )
        say(
            f"{SESSION_TITLES[PRETRAIN]}: fits the inner net ({parameters(model.inner)} parameters) to its target "
            f"function, {protocol.pretrain_epochs} epochs of {steps} steps{stop}"
        )
        if protocol.pretrain_epochs > 0:
            trainer.fit(module, ckpt_path=resume_point(session))
        module.restore_best()
        explained = module.explained_variance()
        if spec.finish_pretrain is not None:
            spec.finish_pretrain(model.inner)
        best = module.best["epoch"]
        at = "" if best is None else f" (epoch {best + 1} of {trainer.current_epoch})"
        say(f"{SESSION_TITLES[PRETRAIN]} done in {seconds_text(clock.seconds)}: explained variance {explained:.3f}{at}")
        summary = {
            **session_paths(trainer),
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "best_epoch": module.best["epoch"],
            "explained_variance": explained,
            "target": protocol.pretrain_target,
            "target_reached": None if protocol.pretrain_target is None else explained >= protocol.pretrain_target,
            "inner": self.run_dir.relative(self.run_dir.pretrained_inner),
            "wall_time_s": clock.seconds,
        }
        self._finish(trainer, session, summary, {self.run_dir.pretrained_inner: model.inner.state_dict()})
        return summary

    def train(
        self, name: str, inner_state: dict[str, torch.Tensor] | None, freeze: bool, spec: NeuronSpec | None = None
    ) -> dict[str, Any]:
        """Session II (``freeze=False``) or III: fit with early stopping (or a fixed number of epochs), then test
        the best checkpoint; session II keeps the best shared module when ``spec.freeze`` (session III needs it)."""
        session = self.run_dir.session(name)
        if (done := self._skipped(session)) is not None:
            return done
        model, seeds, clock = self._fresh_model(1 if name == JOINT else 2)
        PATHS.reset()
        if inner_state is not None:
            if freeze:
                model.freeze_inner(inner_state)
            else:
                model.inner.load_state_dict(inner_state)
        elif spec is not None and spec.finish_pretrain is not None:  # no session I ran: its end's fix still applies
            spec.finish_pretrain(model.inner)
        best = ModelCheckpoint(
            dirpath=session.checkpoints,
            filename=BEST_CHECKPOINT,
            monitor="val/loss",
            mode="min",
            enable_version_counter=False,
        )
        fixed = self.protocol.fixed_epochs(name)
        # a fixed schedule keeps EarlyStopping for its non-finite check only: its patience cannot run out
        patience = self.protocol.patience if fixed is None else fixed + 1
        stop = EarlyStopping(monitor="val/loss", mode="min", patience=patience, check_finite=True)
        callbacks = [best, last_checkpoint(session), stop, seeds, clock]
        stall = self.protocol.stall_stop(model.net.num_classes)
        if stall is not None:
            callbacks.append(stall)
        if freeze and self.protocol.frozen_fast_path and spec is not None and spec.tables:
            callbacks.append(FrozenInnerTables())
        maybe_compile(model.net, self.protocol.compile)
        schedule = {} if fixed is None else {"max_epochs": fixed, "min_epochs": None, "max_steps": -1}
        trainer = self._trainer(session, callbacks, **schedule)
        trains = (
            "the outer net on the frozen inner net, re-initialised"
            if freeze
            else "the inner and outer nets together"
            if model.inner is not None
            else "the net"
        )
        budget = epochs_budget(trainer.max_epochs, self.protocol.patience, fixed)
        size = parameters(model, trainable=True)
        say(f"{SESSION_TITLES[name]}: trains {trains} ({size} trainable parameters), {budget}")
        trainer.fit(model, datamodule=self.datamodule, ckpt_path=resume_point(session))
        # read before testing: trainer.test(ckpt_path=...) restores the callbacks' state of the best epoch
        stopped_early = bool(stop.stopped_epoch)
        if stopped_early and not torch.isfinite(stop.best_score):
            raise Diverged(f"validation loss became non-finite in session {name}")
        if stall is not None and stall.stalled:
            # no summary: the session did not finish (its checkpoints stay); --retry-stalled trains it afresh
            say(f"{SESSION_TITLES[name]} stalled: {stall.reason}")
            raise Stalled(f"session {name}: {stall.reason}")
        best_path = Path(best.best_model_path)
        tested = trainer.test(model, datamodule=self.datamodule, ckpt_path=str(best_path), verbose=False)[0]
        summary = {
            "epochs": trainer.current_epoch,
            "stopped_early": stopped_early,
            "best_val_loss": float(best.best_model_score),
            "best_checkpoint": self.run_dir.relative(best_path),
            "test_acc": tested["test/acc"],
            "test_loss": tested["test/loss"],
            "frozen_inner": freeze,
            "wall_time_s": clock.seconds,
            **session_paths(trainer),
        }
        say(
            f"{SESSION_TITLES[name]} done in {seconds_text(clock.seconds)}, {summary['epochs']} epochs"
            f"{' (stopped early)' if stopped_early else ''}: best val/loss {summary['best_val_loss']:.4f}; "
            f"test accuracy {summary['test_acc']:.2%} on the best checkpoint"
        )
        trainer.logger.log_hyperparams(
            {**self.hparams, "session": name, "seed": self.seed},
            metrics={"hp/test_acc": summary["test_acc"], "hp/best_val_loss": summary["best_val_loss"]},
        )
        tensors = (
            {self.run_dir.best_inner: inner_state_from_checkpoint(best_path)}
            if name == JOINT and spec is not None and spec.freeze
            else {}
        )
        self._finish(trainer, session, summary, tensors)
        return summary

    @staticmethod
    def _finish(
        trainer: L.Trainer, session: SessionDir, summary: dict[str, Any], tensors: dict[Path, dict[str, torch.Tensor]]
    ) -> None:
        """Rank 0 writes the session's files (tensors first, the summary last); all ranks then wait."""
        if trainer.is_global_zero:
            for path, state in tensors.items():
                save_torch_atomic(state, path)
            write_json_atomic(session.summary, summary)
        trainer.strategy.barrier("session-finished")

    def run(self) -> dict[str, dict[str, Any]]:
        """All sessions this net needs, in order; returns each session's summary (also kept in ``summaries`` as
        they finish, so that a run that stops early still reports the sessions it finished)."""
        spec = net_neuron_spec(self.build_model().net)
        sessions = self.summaries
        inner_state = None
        with quiet_lightning():
            if spec is not None and spec.pretrain is not None and PRETRAIN in self.protocol.sessions:
                sessions[PRETRAIN] = self.pretrain(spec)
                inner_state = load_checkpoint(self.run_dir.pretrained_inner, retrain_advice(self.run_dir, PRETRAIN))
            sessions[JOINT] = self.train(JOINT, inner_state, freeze=False, spec=spec)
            if spec is not None and spec.freeze and FROZEN in self.protocol.sessions:
                best_inner = load_checkpoint(self.run_dir.best_inner, retrain_advice(self.run_dir, JOINT))
                sessions[FROZEN] = self.train(FROZEN, best_inner, freeze=True, spec=spec)
        return sessions


def parameters(module: torch.nn.Module, trainable: bool = False) -> str:
    """The number of (trainable) parameters of ``module``, with thousands separated: ``122,187``."""
    return f"{sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable):,}"


def protocol_dict(protocol: Protocol) -> dict[str, Any]:
    """The protocol settings as plain JSON-able data."""
    data = asdict(protocol)
    data["sessions"] = list(protocol.sessions)
    return data
