"""Diagnose a learned-neuron ResNet configuration over several seeds (issue 28, docs/resnet-diagnosis.md).

    python benchmarks/resnet_diagnosis.py CONFIG [--seeds 1 2 3] [--pretrain-epochs N] [--epochs N]
                                          [--runs DIR] [--out PATH] [-- TRAINING ARGS ...]

For each seed: session I (``--pretrain-epochs``, fewer than the configuration's to save time: recorded), then
``--epochs`` epochs of session II, measured by :mod:`lit_dendrite.analysis.resnet_diagnosis`: the session-I
function's shape over LayerNorm's inputs, each block's output mean and scale, residual vs branch scale, the loss
gradient per block at session II's start, and each epoch's training loss and validation accuracy. Training
arguments after ``--`` (e.g. ``--model.net.init_args.residual_bn_init 0``) set the candidate options. Writes JSON
atomically (``--out``) and prints one line per seed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

from lit_dendrite.analysis.resnet_diagnosis import diagnose_run
from lit_dendrite.commandline import argument_parser
from lit_dendrite.io import write_json_atomic
from lit_dendrite.runs import git_commit


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argument_parser("benchmarks/resnet_diagnosis.py", __doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="an experiment config (resnet18_*)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--pretrain-epochs", type=int, default=100, help="session I epochs (default 100)")
    parser.add_argument(
        "--epochs", type=int, default=3, help="session II epochs measured (default 3; 0: its start only)"
    )
    parser.add_argument("--runs", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"{args.config} not found; pass one such as configs/experiment/resnet18_digits_2arg.yaml")
    if args.epochs < 0 or args.pretrain_epochs < 0:
        parser.error("--epochs and --pretrain-epochs must be >= 0")
    result = {
        "command": " ".join(["resnet_diagnosis.py", *sys.argv[1:]]),
        "git_commit": git_commit(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        root = args.runs or Path(scratch)
        for seed in args.seeds:
            row = diagnose_run(args.config, seed, root / f"seed={seed}", args.pretrain_epochs, args.epochs, extra)
            result["runs"].append(row)
            if args.out is not None:  # after every seed: a long measurement keeps what it finished
                write_json_atomic(args.out, result)
            print(seed_line(row), flush=True)
    if args.out is not None:
        print(f"wrote {args.out}")


def seed_line(row: dict) -> str:
    """One seed's measurements in a line."""
    start, inner, blocks = row["start"], row["start"].get("inner", {}), row["start"]["blocks"]
    nan = float("nan")
    return (
        f"seed {row['seed']}: stem grad {blocks[0]['grad_norm']:.3g}, last {blocks[-1]['grad_norm']:.3g}, "
        f"x{start['growth_per_block']:.2f}/block; out std {min(b['out_std'] for b in blocks):.3f}-"
        f"{max(b['out_std'] for b in blocks):.3f}; inner std {inner.get('out_std', nan):.3f} "
        f"mean {inner.get('out_mean', nan):.3f} sign changes {inner.get('sign_changes', '-')} "
        f"slope0 {inner.get('slope_at_0', nan):.3f} backward gain {inner.get('backward_gain', nan):.2f}; loss "
        + " ".join(f"{x:.3f}" for x in row["train_loss"])
        + "; val acc "
        + " ".join(f"{x:.2f}" for x in row["val_acc"])
    )


if __name__ == "__main__":
    main()
