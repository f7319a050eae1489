"""Robustness results as records: what produced them (identities), ``robustness.json`` merged section by
section, and the resume store of interrupted evaluations.

A number is reused only when the identity of what produced it matches, never because a name matches:
- a checkpoint is its file, size and modification time (a retrained or replaced one differs);
- a corrupted set is its kind, resolved directory, the test sets read (corruption/severity names, first ``n``
  images) and the size and modification time of every file read, plus ``metadata.json`` for generated sets
  (regenerating a set or pointing ``--corruption-root`` elsewhere changes it).

``robustness.json`` holds the sections of a run's evaluation: ``clean`` (always measured), ``corruptions`` (one
section) and ``adversarial`` (one entry per attack). Each section records its ``identity``: the ``request``
(what the user asked: corrupted set spec and root, attack name, overrides, epsilons, number of images, seed,
batch size) and the identities of the checkpoint, the corrupted set and the mCE baseline. An evaluation merges
its sections into the file: a section it ran replaces the saved one, the others stay, unless they were measured
on another checkpoint (then they are dropped, saying so). The file is written atomically.

The resume store (``robustness/partial.json``) keeps the finished units of an evaluation (one corrupted test set
of the run or of its baseline; one batch of an attack at one epsilon, or at all of them for an attack that cannot
split them, with the random generator's state after it; an attack's result) by section, each section under its
identity plus the device, batch size and package versions; a section saved under another identity is dropped when
that section is next evaluated, the others are kept. A section leaves the store once ``robustness.json`` holds it.

This module imports no torch, so ``launch/sweep.py status`` can read evaluation states at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lit_dendrite.io import read_json, write_json_atomic
from lit_dendrite.runs import RunDir, RunRecord, find_records

BASELINE_NEURON = "relu"
CORRUPTIONS = "corruptions"
ADVERSARIAL = "adversarial"
REFUSED = "refused"
"""Key of an attack's entry whose numbers are withheld, holding the reason, in place of its robust accuracies."""


def as_json(value: Any) -> Any:
    """``value`` as it reads back from a JSON file (tuples become lists, paths strings), for comparisons."""
    return json.loads(json.dumps(value, default=str))


