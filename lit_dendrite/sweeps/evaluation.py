"""The ``evaluate:`` section of a sweep file: each run's robustness, measured by the run's own job right after
training (same allocation, same GPU), through the same code as ``launch/evaluate.py``.

    evaluate:
      n: 1000                  # first N test images, for attacks and corrupted sets (default: all)
      batch_size: 500          # default 500
      seed: 0                  # torch seed each attack starts from (default 0)
      attacks:                 # attack name -> its settings; {} keeps the defaults
        linf_pgd: {}                                   # the data set's epsilon grid, the section's n
        autoattack_linf: {epsilons: [0.3], n: 200}     # its own epsilons (0 is always added) and images
        l2_pgd: {steps: 100}                           # any other key overrides a parameter of the attack
      corruptions: {spec: mnist_c, root: data}         # or {spec: "generated:DIR"}; root defaults to data
      datasets:                # per data set (the run's data.dataset): these keys replace the ones above
        cifar10:
          attacks: {autoattack_linf: {epsilons: ["8/255"]}}   # "a/b" is a fraction
          corruptions: {spec: cifar10_c, root: data}

A run is evaluated with the settings of its data set; one whose data set has neither attacks nor corruptions is
not evaluated. Its evaluation is a few ``evaluate_run`` calls (the corrupted sets, then the attacks grouped by
their number of images), each merging its sections into ``robustness.json``; a section already measured with the
same request on the same checkpoint is not measured again, and an interrupted evaluation resumes from the resume
store. Nothing here imports torch, so ``launch/sweep.py status`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from lit_dendrite.errors import ConfigError
from lit_dendrite.io import read_json, write_json_atomic
from lit_dendrite.robustness.store import (
    ADVERSARIAL,
    CORRUPTIONS,
    REFUSED,
    attack_request,
    checkpoint_identity,
    corruption_request,
    find_baseline,
    read_report,
)
from lit_dendrite.runs import RunDir, RunRecord

EVALUATE_KEYS = ("n", "batch_size", "seed", "attacks", "corruptions", "datasets")
PER_DATASET_KEYS = ("n", "batch_size", "seed", "attacks", "corruptions")
CORRUPTION_KEYS = ("spec", "root", "n")
ATTACK_KEYS = ("epsilons", "n")  # any other key of an attack's settings overrides one of its parameters
DEFAULTS = {"n": None, "batch_size": 500, "seed": 0, "attacks": {}, "corruptions": None}


class EvaluateSpecError(ConfigError):
    """An ``evaluate:`` section that cannot be used; the message names the key and the fix."""


def _fail(where: str, message: str) -> EvaluateSpecError:
    return EvaluateSpecError(f"{where}: {message}")


def _count(where: str, value: Any, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _fail(where, f"must be a positive integer{' or null' if allow_none else ''}, got {value!r}")
    return value


def _epsilon(where: str, value: Any) -> float:
    """A number, or a fraction written "a/b" (the paper's 8/255)."""
    if isinstance(value, str):
        try:
            value = float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise _fail(where, f"epsilon {value!r} is neither a number nor a fraction like '8/255'") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise _fail(where, f"epsilons must be finite numbers >= 0, got {value!r}")
    return float(value)


def _attacks(where: str, attacks: Any) -> dict[str, dict[str, Any]]:
    if isinstance(attacks, list):
        attacks = {name: {} for name in attacks}
    if not isinstance(attacks, dict):
        raise _fail(where, f"must map attack names to settings, e.g. {{linf_pgd: {{n: 200}}}}, got {attacks!r}")
    parsed = {}
    for name, settings in attacks.items():
        settings = {} if settings is None else settings
        if not isinstance(name, str) or not isinstance(settings, dict):
            raise _fail(f"{where}.{name}", "must be a mapping of settings (epsilons, n, attack parameters) or {}")
        entry = dict(settings)
        if "epsilons" in entry:
            epsilons = entry["epsilons"]
            if not isinstance(epsilons, list) or not epsilons:
                raise _fail(f"{where}.{name}.epsilons", f"must be a non-empty list, got {epsilons!r}")
            entry["epsilons"] = [_epsilon(f"{where}.{name}.epsilons", eps) for eps in epsilons]
        if "n" in entry:
            entry["n"] = _count(f"{where}.{name}.n", entry["n"])
        parsed[name] = entry
    return parsed


def _corruptions(where: str, corruptions: Any) -> dict[str, Any] | None:
    if corruptions is None:
        return None
    if isinstance(corruptions, str):
        corruptions = {"spec": corruptions}
    if not isinstance(corruptions, dict) or not isinstance(corruptions.get("spec"), str):
        raise _fail(
            where, f"must be {{spec: cifar10_c | cifar100_c | mnist_c | generated:DIR, root: DIR}}, got {corruptions!r}"
        )
    unknown = sorted(set(corruptions) - set(CORRUPTION_KEYS))
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; allowed: {list(CORRUPTION_KEYS)}")
    parsed = {"spec": corruptions["spec"], "root": str(corruptions.get("root", "data"))}
    if "n" in corruptions:
        parsed["n"] = _count(f"{where}.n", corruptions["n"])
    return parsed


def _settings(where: str, raw: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; allowed: {list(keys)}")
    parsed: dict[str, Any] = {}
    if "n" in raw:
        parsed["n"] = _count(f"{where}.n", raw["n"])
    if "batch_size" in raw:
        parsed["batch_size"] = _count(f"{where}.batch_size", raw["batch_size"], allow_none=False)
    if "seed" in raw:
        if not isinstance(raw["seed"], int) or isinstance(raw["seed"], bool):
            raise _fail(f"{where}.seed", f"must be an integer, got {raw['seed']!r}")
        parsed["seed"] = raw["seed"]
    if "attacks" in raw:
        parsed["attacks"] = _attacks(f"{where}.attacks", raw["attacks"] or {})
    if "corruptions" in raw:
        parsed["corruptions"] = _corruptions(f"{where}.corruptions", raw["corruptions"])
    return parsed


def parse_evaluate(where: str, raw: Any) -> dict[str, Any] | None:
    """The checked ``evaluate:`` section (plain JSON-ready data), None when there is none; ``where`` names the
    sweep file in errors. Attack names and corrupted sets are checked later by :func:`check_evaluate`."""
    if raw is None:
        return None
    where = f"{where}: evaluate"
    if not isinstance(raw, dict):
        raise _fail(where, f"must be a mapping with keys {list(EVALUATE_KEYS)}, got {raw!r}")
    parsed = _settings(where, {k: v for k, v in raw.items() if k != "datasets"}, PER_DATASET_KEYS)
    datasets = raw.get("datasets") or {}
    if not isinstance(datasets, dict):
        raise _fail(f"{where}.datasets", f"must map data set names to settings, got {datasets!r}")
    parsed["datasets"] = {
        str(name): _settings(f"{where}.datasets.{name}", settings or {}, PER_DATASET_KEYS)
        for name, settings in datasets.items()
    }
    if not any(settings_for(parsed, name)["attacks"] or settings_for(parsed, name)["corruptions"]
               for name in [None, *parsed["datasets"]]):  # fmt: skip
        raise _fail(where, "names no attacks and no corruptions: nothing to evaluate (remove the section)")
    return parsed


def settings_for(evaluate: dict[str, Any], dataset: str | None) -> dict[str, Any]:
    """The settings a run of ``dataset`` is evaluated with: its ``datasets`` entry over the shared keys over the
    defaults (``evaluate`` as :func:`parse_evaluate` returns it; ``dataset`` None: the shared settings)."""
    return {
        **DEFAULTS,
        **{k: v for k, v in evaluate.items() if k != "datasets"},
        **evaluate["datasets"].get(dataset, {}),
    }


def evaluation_calls(evaluate: dict[str, Any], dataset: str) -> list[dict[str, Any]]:
    """Keyword arguments of the ``evaluate_run`` calls that evaluate a run of ``dataset``: the corrupted sets
    first, then the attacks grouped by their number of images; [] when nothing is asked for that data set."""
    settings = settings_for(evaluate, dataset)
    common = {"batch_size": settings["batch_size"], "seed": settings["seed"]}
    calls = []
    corruptions = settings["corruptions"]
    if corruptions:
        n = corruptions.get("n", settings["n"])
        calls.append({"corruptions": corruptions["spec"], "corruption_root": corruptions["root"], "attacks": [],
                      "n": n, **common})  # fmt: skip
    groups: dict[int | None, list[str]] = {}
    for name, attack in settings["attacks"].items():
        groups.setdefault(attack.get("n", settings["n"]), []).append(name)
    for n, names in groups.items():
        attacks = {name: settings["attacks"][name] for name in names}
        calls.append({
            "attacks": names,
            "n": n,
            "attack_overrides": {name: _overrides(a) for name, a in attacks.items() if _overrides(a)},
            "epsilons": {name: a["epsilons"] for name, a in attacks.items() if "epsilons" in a},
            **common,
        })  # fmt: skip
    return calls


def _overrides(attack: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in attack.items() if key not in ATTACK_KEYS}


def check_evaluate(evaluate: dict[str, Any]) -> None:
    """Raise before anything is submitted when a data set name, an attack name or an attack parameter is unknown
    (imports torch), or a corrupted set's spec is not one; whether the corrupted sets are on disk is the sweep plan's
    question (:func:`lit_dendrite.sweeps.plan.missing_data`)."""
    from lit_dendrite.data.corrupted import parse_spec
    from lit_dendrite.data.datasets import dataset_spec
    from lit_dendrite.robustness.attacks import build_attack

    for dataset in [None, *evaluate["datasets"]]:
        settings = settings_for(evaluate, dataset)
        where = "evaluate" + (f".datasets.{dataset}" if dataset else "")
        checks = [(where, dataset_spec, (dataset,), {})] if dataset is not None else []
        checks += [(f"{where}.attacks.{name}", build_attack, (name,), _overrides(attack))
                   for name, attack in settings["attacks"].items()]  # fmt: skip
        if corruptions := settings["corruptions"]:
            checks.append((f"{where}.corruptions", parse_spec, (corruptions["spec"], corruptions["root"]), {}))
        for place, check, args, kwargs in checks:
            try:
                check(*args, **kwargs)
            except (ValueError, TypeError) as error:
                raise EvaluateSpecError(f"{place}: {error}") from None


def _done(run_dir: Path, call: dict[str, Any], report: dict[str, Any], checkpoint: dict[str, Any]) -> bool:
    """Whether ``robustness.json`` holds every section of one ``evaluate_run`` call, measured on ``checkpoint``."""
    if call.get("corruptions"):
        request = corruption_request(call["corruptions"], call["corruption_root"], call["n"], None)
        identity = (report.get(CORRUPTIONS) or {}).get("identity") or {}
        if identity.get("request") != request or identity.get("checkpoint") != checkpoint:
            return False
        if identity.get("baseline") is None and find_baseline(run_dir) is not None:
            return False  # measured before its baseline had finished training: the mCE is still to come
    for name in call["attacks"]:
        request = attack_request(
            name,
            (call.get("attack_overrides") or {}).get(name),
            (call.get("epsilons") or {}).get(name),
            call["n"],
            call["seed"],
            call["batch_size"],
        )
        identity = ((report.get(ADVERSARIAL) or {}).get(name) or {}).get("identity") or {}
        if identity.get("request") != request or identity.get("checkpoint") != checkpoint:
            return False
    return True


def evaluation_state(run_dir: Path, evaluate: dict[str, Any] | None) -> str:
    """``-`` (nothing to evaluate), ``waiting`` (not trained yet), ``failed``, ``done``, or ``k/m`` calls done."""
    try:
        result = RunRecord.read(run_dir)
    except (OSError, ValueError):
        result = None
    if evaluate is None or (result is not None and result.status in ("diverged", "stalled")):
        return "-"
    if result is None or not result.done:
        return "waiting"
    calls = evaluation_calls(evaluate, result.dataset)
    if not calls:
        return "-"
    if RunDir(run_dir).evaluation_error.is_file():
        return "failed"
    try:
        checkpoint = checkpoint_identity(result)
    except (OSError, ValueError):
        return "waiting"
    report = read_report(run_dir)
    done = sum(_done(run_dir, call, report, checkpoint) for call in calls)
    return "done" if done == len(calls) else f"{done}/{len(calls)}"


def evaluation_error(run_dir: Path) -> dict[str, Any] | None:
    """The recorded error of a run's last evaluation, if it failed."""
    return read_json(RunDir(run_dir).evaluation_error)


def refused_attacks(run_dir: Path) -> dict[str, str]:
    """``{attack: reason}`` of the attacks a run's evaluation recorded as refused (too weak on its model)."""
    adversarial = read_report(run_dir).get(ADVERSARIAL) or {}
    return {name: result[REFUSED] for name, result in adversarial.items() if REFUSED in result}


def record_evaluation_error(run_dir: Path, error: str, log: str | None) -> None:
    """Record why a run's evaluation failed (shown by ``launch/sweep.py status``) until one succeeds."""
    write_json_atomic(RunDir(run_dir).evaluation_error, {"error": error, "log": log})


def evaluate_trained_run(run_dir: Path, evaluate: dict[str, Any], echo: Callable[[str], None] = print) -> None:
    """Evaluate a finished run as ``evaluate`` asks (see the module docstring); a success clears a recorded
    error."""
    from lit_dendrite.robustness.evaluate import evaluate_run  # torch: only in the job

    result = RunRecord.read(run_dir)
    if not result.done:
        echo(f"{run_dir}: not evaluated (training status {result.status!r})")
        return
    for call in evaluation_calls(evaluate, result.dataset):
        evaluate_run(run_dir, progress=False, **call)
    RunDir(run_dir).evaluation_error.unlink(missing_ok=True)
