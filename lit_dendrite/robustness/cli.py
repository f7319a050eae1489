"""The command line of :func:`~lit_dendrite.robustness.evaluate.evaluate_run`: ``python launch/evaluate.py RUN_DIR
[--corruptions ...] [--attacks ...] [--n N]``, and the summary it prints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_dendrite.errors import run_command
from lit_dendrite.robustness.attacks import ATTACKS, default_attacks
from lit_dendrite.robustness.evaluate import evaluate_run
from lit_dendrite.robustness.store import REFUSED
from lit_dendrite.runs import PARTIAL_FILE, RunDir

COMMAND = "python launch/evaluate.py"


def _attack_list(text: str) -> list[str]:
    return [] if text.strip().lower() == "none" else [name.strip() for name in text.split(",") if name.strip()]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line of :func:`evaluate_run` (``python launch/evaluate.py RUN_DIR ...``); prints a summary, or a bad
    input as a short error (:func:`lit_dendrite.errors.run_command`)."""
    return run_command(lambda: evaluate_command(argv), COMMAND)


def evaluate_command(argv: Sequence[str] | None) -> dict[str, Any]:
    """Parse the arguments, evaluate, print the summary."""
    from lit_dendrite.commandline import argument_parser, positive_int

    parser = argument_parser("launch/evaluate.py", "Clean, corrupted and adversarial accuracy of a trained run.")
    parser.add_argument("run_dir", help="a finished run's directory")
    parser.add_argument("--corruptions", help="cifar10_c | cifar100_c | mnist_c | generated:DIR (default: none)")
    parser.add_argument(
        "--corruption-root", default="data", help="folder holding CIFAR-10-C/, mnist_c/ (default: data)"
    )
    parser.add_argument(
        "--attacks",
        type=_attack_list,
        help=f"comma-separated attacks or 'none' (default: {','.join(default_attacks())}; all: {','.join(ATTACKS)})",
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
        help=f"measure everything again, ignoring saved sections and the units an interrupted evaluation saved in "
        f"{PARTIAL_FILE}",
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
        if corruptions.get("baseline"):
            mce, relative = corruptions["mCE"], corruptions["relative_mCE"]
            line += f", mCE {'n/a' if mce is None else f'{mce:.3f}'}"
            line += f", relative mCE {'n/a' if relative is None else f'{relative:.3f}'}"
            line += f" vs {corruptions['baseline']['run_dir']}"
            for key in ("mCE_excluded", "relative_mCE_excluded"):
                if corruptions.get(key):
                    line += f"; {key.removesuffix('_excluded')} leaves out {', '.join(corruptions[key])}"
        else:
            line += f" ({corruptions['note']})"
        lines.append(line)
    for name, result in (report.get("adversarial") or {}).items():
        if REFUSED in result:
            lines.append(f"  {name} (n={result['n']}): refused: {result[REFUSED]}")
            continue
        curve = ", ".join(f"{e:.3g}:{a:.3f}" for e, a in zip(result["epsilons"], result["robust_accuracy"]))
        lines.append(f"  {name} (n={result['n']}): {curve}")
    run_dir = Path(report["run_dir"])
    lines.append(f"  written: {RunDir(run_dir).robustness}, {RunDir(run_dir).robustness_dir}/")
    return "\n".join(lines)
