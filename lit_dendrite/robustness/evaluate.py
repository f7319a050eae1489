"""Evaluate a trained run's robustness in one call: clean, corrupted and adversarial accuracy.

Merges its sections into ``<run_dir>/robustness.json`` and writes PNG plots and TensorBoard figures under
``<run_dir>/robustness/`` (see :mod:`lit_dendrite.robustness.store` for what is stored and when it is reused).
The mCE baseline is another run: by default the sweep's ReLU control of the same data set and network (a sibling
run directory), or an explicit one; a run that is its own baseline is compared with what it just measured.

Nothing is measured twice: a section of ``robustness.json`` measured with the same request on the same
checkpoint (and corrupted set) is reused, and so are the baseline's saved accuracies when they were measured with
its current checkpoint on the very same corrupted set. An interrupted evaluation resumes from the finished units
of the resume store; ``fresh`` measures everything again. Each attack starts from torch seed ``seed``, so its
random starts do not depend on what ran before it, and a resumed evaluation equals an uninterrupted one.

An attack too weak on the model (its raw robust accuracy rises with eps) is recorded as refused, with the reason
under ``refused`` and no numbers, and the evaluation goes on; every other failed check stops it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_dendrite.analysis.robustness_plots import write_robustness_figures
from lit_dendrite.data.corrupted import METADATA_FILE, CorruptedDataModule
from lit_dendrite.data.datasets import load_arrays, pixels
from lit_dendrite.errors import ConfigError, ResourceError
from lit_dendrite.models import load_net, load_result
from lit_dendrite.robustness.adversarial import (
    SanityCheckError,
    UnreliableAttackError,
    check_clean_accuracy,
    check_deterministic,
    check_eval_mode,
    epsilons_for,
    exact_model,
    predict,
)
from lit_dendrite.robustness.attacks import Attack, build_attack, default_attacks, evaluate_attacks
from lit_dendrite.robustness.corruption import corruption_report
from lit_dendrite.robustness.progress import counted, image_progress
from lit_dendrite.robustness.store import (
    ADVERSARIAL,
    CORRUPTIONS,
    REFUSED,
    PartialResults,
    as_json,
    attack_request,
    checkpoint_identity,
    corrupted_set_identity,
    corruption_request,
    find_baseline,
    read_report,
    saved_corruption_accuracies,
    write_report,
)
from lit_dendrite.runs import FileLock, RunDir, RunRecord, versions

# Sections of the resume store: the run's and the baseline's corrupted sets ("gaussian_noise/3"), one per attack.
CORRUPTED_SETS = "corrupted_sets"
BASELINE_CORRUPTED_SETS = "baseline_corrupted_sets"
ATTACK_SECTION = "attack/{}"


def loader_accuracy(
    net: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    seen: Callable[[int], object] = lambda images: None,
) -> float:
    """Fraction of the images of ``loader`` that ``net`` classifies correctly; ``seen(n)`` after each batch of n."""
    correct = total = 0
    for images, labels in loader:
        predicted = predict(net, images.to(device))
        correct += int((predicted.cpu() == labels).sum())
        total += len(labels)
        seen(len(labels))
    return correct / total


def corruption_accuracies(
    net: nn.Module,
    datamodule: CorruptedDataModule,
    device: torch.device,
    finished: Mapping[str, float],
    record: Callable[[str, float], None],
    progress: bool = True,
) -> dict[str, dict[int, float]]:
    """Accuracy of ``net`` on every (corruption, severity) test set of ``datamodule``; sets in ``finished`` are
    reused, the others passed to ``record`` as they finish."""
    table: dict[str, dict[int, float]] = {}
    sets = list(zip(datamodule.names, datamodule.test_dataloader()))
    total = sum(len(loader.dataset) for _, loader in sets)
    with exact_model(net), image_progress(total, f"corrupted sets, {counted(len(sets), 'set')}", progress) as bar:
        for name, loader in sets:
            bar.set_postfix_str(name, refresh=False)
            accuracy = finished.get(name)
            if accuracy is None:
                accuracy = loader_accuracy(net, loader, device, bar.update)
                record(name, accuracy)
            else:
                bar.update(len(loader.dataset))
            corruption, _, severity = name.rpartition("/")
            table.setdefault(corruption, {})[int(severity)] = accuracy
    return table


def checked_device(name: str | None) -> torch.device:
    """The device called ``name`` (default: cuda where available, else cpu), checked to exist on this machine."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device", "pass cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (device.index or 0) >= count:
            choices = f"cpu or one of cuda:0..cuda:{count - 1}" if count else "cpu"
            raise ResourceError(f"--device {name}: this machine has {count} CUDA device(s)", f"pass --device {choices}")
    return device


