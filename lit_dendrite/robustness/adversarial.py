"""Adversarial robustness of a model under one attack: the epsilon grids, robust accuracy per epsilon, and the
checks that catch a broken evaluation (the named attacks and their engines are in
:mod:`lit_dendrite.robustness.attacks`).

Every evaluation runs the model in ``eval()`` mode on pixels in [0,1] (normalisation is the model's first
layer) with the exact inner net, never a tabulated fast path. Reported robust accuracy follows the standard
worst case over epsilons: a point broken at some eps' <= eps counts as broken at eps (attacks run
separately per epsilon are not nested); the raw per-epsilon numbers are kept beside it. The sanity checks
of :func:`evaluate_attack` raise :class:`SanityCheckError` instead of returning numbers nobody can trust; the one
that says the attack is too weak on this model, :class:`UnreliableAttackError`, lets a run's evaluation record the
attack as refused and go on (:mod:`lit_dendrite.robustness.evaluate`).
"""

from __future__ import annotations

import base64
import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lit_dendrite.nn.tabulated import exact_inner
from lit_dendrite.robustness.progress import counted, image_progress

if TYPE_CHECKING:
    from lit_dendrite.robustness.attacks import Attack

NORMS = ("linf", "l2")

_EPSILONS = {
    "mnist": {"linf": (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3), "l2": (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)},
    "cifar": {"linf": tuple(e / 255 for e in (0, 1, 2, 4, 6, 8, 12, 16)), "l2": (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)},
}
_REPORTED_EPSILON = {"mnist": {"linf": 0.3, "l2": 2.0}, "cifar": {"linf": 8 / 255, "l2": 0.5}}
_FAMILY = {"digits": "mnist", "mnist": "mnist", "fashion_mnist": "mnist", "cifar10": "cifar", "cifar100": "cifar"}

NORM_TOLERANCE = 1e-5
"""Slack (relative to eps, plus the same absolute) when re-checking a perturbation's size."""
BOX_TOLERANCE = 1e-6
"""Slack when re-checking that an adversarial example lies inside [0,1]."""
DETERMINISM_TOLERANCE = 1e-5
"""Largest logit difference allowed between two identical evaluation passes."""


class SanityCheckError(RuntimeError):
    """An evaluation produced numbers that cannot be trusted (randomness, wrong input range, a bad attack)."""


class UnreliableAttackError(SanityCheckError):
    """The attack breaks fewer examples at a larger epsilon than at a smaller one: it is too weak on this model
    (a property of the model and the attack's settings, not of the evaluation's setup), so its numbers are
    withheld."""


def _family(dataset: str) -> str:
    try:
        return _FAMILY[dataset]
    except KeyError:
        raise ValueError(f"no epsilon list for dataset {dataset!r}; known: {sorted(_FAMILY)}") from None


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")


def epsilons_for(dataset: str, norm: str) -> list[float]:
    """The epsilon grid (pixels in [0,1]) for a data set and norm: MNIST-like L-inf 0..0.3, CIFAR 0..16/255."""
    _check_norm(norm)
    return list(_EPSILONS[_family(dataset)][norm])


def reported_epsilon(dataset: str, norm: str) -> float:
    """The epsilon whose robust accuracy is the headline number (MNIST L-inf 0.3, CIFAR L-inf 8/255)."""
    _check_norm(norm)
    return _REPORTED_EPSILON[_family(dataset)][norm]


@contextlib.contextmanager
def exact_model(model: nn.Module) -> Iterator[nn.Module]:
    """The model in ``eval()`` mode, computing with its exact inner net (no lookup tables) and with its parameters
    frozen inside the block; their ``requires_grad`` flags come back after.

    Attacks need gradients with respect to the images only: frozen parameters spare the weight gradients (a third
    of a 1-arg CNN's attack step) and leave the image gradients bit for bit the same.
    """
    model.eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.requires_grad_(False)
    try:
        with exact_inner(model):
            yield model
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


