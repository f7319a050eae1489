"""Named attacks: the engines that run them, the registries of attack and engine names, and evaluating a model
under attacks picked by name.

An attack name means an :class:`AttackSpec` (norm, engine, method, default parameters) in :data:`ATTACKS`; its
engine name means a class in :data:`ENGINES` that attacks one batch at several epsilons. An attack on an existing
engine is one :func:`register_attack` entry; a new engine is one class with :func:`register_engine` (README,
"Adversarial robustness"). A module that registers attacks must be imported before they are named.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import nn

from lit_dendrite.errors import ConfigError
from lit_dendrite.robustness.adversarial import NORMS, epsilons_for, evaluate_attack, predict, reported_epsilon


class AttackEngine(Protocol):
    """Attacks one batch at several epsilons; foolbox and AutoAttack implement it, others can be added."""

    splits_epsilons: bool
    """Whether running the epsilons one call at a time gives what one call over all of them gives (the unit an
    interrupted evaluation resumes from is then one epsilon of one batch, else one batch)."""

    def run(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilons: Sequence[float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adversarial candidates ``(E, N, C, H, W)`` and the engine's own success flags ``(E, N)``."""
        ...


@dataclass(frozen=True)
class AttackSpec:
    """What an attack name means: its norm, engine (a name in :data:`ENGINES`), the engine's method and the
    attack's default parameters; ``opt_in`` attacks are slow and run only when named."""

    norm: str
    engine: str
    method: str
    defaults: dict[str, Any] = field(default_factory=dict)
    opt_in: bool = False


ENGINES: dict[str, type] = {}
"""Attack engines by name: a class built as ``cls(spec, **parameters)`` (its ``defaults`` are parameters every
attack of the engine takes; a TypeError for one it does not take) whose instances implement :class:`AttackEngine`."""

EngineClass = TypeVar("EngineClass", bound=type)


def register_engine(name: str) -> Callable[[EngineClass], EngineClass]:
    """Class decorator: attacks whose spec names engine ``name`` are run by the class."""

    def register(cls: EngineClass) -> EngineClass:
        if not callable(getattr(cls, "run", None)) or not isinstance(getattr(cls, "defaults", None), dict):
            raise TypeError(f"an attack engine needs a run() method and a `defaults` dict, {cls!r} lacks one")
        if ENGINES.get(name, cls) is not cls:
            raise ConfigError(f"an attack engine named {name!r} is already registered ({ENGINES[name]}); rename it")
        ENGINES[name] = cls
        return cls

    return register


@register_engine("foolbox")
class FoolboxEngine:
    """A foolbox 3 attack (``spec.method`` names its class) on ``PyTorchModel(bounds=(0, 1), preprocessing=None)``,
    repeated ``restarts`` times. A point counts as broken at an epsilon if any restart breaks it there."""

    defaults: ClassVar[dict[str, Any]] = {"restarts": 1}

    def __init__(self, spec: AttackSpec, restarts: int = 1, **params: Any) -> None:
        import foolbox as fb

        if restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {restarts}")
        if restarts > 1 and not params.get("random_start", False):
            raise ConfigError(f"restarts={restarts} repeats {spec.method} identically; set random_start=True")
        if not hasattr(fb.attacks, spec.method):
            raise ConfigError(f"foolbox has no attack {spec.method!r}; see foolbox.attacks")
        try:
            attack = getattr(fb.attacks, spec.method)(**params)
        except TypeError as error:
            raise ConfigError(f"foolbox {spec.method} does not accept parameters {params}: {error}") from None
        self.attack = attack.repeat(restarts) if restarts > 1 else attack
        # one epsilon at a time draws the same random numbers as all at once only for a single fixed-epsilon run
        # (a minimization attack runs once for every epsilon; restarts draw restart by restart)
        self.splits_epsilons = restarts == 1 and isinstance(attack, fb.attacks.base.FixedEpsilonAttack)

    def run(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilons: Sequence[float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0, 1), preprocessing=None, device=images.device)
        _, clipped, success = self.attack(fmodel, images, labels, epsilons=list(epsilons))
        return torch.stack(clipped).detach(), success