def _load_checked(run_dir: Path, device: torch.device) -> tuple[RunRecord, nn.Module]:
    result = load_result(run_dir)
    if not result.done:
        raise ConfigError(f"{run_dir} has status {result.status!r}; only finished ('done') runs can be evaluated")
    return result, load_net(run_dir).to(device)


def _data_root(result: RunRecord, data_root: str | Path | None) -> Path:
    return Path(data_root) if data_root is not None else result.data_root


def _test_set(result: RunRecord, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_arrays(result.dataset, root, train=False)
    return pixels(images), torch.from_numpy(labels)


def _clean_accuracy(net: nn.Module, result: RunRecord, root: Path, device: torch.device) -> float:
    images, labels = _test_set(result, root)
    with exact_model(net):
        return (predict(net, images.to(device)).cpu() == labels).float().mean().item()


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's random numbers start from ``seed`` inside the block; the caller's generators are restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def check_attacks_start_clean(adversarial: dict[str, dict[str, Any]], correct: torch.Tensor) -> None:
    """Raise unless every attack's robust accuracy at eps 0 (measured now or reused) is the clean accuracy of the
    model now on the same images, ``correct`` telling which it classifies correctly."""
    n, clean = len(correct), int(correct.sum())
    for name, result in adversarial.items():
        if REFUSED in result:  # no numbers to compare; its own check of eps 0 passed before the refusal
            continue
        at_zero = (result["robust_accuracy"][0], result["robust_accuracy_raw"][0])
        if any(round(accuracy * n) != clean for accuracy in at_zero):
            raise SanityCheckError(
                f"{name}: robust accuracy at eps 0 ({at_zero[0]:.4f}) differs from the clean accuracy of the model "
                f"now ({clean / n:.4f}) on the same {n} images: the results come from another model or other data "
                "(rerun with --fresh)"
            )


def evaluate_run(
    run_dir: str | Path,
    corruptions: str | None = None,
    corruption_root: str | Path = "data",
    attacks: Sequence[str] | None = None,
    n: int | None = None,
    baseline: str | Path | None = None,
    data_root: str | Path | None = None,
    attack_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    epsilons: Mapping[str, Sequence[float]] | None = None,
    batch_size: int = 500,
    device: str | None = None,
    seed: int = 0,
    fresh: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Clean, corrupted and adversarial accuracy of a run's best checkpoint, merged into its robustness.json
    (returned) with plots.

    ``attacks``: attack names (default: :func:`~lit_dendrite.robustness.attacks.default_attacks`);
    ``corruptions``: ``cifar10_c``, ``cifar100_c``, ``mnist_c`` (under ``corruption_root``) or ``generated:DIR``;
    ``n``: evaluate the first ``n`` test images only (clean accuracy is always measured on the whole test set
    and compared with the accuracy the run recorded); ``baseline``: the mCE baseline run (default: the sweep's
    ReLU control, see :func:`find_baseline`); ``attack_overrides`` / ``epsilons``: attack parameters / epsilon
    grid per attack name (default: the data set's grid, 0 always included); ``seed``: torch seed each attack
    starts from; ``fresh``: measure everything again instead of reusing saved sections and units.
    """
    started = time.perf_counter()
    run_dir = RunDir(Path(run_dir)).path
    if n is not None and n < 1:
        raise ConfigError(f"n must be >= 1 (or None for the whole test set), got {n}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    attack_overrides, epsilons = attack_overrides or {}, epsilons or {}
    attacks = default_attacks() if attacks is None else attacks
    stray = sorted((set(attack_overrides) | set(epsilons)) - set(attacks))
    if stray:
        raise ConfigError(
            f"overrides or epsilons given for attacks that are not run: {stray}; attacks: {list(attacks)}"
        )
    built = [build_attack(name, **attack_overrides.get(name, {})) for name in attacks]
    datamodule = (
        CorruptedDataModule.from_spec(corruptions, corruption_root, batch_size=batch_size, n=n) if corruptions else None
    )
    torch_device = checked_device(device)
    load_result(run_dir)  # a missing or damaged record stops here, before the lock file is made
    # One process per run directory: a second evaluation, or one of a run still training, would redo or overwrite
    # the sections and units the first is writing.
    with FileLock(RunDir(run_dir).lock, "another process is training or evaluating this run; wait for it or stop it"):
        result, net = _load_checked(run_dir, torch_device)
        baseline_dir = None
        if datamodule is not None:
            datamodule.source.check_made_from(result.dataset)
            datamodule.setup("test")
            baseline_dir = Path(baseline) if baseline is not None else find_baseline(run_dir)
        root = _data_root(result, data_root)
        images, labels = _test_set(result, root)
        subset = slice(None) if n is None else slice(0, n)

        with exact_model(net):
            check_eval_mode(net)
            check_deterministic(net, images[:batch_size].to(torch_device))
            correct = predict(net, images.to(torch_device)).cpu() == labels
        clean_accuracy = correct.float().mean().item()
        check_clean_accuracy(clean_accuracy, result.test_acc)
        checkpoint = checkpoint_identity(result)
        evaluation = _Evaluation(
            run_dir=run_dir,
            net=net,
            checkpoint=checkpoint,
            device=torch_device,
            saved={} if fresh else read_report(run_dir),
            partial=PartialResults.open(run_dir, fresh),
            unit_context={"device": str(torch_device), "batch_size": batch_size, "versions": versions()},
            fresh=fresh,
            progress=progress,
        )
        report: dict[str, Any] = {
            "run_dir": str(run_dir),
            "experiment": result.experiment,
            "dataset": result.dataset,
            "net": result.net,
            "neuron": result.neuron,
            "checkpoint": checkpoint,
            "device": str(torch_device),
            "versions": versions(),
            "clean": {"accuracy": clean_accuracy, "recorded_test_acc": result.test_acc, "n": len(labels)},
        }
        sections = []
        if datamodule is not None:
            request = corruption_request(corruptions, corruption_root, n, baseline)
            report[CORRUPTIONS] = evaluation.corruptions(request, clean_accuracy, datamodule, baseline_dir)
            sections += [CORRUPTED_SETS, BASELINE_CORRUPTED_SETS]
        report[ADVERSARIAL] = {}
        for attack in built:
            grid = list(epsilons.get(attack.name) or epsilons_for(result.dataset, attack.norm))
            request = attack_request(
                attack.name, attack_overrides.get(attack.name), epsilons.get(attack.name), n, seed, batch_size
            )
            identity = {"request": request, "attack": attack.describe(), "epsilons": grid, "data_root": root.resolve()}
            report[ADVERSARIAL][attack.name] = evaluation.attack(
                attack, identity, grid, result.dataset, images[subset], labels[subset], seed, batch_size
            )
            sections.append(ATTACK_SECTION.format(attack.name))
        check_attacks_start_clean(report[ADVERSARIAL], correct[subset])
        report["wall_time_s"] = time.perf_counter() - started
        merged = write_report(run_dir, report)
        write_robustness_figures(merged, RunDir(run_dir).robustness_dir)
        evaluation.partial.discard(sections)
        return merged


class _Evaluation:
    """One evaluation of a run's checkpoint: measures a section unless it is saved under the same identity, with
    its units in the resume store."""

    def __init__(
        self,
        run_dir: Path,
        net: nn.Module,
        checkpoint: dict[str, Any],
        device: torch.device,
        saved: dict[str, Any],
        partial: PartialResults,
        unit_context: dict[str, Any],
        fresh: bool,
        progress: bool,
    ) -> None:
        self.run_dir, self.net, self.checkpoint, self.device = run_dir, net, checkpoint, device
        self.saved, self.partial, self.unit_context = saved, partial, unit_context
        self.fresh, self.progress = fresh, progress

    def _measured(self, net: nn.Module, datamodule: CorruptedDataModule, section: str, identity: dict) -> dict:
        units = self.partial.units(section, {**identity, **self.unit_context})
        record = functools.partial(self.partial.record, section)
        return corruption_accuracies(net, datamodule, self.device, units, record, self.progress)

    def corruptions(
        self,
        request: dict[str, Any],
        clean_accuracy: float,
        datamodule: CorruptedDataModule,
        baseline_dir: Path | None,
    ) -> dict[str, Any]:
        """The corruption section: the run's accuracies and those of its baseline, each measured or reused."""
        source = datamodule.source
        files = [path for corruption in datamodule.corruptions for path in source.files(corruption)]
        if source.kind == "generated":
            files.append(source.directory / METADATA_FILE)
        set_identity = corrupted_set_identity(source.kind, source.directory, datamodule.names, datamodule.n, files)
        own = None if self.fresh else saved_corruption_accuracies(self.run_dir, self.checkpoint, set_identity)
        if own is not None:
            print(f"reusing the accuracies on the corrupted sets saved in {RunDir(self.run_dir).robustness}")
            accuracies: Mapping[str, Mapping[Any, float]] = own[0]
        else:
            identity = {"checkpoint": self.checkpoint, "set": set_identity}
            accuracies = self._measured(self.net, datamodule, CORRUPTED_SETS, identity)
        identity = {"request": request, "checkpoint": self.checkpoint, "set": set_identity, "baseline": None}
        section: dict[str, Any] = {key: request[key] for key in ("spec", "root", "n")} | {"sets": datamodule.names}
        if baseline_dir is None:
            section["identity"] = as_json(identity)
            section["baseline"] = None
            section["note"] = "no baseline run found (no ReLU control among sibling runs; pass --baseline)"
            return section | corruption_report(accuracies, clean_accuracy)
        if baseline_dir.resolve() == self.run_dir.resolve():
            base_checkpoint, base_accuracies, base_clean = self.checkpoint, accuracies, clean_accuracy
            chosen = "the run itself"
        else:
            base_checkpoint, base_accuracies, base_clean = self._baseline(baseline_dir, datamodule, set_identity)
            chosen = "explicit" if request["baseline"] is not None else "sweep ReLU control"
        identity["baseline"] = {"run_dir": str(baseline_dir.resolve()), "checkpoint": base_checkpoint}
        section["identity"] = as_json(identity)
        section["baseline"] = {
            "run_dir": str(baseline_dir.resolve()),
            "chosen": chosen,
            "clean_accuracy": base_clean,
            "accuracy": {c: {str(s): a for s, a in by.items()} for c, by in base_accuracies.items()},
        }
        return section | corruption_report(accuracies, clean_accuracy, base_accuracies, base_clean)

    def _baseline(
        self, baseline_dir: Path, datamodule: CorruptedDataModule, set_identity: dict[str, Any]
    ) -> tuple[dict[str, Any], Mapping[str, Mapping[Any, float]], float]:
        """The baseline's checkpoint identity, corruption accuracies and clean accuracy: reused from its
        robustness.json when measured with its current checkpoint on this very corrupted set, else measured."""
        result = load_result(baseline_dir)
        checkpoint = checkpoint_identity(result)
        saved = None if self.fresh else saved_corruption_accuracies(baseline_dir, checkpoint, set_identity)
        if saved is not None:
            print(f"reusing the baseline's accuracies saved in {RunDir(baseline_dir).robustness}")
            return checkpoint, saved[0], saved[1]
        result, net = _load_checked(baseline_dir, self.device)
        identity = {"baseline": str(baseline_dir.resolve()), "checkpoint": checkpoint, "set": set_identity}
        accuracies = self._measured(net, datamodule, BASELINE_CORRUPTED_SETS, identity)
        return checkpoint, accuracies, _clean_accuracy(net, result, _data_root(result, None), self.device)

    def attack(
        self,
        attack: Attack,
        identity: dict[str, Any],
        grid: list[float],
        dataset: str,
        images: torch.Tensor,
        labels: torch.Tensor,
        seed: int,
        batch_size: int,
    ) -> dict[str, Any]:
        """One attack's entry: reused from robustness.json or the resume store when saved under the same identity,
        else measured from torch seed ``seed``."""
        identity = as_json({**identity, "checkpoint": self.checkpoint})
        saved = (self.saved.get(ADVERSARIAL) or {}).get(attack.name) or {}
        if saved.get("identity") == identity:
            print(f"reusing {attack.name} saved in {RunDir(self.run_dir).robustness}")
            return saved
        section = ATTACK_SECTION.format(attack.name)
        units = self.partial.units(section, {**identity, **self.unit_context})
        if "result" not in units:
            with _seeded(seed, self.device):
                try:
                    measured = evaluate_attacks(
                        self.net,
                        images,
                        labels,
                        dataset,
                        [attack.name],
                        overrides={attack.name: identity["request"]["overrides"]},
                        epsilons={attack.norm: grid},
                        batch_size=batch_size,
                        progress=self.progress,
                        finished={key: unit for key, unit in units.items() if key != "result"},
                        record=functools.partial(self.partial.record, section),
                    )[attack.name]
                except UnreliableAttackError as error:
                    # The attack runs from a fixed seed, so measuring again would refuse again: the refusal is
                    # this identity's result, and the other attacks still run.
                    measured = {"attack": attack.describe(), "n": len(images), "epsilons": grid, REFUSED: str(error)}
            self.partial.record(section, "result", measured)
        if REFUSED in units["result"]:
            print(f"{attack.name} refused on {self.run_dir}: {units['result'][REFUSED]}")
        return {**units["result"], "identity": identity}
