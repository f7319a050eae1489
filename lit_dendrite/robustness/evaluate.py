"""Evaluate a trained run's robustness in one call: clean, corrupted and adversarial accuracy.

Writes the run directory's robustness record (atomically), PNG plots and TensorBoard figures beside it (paths:
:class:`lit_dendrite.runs.RunDir`). The mCE baseline is another run: by default the sweep's ReLU control of the same
data set and network (a sibling run directory), or an explicit one.

An interrupted evaluation resumes: each finished unit (one corrupted test set of the run or of its baseline, one
attack at all its epsilons) is saved at once to the run directory's partial store with the evaluation's
identity (settings, checkpoint size and modification time, package versions). A rerun with the same identity
reuses those units, one with another identity (or ``fresh``) starts over; the partial file is removed once
the robustness record is written, and that file is the same as an uninterrupted evaluation's (wall times aside).
Each attack starts from torch seed ``seed``, so its random starts do not depend on what ran before it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lit_dendrite.analysis.plots import save_figure
from lit_dendrite.data.corrupted import CorruptedDataModule
from lit_dendrite.data.datasets import load_arrays, pixels
from lit_dendrite.io import read_json, write_json_atomic
from lit_dendrite.models import load_net, load_result
from lit_dendrite.robustness.adversarial import (
    DEFAULT_ATTACKS,
    Attack,
    SanityCheckError,
    build_attack,
    check_clean_accuracy,
    check_deterministic,
    check_eval_mode,
    epsilons_for,
    evaluate_attacks,
    exact_model,
    predict,
)
from lit_dendrite.robustness.corruption import corruption_report
from lit_dendrite.runs import PARTIAL_FILE, RunDir, RunRecord, find_records, versions

BASELINE_NEURON = "relu"
# Sections of the partial file, each holding finished units by name ("gaussian_noise/3", "linf_pgd").
CORRUPTED_SETS = "corrupted_sets"
BASELINE_CORRUPTED_SETS = "baseline_corrupted_sets"
ATTACKS = "attacks"


class PartialResults:
    """The finished units of one evaluation, saved atomically after each unit with the evaluation's identity, so
    that an interrupted evaluation with the same identity resumes where it stopped."""

    def __init__(self, path: Path, identity: dict[str, Any], units: dict[str, dict[str, Any]] | None = None) -> None:
        self.path, self.identity, self.units = path, identity, units or {}

    @classmethod
    def resume(cls, path: Path, identity: dict[str, Any], fresh: bool = False) -> PartialResults:
        """The units saved in ``path`` if they belong to an evaluation with this ``identity`` (and not ``fresh``),
        else none and the file removed; prints one line about an existing file."""
        identity = json.loads(json.dumps(identity, default=str))  # as it reads back from the file
        saved = read_json(path)
        if saved is None:
            return cls(path, identity)
        if fresh:
            reason = "a fresh start was asked for"
        elif saved.get("identity") != identity:
            old = saved.get("identity") or {}
            changed = sorted(key for key in identity.keys() | old.keys() if identity.get(key) != old.get(key))
            reason = f"it belongs to another evaluation (changed: {', '.join(changed)})"
        else:
            units = saved.get("units", {})
            counts = ", ".join(f"{len(finished)} {section.replace('_', ' ')}" for section, finished in units.items())
            print(f"resuming from {path}: reusing {sum(map(len, units.values()))} finished units ({counts})")
            return cls(path, identity, units)
        print(f"ignoring {path}: {reason}; starting afresh")
        path.unlink()
        return cls(path, identity)

    def get(self, section: str, name: str) -> Any | None:
        """The saved result of unit ``name`` of ``section``, or None if it has not finished."""
        return self.units.get(section, {}).get(name)

    def record(self, section: str, name: str, result: Any) -> None:
        """Save the result of a finished unit (the whole file is rewritten atomically)."""
        self.units.setdefault(section, {})[name] = result
        write_json_atomic(self.path, {"identity": self.identity, "units": self.units})

    def remove(self) -> None:
        """Delete the file (once the final results are written)."""
        self.path.unlink(missing_ok=True)


def find_baseline(run_dir: str | Path) -> Path | None:
    """The sweep's ReLU control of a run: a finished sibling run (up to two levels up) with the same data set
    and network class and neuron ``relu``, preferring the same seed; None if there is none."""
    own = load_result(run_dir)
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


def checkpoint_identity(result: RunRecord) -> dict[str, Any]:
    """What tells a run's best checkpoint apart from a retrained or replaced one: its path, size and mtime."""
    stat = result.best_checkpoint.stat()
    return {"file": result.best_checkpoint_name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def loader_accuracy(net: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> float:
    """Fraction of the images of ``loader`` that ``net`` classifies correctly."""
    correct = total = 0
    for images, labels in loader:
        predicted = predict(net, images.to(device))
        correct += int((predicted.cpu() == labels).sum())
        total += len(labels)
    return correct / total


def corruption_accuracies(
    net: nn.Module,
    datamodule: CorruptedDataModule,
    device: torch.device,
    partial: PartialResults,
    section: str = CORRUPTED_SETS,
    progress: bool = True,
) -> dict[str, dict[int, float]]:
    """Accuracy of ``net`` on every (corruption, severity) test set of ``datamodule``; sets finished in ``section``
    of ``partial`` are reused, the others saved there as they finish."""
    table: dict[str, dict[int, float]] = {}
    loaders = datamodule.test_dataloader()
    with exact_model(net):
        for name, loader in tqdm(
            list(zip(datamodule.names, loaders)), desc="corruptions", unit="set", disable=not progress
        ):
            accuracy = partial.get(section, name)
            if accuracy is None:
                accuracy = loader_accuracy(net, loader, device)
                partial.record(section, name, accuracy)
            corruption, _, severity = name.rpartition("/")
            table.setdefault(corruption, {})[int(severity)] = accuracy
    return table


def _load_checked(run_dir: Path, device: torch.device) -> tuple[RunRecord, nn.Module]:
    result = load_result(run_dir)
    if not result.done:
        raise ValueError(f"{run_dir} has status {result.status!r}; only finished ('done') runs can be evaluated")
    return result, load_net(run_dir).to(device)


def _data_root(result: RunRecord, data_root: str | Path | None) -> Path:
    return Path(data_root) if data_root is not None else result.data_root


def _test_set(result: RunRecord, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_arrays(result.dataset, root, train=False)
    return pixels(images), torch.from_numpy(labels)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's random numbers start from ``seed`` inside the block; the caller's generators are restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def check_attacks_start_clean(adversarial: dict[str, dict[str, Any]], correct: torch.Tensor) -> None:
    """Raise unless every attack's robust accuracy at eps 0 (computed now or reused from an interrupted run) is the
    clean accuracy of the model now on the same images, ``correct`` telling which it classifies correctly."""
    n, clean = len(correct), int(correct.sum())
    for name, result in adversarial.items():
        at_zero = (result["robust_accuracy"][0], result["robust_accuracy_raw"][0])
        if any(round(accuracy * n) != clean for accuracy in at_zero):
            raise SanityCheckError(
                f"{name}: robust accuracy at eps 0 ({at_zero[0]:.4f}) differs from the clean accuracy of the model "
                f"now ({clean / n:.4f}) on the same {n} images: the results come from another model or other data "
                "(rerun with --fresh)"
            )


def _baseline_corruptions(
    baseline_dir: Path,
    spec: str,
    datamodule: CorruptedDataModule,
    n: int | None,
    device: torch.device,
    partial: PartialResults,
    progress: bool,
) -> tuple[dict[str, dict[int, float]], float]:
    """The baseline's corruption accuracies and clean accuracy, reused from its robustness record when that
    was computed on the same corrupted set, otherwise measured now (resuming from ``partial``)."""
    saved = RunDir(baseline_dir).robustness
    if saved.is_file():
        corruptions = json.loads(saved.read_text()).get("corruptions") or {}
        if (
            corruptions.get("spec") == spec
            and corruptions.get("n") == n
            and corruptions.get("sets") == datamodule.names
        ):
            return corruptions["accuracy"], corruptions["clean_accuracy"]
    result, net = _load_checked(baseline_dir, device)
    images, labels = _test_set(result, _data_root(result, None))
    with exact_model(net):
        clean = (predict(net, images.to(device)).cpu() == labels).float().mean().item()
    return corruption_accuracies(net, datamodule, device, partial, BASELINE_CORRUPTED_SETS, progress), clean


def evaluate_run(
    run_dir: str | Path,
    corruptions: str | None = None,
    corruption_root: str | Path = "data",
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    n: int | None = None,
    baseline: str | Path | None = None,
    data_root: str | Path | None = None,
    attack_overrides: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 500,
    device: str | None = None,
    seed: int = 0,
    fresh: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Clean, corrupted and adversarial accuracy of a run's best checkpoint; writes the robustness record and plots.

    ``corruptions``: ``cifar10_c``, ``cifar100_c``, ``mnist_c`` (under ``corruption_root``) or ``generated:DIR``;
    ``n``: evaluate the first ``n`` test images only (clean accuracy is always measured on the whole test set
    and compared with the accuracy the run recorded); ``baseline``: the mCE baseline run (default: the sweep's
    ReLU control, see :func:`find_baseline`); ``seed``: torch seed each attack starts from; ``fresh``: ignore
    the units saved by an interrupted evaluation with the same settings and compute everything again.
    """
    started = time.perf_counter()
    run_dir = RunDir(Path(run_dir)).path
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1 (or None for the whole test set), got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    built = [build_attack(name, **(attack_overrides or {}).get(name, {})) for name in attacks]
    datamodule = (
        CorruptedDataModule.from_spec(corruptions, corruption_root, batch_size=batch_size, n=n) if corruptions else None
    )
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
    correct_in_subset = correct[subset]
    check_clean_accuracy(clean_accuracy, result.test_acc)
    settings = {"n": n, "batch_size": batch_size, "seed": seed, "device": str(torch_device)}
    identity = _evaluation_identity(run_dir, result, root, settings, corruptions, datamodule, baseline_dir, built)
    partial = PartialResults.resume(result.dir.robustness_partial, identity, fresh)
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "experiment": result.experiment,
        "dataset": result.dataset,
        "net": result.net,
        "neuron": result.neuron,
        "checkpoint": result.best_checkpoint_name,
        "device": str(torch_device),
        "seed": seed,
        "clean": {"accuracy": clean_accuracy, "recorded_test_acc": result.test_acc, "n": len(labels)},
    }

    if datamodule is not None:
        report["corruptions"] = _corruption_section(
            net,
            clean_accuracy,
            corruptions,
            corruption_root,
            datamodule,
            n,
            baseline_dir,
            baseline is not None,
            torch_device,
            partial,
            progress,
        )

    report["adversarial"] = {}
    for attack in built:
        attack_result = partial.get(ATTACKS, attack.name)
        if attack_result is None:
            with _seeded(seed, torch_device):
                attack_result = evaluate_attacks(
                    net,
                    images[subset],
                    labels[subset],
                    result.dataset,
                    [attack.name],
                    overrides=attack_overrides,
                    batch_size=batch_size,
                    progress=progress,
                )[attack.name]
            partial.record(ATTACKS, attack.name, attack_result)
        report["adversarial"][attack.name] = attack_result
    check_attacks_start_clean(report["adversarial"], correct_in_subset)
    report["wall_time_s"] = time.perf_counter() - started
    write_json_atomic(result.dir.robustness, report)
    write_figures(report, result.dir.robustness_dir)
    partial.remove()
    return report


def _evaluation_identity(
    run_dir: Path,
    result: RunRecord,
    data_root: Path,
    settings: dict[str, Any],
    spec: str | None,
    datamodule: CorruptedDataModule | None,
    baseline_dir: Path | None,
    attacks: Sequence[Attack],
) -> dict[str, Any]:
    """Everything the numbers of an evaluation depend on: partial results saved under another identity are not
    reused."""
    corruptions = baseline = None
    if datamodule is not None:
        directory = datamodule.source.directory.resolve()
        corruptions = {"spec": spec, "directory": str(directory), "sets": datamodule.names}
    if baseline_dir is not None:
        baseline_checkpoint = checkpoint_identity(load_result(baseline_dir))
        baseline = {"run_dir": str(baseline_dir.resolve()), "checkpoint": baseline_checkpoint}
    return {
        "checkpoint": checkpoint_identity(result),
        "dataset": result.dataset,
        "data_root": str(data_root.resolve()),
        **settings,
        "corruptions": corruptions,
        "baseline": baseline,
        "attacks": [attack.describe() | {"epsilons": epsilons_for(result.dataset, attack.norm)} for attack in attacks],
        "versions": versions(),
    }


def _corruption_section(
    net: nn.Module,
    clean_accuracy: float,
    spec: str,
    root: str | Path,
    datamodule: CorruptedDataModule,
    n: int | None,
    baseline_dir: Path | None,
    explicit_baseline: bool,
    device: torch.device,
    partial: PartialResults,
    progress: bool,
) -> dict[str, Any]:
    accuracies = corruption_accuracies(net, datamodule, device, partial, CORRUPTED_SETS, progress)
    section: dict[str, Any] = {"spec": spec, "root": str(root), "n": n, "sets": datamodule.names}
    if baseline_dir is None:
        section["baseline"] = None
        section["note"] = "no baseline run found (no ReLU control among sibling runs; pass --baseline): accuracies only"
        return section | corruption_report(accuracies, clean_accuracy)
    base_accuracies, base_clean = _baseline_corruptions(baseline_dir, spec, datamodule, n, device, partial, progress)
    section["baseline"] = {
        "run_dir": str(baseline_dir),
        "chosen": "explicit" if explicit_baseline else "sweep ReLU control",
        "clean_accuracy": base_clean,
        "accuracy": {c: {str(s): a for s, a in by.items()} for c, by in base_accuracies.items()},
    }
    return section | corruption_report(accuracies, clean_accuracy, base_accuracies, base_clean)


def corruption_figure(corruptions: dict[str, Any]) -> Any:
    """Accuracy vs severity, one panel per corruption (the baseline dashed)."""
    import matplotlib.pyplot as plt

    names = list(corruptions["accuracy"])
    columns = min(5, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.4 * rows), squeeze=False, sharey=True)
    baseline = (corruptions.get("baseline") or {}).get("accuracy", {})
    for ax, name in zip(axes.flat, names):
        for table, style, label in ((corruptions["accuracy"], "-o", "run"), (baseline, "--s", "baseline")):
            if name in table:
                severities = sorted(table[name], key=int)
                ax.plot([int(s) for s in severities], [table[name][s] for s in severities], style, label=label, ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    figure.supxlabel("severity")
    figure.supylabel("accuracy")
    figure.tight_layout()
    return figure


def adversarial_figure(adversarial: dict[str, Any]) -> Any:
    """Robust accuracy vs epsilon, one panel per attack (worst case over smaller eps solid, raw dotted)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(adversarial), figsize=(3.2 * len(adversarial), 2.8), squeeze=False)
    for ax, (name, result) in zip(axes.flat, adversarial.items()):
        ax.plot(result["epsilons"], result["robust_accuracy"], "-o", ms=3, label="worst case")
        ax.plot(result["epsilons"], result["robust_accuracy_raw"], ":", label="raw")
        ax.set_title(f"{name} ({result['attack']['norm']})", fontsize=9)
        ax.set_xlabel("epsilon")
        ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("robust accuracy")
    axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def write_figures(report: dict[str, Any], directory: Path) -> list[Path]:
    """PNG plots of a robustness report in ``directory``, also logged to TensorBoard there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    directory.mkdir(parents=True, exist_ok=True)
    figures = {}
    if report.get("corruptions"):
        figures["corruptions"] = corruption_figure(report["corruptions"])
    if report.get("adversarial"):
        figures["adversarial"] = adversarial_figure(report["adversarial"])
    written = []
    with SummaryWriter(log_dir=str(directory)) as writer:
        writer.add_scalar("robustness/clean_acc", report["clean"]["accuracy"])
        for key in ("mean_corruption_accuracy", "mCE", "relative_mCE"):
            value = (report.get("corruptions") or {}).get(key)
            if value is not None:
                writer.add_scalar(f"robustness/{key}", value)
        for name, result in (report.get("adversarial") or {}).items():
            if "reported" in result:
                writer.add_scalar(f"robustness/{name}_acc", result["reported"]["robust_accuracy"])
        for name, figure in figures.items():
            path = directory / f"{name}.png"
            save_figure(figure, path, dpi=120)
            written.append(path)
            writer.add_figure(f"robustness/{name}", figure, close=False)
            plt.close(figure)
    return written


def _attack_list(text: str) -> list[str]:
    return [] if text.strip().lower() == "none" else [name.strip() for name in text.split(",") if name.strip()]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line of :func:`evaluate_run` (``python launch/evaluate.py RUN_DIR ...``); prints a summary."""
    from lit_dendrite.commandline import argument_parser, positive_int
    from lit_dendrite.robustness.adversarial import ATTACKS

    parser = argument_parser("launch/evaluate.py", "Clean, corrupted and adversarial accuracy of a trained run.")
    parser.add_argument("run_dir", help="a finished run's directory")
    parser.add_argument("--corruptions", help="cifar10_c | cifar100_c | mnist_c | generated:DIR (default: none)")
    parser.add_argument(
        "--corruption-root", default="data", help="folder holding CIFAR-10-C/, mnist_c/ (default: data)"
    )
    parser.add_argument(
        "--attacks",
        type=_attack_list,
        default=list(DEFAULT_ATTACKS),
        help=f"comma-separated attacks or 'none' (default: {','.join(DEFAULT_ATTACKS)}; all: {','.join(ATTACKS)})",
    )
    parser.add_argument("--n", type=positive_int, help="evaluate the first N test images only (default: all)")
    parser.add_argument("--baseline", help="mCE baseline run directory (default: the sweep's ReLU control)")
    parser.add_argument("--data-root", help="clean data root (default: the run's data.root)")
    parser.add_argument("--batch-size", type=positive_int, default=500)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed each attack starts from (default: 0)")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help=f"compute everything again, ignoring the units an interrupted evaluation saved in {PARTIAL_FILE}",
    )
    args = parser.parse_args(argv)
    report = evaluate_run(
        args.run_dir,
        corruptions=args.corruptions,
        corruption_root=args.corruption_root,
        attacks=args.attacks,
        n=args.n,
        baseline=args.baseline,
        data_root=args.data_root,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        fresh=args.fresh,
    )
    print(format_summary(report))
    return report


def format_summary(report: dict[str, Any]) -> str:
    """A few lines with the headline numbers of a robustness report."""
    lines = [f"{report['run_dir']}: clean accuracy {report['clean']['accuracy']:.4f} (n={report['clean']['n']})"]
    corruptions = report.get("corruptions")
    if corruptions:
        line = f"  corruptions {corruptions['spec']}: mean accuracy {corruptions['mean_corruption_accuracy']:.4f}"
        if corruptions.get("mCE") is not None:
            relative = corruptions.get("relative_mCE")
            line += f", mCE {corruptions['mCE']:.3f}, relative mCE {'n/a' if relative is None else f'{relative:.3f}'}"
            line += f" vs {corruptions['baseline']['run_dir']}"
        else:
            line += f" ({corruptions['note']})"
        lines.append(line)
    for name, result in (report.get("adversarial") or {}).items():
        curve = ", ".join(f"{e:.3g}:{a:.3f}" for e, a in zip(result["epsilons"], result["robust_accuracy"]))
        lines.append(f"  {name} (n={result['n']}): {curve}")
    written = RunDir(Path(report["run_dir"]))
    lines.append(f"  written: {written.robustness}, {written.robustness_dir}/")
    return "\n".join(lines)