@register_engine("autoattack")
class AutoAttackEngine:
    """AutoAttack (Croce & Hein 2020) from the ``pyautoattack`` package in version ``spec.method``, run once per
    epsilon (eps 0 is the clean prediction: all four of its attacks would only spend time there)."""

    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, spec: AttackSpec, seed: int = 0) -> None:
        try:
            import pyautoattack  # noqa: F401
        except ImportError:
            raise ConfigError("the autoattack engine needs the optional package: pip install pyautoattack") from None
        self.norm = {"linf": "Linf", "l2": "L2"}[spec.norm]
        self.version, self.seed = spec.method, seed
        self.splits_epsilons = True  # one AutoAttack per epsilon, seeded by itself

    def run(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilons: Sequence[float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from pyautoattack import AutoAttack

        adversarials, successes = [], []
        for eps in epsilons:
            if eps == 0:
                x_adv, y_adv = images, predict(model, images)
            else:
                autoattack = AutoAttack(
                    model, norm=self.norm, eps=eps, version=self.version, device=images.device, seed=self.seed
                )
                x_adv, y_adv = autoattack.run_standard_evaluation(images, labels, batch_size=len(images))
            adversarials.append(x_adv.detach())
            successes.append(y_adv != labels)
        return torch.stack(adversarials), torch.stack(successes)


ATTACKS: dict[str, AttackSpec] = {}
"""Attacks by name, filled by :func:`register_attack`."""


def register_attack(name: str, spec: AttackSpec) -> AttackSpec:
    """Make ``name`` an attack (``--attacks``, a sweep's ``evaluate.attacks``); registering the same spec again
    is allowed, another spec under a taken name is not."""
    if not isinstance(name, str) or not name or "," in name:
        raise ConfigError(f"an attack name must be a non-empty string without commas, got {name!r}")
    if spec.norm not in NORMS:
        raise ConfigError(f"attack {name!r}: unknown norm {spec.norm!r}; choose one of {NORMS}")
    if spec.engine not in ENGINES:
        raise ConfigError(f"attack {name!r}: unknown engine {spec.engine!r}; registered: {sorted(ENGINES)}")
    if ATTACKS.get(name, spec) != spec:
        raise ConfigError(f"an attack named {name!r} is already registered ({ATTACKS[name]}); rename it")
    ATTACKS[name] = spec
    return spec


# PGD steps follow Madry et al. (2018): step size 2.5 * eps / steps, so the steps can cross the eps-ball from a
# random start.
register_attack(
    "linf_pgd",
    AttackSpec(
        "linf", "foolbox", "LinfPGD", dict(steps=40, rel_stepsize=2.5 / 40, abs_stepsize=None, random_start=True)
    ),
)
register_attack(
    "l2_pgd",
    AttackSpec("l2", "foolbox", "L2PGD", dict(steps=50, rel_stepsize=2.5 / 50, abs_stepsize=None, random_start=True)),
)
register_attack("fgsm", AttackSpec("linf", "foolbox", "FGSM", dict(random_start=False)))
register_attack(
    "linf_deepfool",
    AttackSpec("linf", "foolbox", "LinfDeepFoolAttack", dict(steps=50, candidates=10, overshoot=0.02, loss="logits")),
)
register_attack(
    "l2_cw",
    AttackSpec(
        "l2",
        "foolbox",
        "L2CarliniWagnerAttack",
        dict(binary_search_steps=9, steps=1000, stepsize=0.01, confidence=0.0, initial_const=0.001, abort_early=True),
    ),
)
register_attack(
    "boundary",
    AttackSpec(
        "l2",
        "foolbox",
        "BoundaryAttack",
        dict(steps=5000, spherical_step=0.01, source_step=0.01, step_adaptation=1.5),
        opt_in=True,
    ),
)
register_attack("autoattack_linf", AttackSpec("linf", "autoattack", "standard", dict(seed=0), opt_in=True))
register_attack("autoattack_l2", AttackSpec("l2", "autoattack", "standard", dict(seed=0), opt_in=True))


def default_attacks() -> tuple[str, ...]:
    """The attacks run when none are named: every registered one that is not ``opt_in``."""
    return tuple(name for name, spec in ATTACKS.items() if not spec.opt_in)


@dataclass(frozen=True)
class Attack:
    """A named attack ready to run: its norm, engine, and every parameter that shapes it."""

    name: str
    norm: str
    engine: AttackEngine
    params: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        """What the results record about the attack."""
        spec = ATTACKS[self.name]
        return {"name": self.name, "norm": self.norm, "engine": spec.engine, "method": spec.method, **self.params}


def build_attack(name: str, **overrides: Any) -> Attack:
    """The attack ``name`` with its default parameters (its engine's, then its own), some replaced by
    ``overrides`` (e.g. ``steps=100``). Foolbox attacks also take ``restarts`` (default 1; needs
    ``random_start=True`` to differ)."""
    try:
        spec = ATTACKS[name]
    except KeyError:
        raise ConfigError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}") from None
    engine_class = ENGINES[spec.engine]
    params = {**engine_class.defaults, **spec.defaults, **overrides}
    try:
        engine = engine_class(spec, **params)
    except TypeError as error:
        raise ConfigError(f"attack {name!r} does not accept the parameters {sorted(params)}: {error}") from None
    return Attack(name, spec.norm, engine, params)


def evaluate_attacks(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset: str,
    attacks: Sequence[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    epsilons: dict[str, Sequence[float]] | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`~lit_dendrite.robustness.adversarial.evaluate_attack` for each named attack (default:
    :func:`default_attacks`), with its headline number.

    ``overrides`` maps attack names to parameter overrides; ``epsilons`` maps norms to epsilon grids
    (default: :func:`~lit_dendrite.robustness.adversarial.epsilons_for` the data set).
    """
    overrides, epsilons = overrides or {}, epsilons or {}
    built = [
        build_attack(name, **overrides.get(name, {})) for name in (default_attacks() if attacks is None else attacks)
    ]
    results = {}
    for attack in built:
        result = evaluate_attack(
            model, images, labels, attack, epsilons.get(attack.norm) or epsilons_for(dataset, attack.norm), **kwargs
        )
        eps = reported_epsilon(dataset, attack.norm)
        if eps in result["epsilons"]:
            result["reported"] = {
                "epsilon": eps,
                "robust_accuracy": result["robust_accuracy"][result["epsilons"].index(eps)],
            }
        results[attack.name] = result
    return results