def changed_keys(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[str]:
    """The top-level keys whose values differ between two identities."""
    return sorted(key for key in new.keys() | old.keys() if new.get(key) != old.get(key))


def checkpoint_identity(record: RunRecord) -> dict[str, Any]:
    """What tells a run's best checkpoint from a retrained or replaced one: its file, size and mtime."""
    stat = record.best_checkpoint.stat()
    return {"file": record.best_checkpoint_name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def corrupted_set_identity(
    kind: str, directory: Path, names: Sequence[str], n: int | None, files: Iterable[Path]
) -> dict[str, Any]:
    """What tells a corrupted set's test sets from a regenerated or relocated one: ``files`` are those the sets
    ``names`` (``corruption/severity``, first ``n`` images) are read from (and a generated set's metadata), all
    under ``directory``."""
    directory = directory.resolve()
    paths = list(dict.fromkeys(Path(path).resolve() for path in files))
    stats = {}
    for path in paths:
        stat = path.stat()
        stats[path.relative_to(directory).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return {"kind": kind, "directory": str(directory), "sets": list(names), "n": n, "files": stats}


def corruption_request(spec: str, root: str | Path, n: int | None, baseline: str | Path | None) -> dict[str, Any]:
    """What a user asks of the corruption section: the set spec and root, images per set, an explicit baseline."""
    return as_json({"spec": spec, "root": root, "n": n, "baseline": baseline})


def attack_request(
    name: str,
    overrides: Mapping[str, Any] | None,
    epsilons: Sequence[float] | None,
    n: int | None,
    seed: int,
    batch_size: int,
) -> dict[str, Any]:
    """What a user asks of one attack: its parameter overrides, epsilons (None: the data set's grid), number of
    images, seed and batch size (random starts are drawn per batch)."""
    epsilons = None if epsilons is None else [float(eps) for eps in epsilons]
    request = {"attack": name, "overrides": dict(overrides or {}), "epsilons": epsilons, "n": n, "seed": seed}
    return as_json(request | {"batch_size": batch_size})


def find_baseline(run_dir: str | Path) -> Path | None:
    """The sweep's ReLU control of a run: a finished sibling run (up to two levels up) with the same data set
    and network class and neuron ``relu``, preferring the same seed; None if there is none."""
    own = RunRecord.read(run_dir)
    candidates = []
    parent = own.dir.path.parent
    siblings = {path.parent for path in find_records(parent.parent, depth=2) + find_records(parent, depth=1)}
    for directory in sorted(siblings):
        try:
            other = RunRecord.read(directory)
        except (OSError, ValueError):
            continue
        if other.done and other.neuron == BASELINE_NEURON and other.dataset == own.dataset and other.net == own.net:
            candidates.append((other.seed != own.seed, str(directory)))
    return Path(min(candidates)[1]) if candidates else None


def read_report(run_dir: Path) -> dict[str, Any]:
    """A run's ``robustness.json`` ({} when there is none or it cannot be read)."""
    try:
        report = read_json(RunDir(run_dir).robustness)
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def saved_corruption_accuracies(
    run_dir: Path, checkpoint: dict[str, Any], set_identity: dict[str, Any]
) -> tuple[dict[str, dict[str, float]], float] | None:
    """A run's saved accuracies on the corrupted sets and its clean accuracy, if its ``robustness.json`` measured
    them with this checkpoint on this very corrupted set; None otherwise."""
    section = read_report(run_dir).get(CORRUPTIONS) or {}
    identity = section.get("identity") or {}
    if identity.get("checkpoint") != as_json(checkpoint) or identity.get("set") != as_json(set_identity):
        return None
    return section["accuracy"], section["clean_accuracy"]


def merge_report(old: Mapping[str, Any], new: Mapping[str, Any], echo: Any = print) -> dict[str, Any]:
    """``new``'s sections over ``old``'s: the corruption section as a whole, attacks one by one; ``old`` is
    dropped whole when it was measured on another checkpoint (or before sections carried identities)."""
    if old and old.get("checkpoint") != new["checkpoint"]:
        echo(f"dropping the robustness results of {new['run_dir']} measured on another checkpoint")
        old = {}
    merged = {**old, **new}
    merged[CORRUPTIONS] = new.get(CORRUPTIONS) or old.get(CORRUPTIONS)
    merged[ADVERSARIAL] = {**(old.get(ADVERSARIAL) or {}), **(new.get(ADVERSARIAL) or {})}
    return {key: value for key, value in merged.items() if value or key not in (CORRUPTIONS, ADVERSARIAL)}


def write_report(run_dir: Path, report: Mapping[str, Any], echo: Any = print) -> dict[str, Any]:
    """Merge ``report``'s sections into the run's ``robustness.json`` (atomically); returns what was written."""
    merged = merge_report(read_report(run_dir), report, echo)
    write_json_atomic(RunDir(run_dir).robustness, merged)
    return merged


class PartialResults:
    """The resume store: finished units of evaluations, by section, each section under its identity."""

    def __init__(self, path: Path, sections: dict[str, dict[str, Any]] | None = None, echo: Any = print) -> None:
        self.path, self.sections, self.echo = path, sections or {}, echo
        self.reused = 0

    @classmethod
    def open(cls, run_dir: Path, fresh: bool = False, echo: Any = print) -> PartialResults:
        """The store of ``run_dir``, emptied when ``fresh``."""
        path = RunDir(run_dir).robustness_partial
        saved = read_json(path)
        if saved is not None and fresh:
            echo(f"ignoring {path}: a fresh start was asked for")
            path.unlink()
            saved = None
        sections = saved.get("sections") if isinstance(saved, dict) else None
        return cls(path, sections if isinstance(sections, dict) else {}, echo)

    def units(self, section: str, identity: Mapping[str, Any]) -> dict[str, Any]:
        """The finished units of ``section`` if they were saved under ``identity``; otherwise none (a section saved
        under another identity is dropped, saying which keys changed)."""
        identity = as_json(identity)
        saved = self.sections.get(section)
        if saved is not None and saved.get("identity") == identity:
            if saved["units"]:
                self.echo(f"resuming {section} from {self.path}: reusing {len(saved['units'])} finished units")
            self.reused += len(saved["units"])
            return saved["units"]
        if saved is not None and saved.get("units"):
            changed = ", ".join(changed_keys(identity, saved.get("identity") or {}))
            self.echo(f"ignoring the saved units of {section}: another evaluation (changed: {changed})")
        self.sections[section] = {"identity": identity, "units": {}}
        return self.sections[section]["units"]

    def record(self, section: str, name: str, result: Any) -> None:
        """Save the result of a finished unit of ``section`` (opened with :meth:`units`); the whole file is
        rewritten atomically."""
        self.sections[section]["units"][name] = result
        write_json_atomic(self.path, {"sections": self.sections})

    def discard(self, sections: Iterable[str]) -> None:
        """Forget ``sections`` (now held by robustness.json); the file goes when nothing is left."""
        for section in sections:
            self.sections.pop(section, None)
        if self.sections:
            write_json_atomic(self.path, {"sections": self.sections})
        else:
            self.path.unlink(missing_ok=True)