def check_pixels(images: torch.Tensor) -> None:
    """Raise unless ``images`` are float pixels in [0,1] of shape (N, C, H, W)."""
    if not images.is_floating_point() or images.dim() != 4:
        raise ValueError(f"expected float images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    low, high = images.min().item(), images.max().item()
    if low < 0 or high > 1:
        raise SanityCheckError(
            f"images span [{low:.3f}, {high:.3f}], not pixels in [0,1]: attacks use the box [0,1] and epsilons "
            "in pixel units, so give raw pixels and keep the normalisation inside the model"
        )


def check_eval_mode(model: nn.Module) -> None:
    """Raise if any submodule is still in training mode (dropout would randomise the attack)."""
    training = [name or type(model).__name__ for name, module in model.named_modules() if module.training]
    if training:
        raise SanityCheckError(
            f"modules in training mode during evaluation: {', '.join(training[:5])}"
            f"{' ...' if len(training) > 5 else ''}; something overrides eval()"
        )


def check_deterministic(model: nn.Module, images: torch.Tensor) -> None:
    """Raise unless two passes over the same images give the same logits (no dropout, no randomness)."""
    with torch.no_grad():
        first, second = model(images), model(images)
    difference = (first - second).abs().max().item()
    if difference > DETERMINISM_TOLERANCE:
        raise SanityCheckError(
            f"two evaluation passes over the same images differ by up to {difference:.3g} in the logits: the model "
            "is random in eval mode (dropout left on?), so attacks and accuracies would be noise"
        )


def check_clean_accuracy(measured: float, recorded: float, tolerance: float = 0.005) -> None:
    """Raise if the accuracy measured now differs from the one recorded at training time by over ``tolerance``.

    A model that expects normalised inputs but is given pixels (normalisation outside the model) fails here.
    """
    if abs(measured - recorded) > tolerance:
        raise SanityCheckError(
            f"clean accuracy measured now ({measured:.4f}) differs from the accuracy recorded by the run "
            f"({recorded:.4f}) by more than {tolerance}: the evaluated model or its inputs are not those of "
            "training (normalisation outside the model? wrong test set? wrong checkpoint?)"
        )


def perturbation_norms(adversarials: torch.Tensor, images: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example size of ``adversarials - images`` in ``norm``."""
    delta = (adversarials - images).flatten(1)
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes of ``images``, batch by batch, without gradients."""
    with torch.no_grad():
        return torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def check_successes(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    adversarials: torch.Tensor,
    success: torch.Tensor,
    epsilons: Sequence[float],
    norm: str,
) -> None:
    """Re-check every example an engine counts as a success: within eps, inside [0,1], misclassified now."""
    for k, eps in enumerate(epsilons):
        broken = success[k]
        if not broken.any():
            continue
        x, y, adv = images[broken], labels[broken], adversarials[k][broken]
        low, high = adv.min().item(), adv.max().item()
        if low < -BOX_TOLERANCE or high > 1 + BOX_TOLERANCE:
            raise SanityCheckError(
                f"adversarial examples at eps={eps:g} leave [0,1]: they span [{low:.6g}, {high:.6g}]"
            )
        size = perturbation_norms(adv, x, norm).max().item()
        if size > eps * (1 + NORM_TOLERANCE) + NORM_TOLERANCE:
            raise SanityCheckError(f"an adversarial example at {norm} eps={eps:g} is {size:.6g} from its original")
        still_correct = int((predict(model, adv) == y).sum())
        if still_correct:
            raise SanityCheckError(
                f"{still_correct} adversarial examples counted as successes at eps={eps:g} are classified correctly "
                "by the model in eval mode: the attack saw a different (random or train-mode) model"
            )


def _check_epsilons(epsilons: Sequence[float]) -> list[float]:
    values = sorted({0.0, *(float(e) for e in epsilons)})
    if values[0] < 0 or not all(math.isfinite(e) for e in values):
        raise ValueError(f"epsilons must be finite and >= 0, got {list(epsilons)}")
    return values


def check_curves(
    correct: torch.Tensor, success: torch.Tensor, epsilons: Sequence[float], rise_tolerance: float
) -> None:
    """Raise unless the attack at eps 0 breaks exactly the misclassified examples and its raw robust
    accuracy never rises with eps by more than ``rise_tolerance`` (a fraction of the examples); the rise raises
    :class:`UnreliableAttackError`."""
    disagree = int((success[0] == correct).sum())
    if disagree:
        raise SanityCheckError(
            f"at eps 0 the attack's robust accuracy ({(~success[0]).float().mean().item():.4f}) differs from the "
            f"clean accuracy ({correct.float().mean().item():.4f}) on {disagree} examples: the attack sees a "
            "different or random model"
        )
    raw = (~success).float().mean(1)
    for k in range(1, len(raw)):
        rise = (raw[k] - raw[:k].min()).item()
        if rise > rise_tolerance:
            raise UnreliableAttackError(
                f"raw robust accuracy rises by {rise:.4f} (> {rise_tolerance:.4f}) between a smaller eps and "
                f"eps={epsilons[k]:g}: the attack is unreliable on this model (raise its steps or restarts)"
            )


def _rng_state(device: torch.device) -> str:
    """The state of the generator attacks draw from on ``device``, as text for the resume store."""
    state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
    return base64.b64encode(state.numpy().tobytes()).decode()


def _set_rng_state(text: str, device: torch.device) -> None:
    state = torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def evaluate_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: Attack,
    epsilons: Sequence[float],
    batch_size: int = 500,
    rise_tolerance: float = 0.02,
    progress: bool = True,
    finished: Mapping[str, Any] | None = None,
    record: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
    """Robust accuracy of ``model`` under ``attack`` at each epsilon (0 is always included), with every check.

    ``rise_tolerance`` is the largest rise of the raw (per-epsilon) curve accepted before raising, as a
    fraction of the examples but at least one example. The attack runs in units (one batch at one epsilon where
    the engine ``splits_epsilons``, else one batch at all of them); ``record(key, unit)`` is called with each
    finished one, and those in ``finished`` are not run again. A unit keeps the random number generator's state
    after it, from which the next one resumes, so an interrupted attack ends as an uninterrupted one. ``progress``
    shows a bar over images x epsilons x restarts, the work a person waits for.
    """
    check_pixels(images)
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need one label per image and at least one image, got {len(images)} and {len(labels)}")
    epsilons = _check_epsilons(epsilons)
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    started = time.perf_counter()
    with exact_model(model):
        check_eval_mode(model)
        check_deterministic(model, images[:batch_size])
        correct = predict(model, images) == labels
        success = torch.zeros(len(epsilons), len(images), dtype=torch.bool, device=device)
        batches = range(0, len(images), batch_size)
        split = getattr(attack.engine, "splits_epsilons", False)  # an engine registered without it: one unit a batch
        groups = [[i] for i in range(len(epsilons))] if split else [list(range(len(epsilons)))]
        finished, resume_from = finished or {}, None
        restarts = int(attack.params.get("restarts", 1))
        shape = [counted(len(images), "image"), counted(len(epsilons), "epsilon"), counted(restarts, "restart")]
        description = f"{attack.name}, {' x '.join(shape)}"
        with image_progress(len(images) * len(epsilons) * restarts, description, progress) as bar:
            for start in batches:
                x, y = images[start : start + batch_size], labels[start : start + batch_size]
                for rows in groups:
                    key = f"{start}:{','.join(repr(epsilons[i]) for i in rows)}"
                    unit_images = len(x) * len(rows) * restarts
                    if key in finished:
                        success[rows, start : start + batch_size] = torch.tensor(
                            finished[key]["success"], device=device
                        )
                        resume_from = finished[key]["rng"]
                        bar.update(unit_images)
                        continue
                    if resume_from is not None:
                        _set_rng_state(resume_from, device)
                        resume_from = None
                    group = [epsilons[i] for i in rows]
                    adversarials, batch_success = attack.engine.run(model, x, y, group)
                    batch_success = torch.as_tensor(batch_success, device=device).bool()
                    check_successes(model, x, y, adversarials, batch_success, group, attack.norm)
                    success[rows, start : start + batch_size] = batch_success
                    if record is not None:
                        record(key, {"success": batch_success.tolist(), "rng": _rng_state(device)})
                    bar.update(unit_images)
    check_curves(correct, success, epsilons, max(rise_tolerance, 1 / len(images)))
    raw = (~success).float().mean(1).tolist()
    worst = (correct & ~success.cummax(0).values).float().mean(1).tolist()
    return {
        "attack": attack.describe(),
        "n": len(images),
        "epsilons": epsilons,
        "clean_accuracy": correct.float().mean().item(),
        "robust_accuracy": worst,
        "robust_accuracy_raw": raw,
        "convention": "robust_accuracy: worst case over eps' <= eps; robust_accuracy_raw: each eps on its own",
        "wall_time_s": time.perf_counter() - started,
    }
