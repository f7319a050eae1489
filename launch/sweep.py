"""Submit a sweep, or show its status, or collect its results.

    python launch/sweep.py [--sweep FILE] --cluster slurm|local|debug [--cluster-config FILE] [--out DIR]
                           [--dry-run [--gpu-speedup X]] [--verbose] [--max-parallel N] [--overwrite] [--force]
                           [--retry-stalled] [--wait]
    python launch/sweep.py preflight [--sweep FILE] --cluster slurm|local|debug [--cluster-config FILE] [--out DIR]
                           [--time-min MIN]
    python launch/sweep.py fetch-data [NAME ...] [--sweep FILE] [--root DIR] [--dry-run]
    python launch/sweep.py status DIR
    python launch/sweep.py cancel DIR
    python launch/sweep.py collect DIR [--surface-images N]
    python launch/sweep.py evaluate DIR --cluster slurm|local|debug [--sweep FILE] [--cluster-config FILE]
                           [--dry-run] [--max-parallel N] [--wait]

See docs/cluster.md, and docs/tuning.md for sweeps with a search: section.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from lit_dendrite.analysis.nonlinearity_report import SURFACE_IMAGES
from lit_dendrite.analysis.report import accuracy_section, build_report
from lit_dendrite.commandline import argument_parser, directory, positive_float, positive_int
from lit_dendrite.data.fetch import NAMES, Download, check_name, download_url
from lit_dendrite.errors import run_command
from lit_dendrite.sweeps.backends import BACKENDS
from lit_dendrite.sweeps.cluster import ClusterConfig, ClusterError, load_cluster_config
from lit_dendrite.sweeps.cost import DEFAULT_GPU_SPEEDUP
from lit_dendrite.sweeps.launch import fetch_sweep_data, submit_evaluation, submit_sweep, wait_for
from lit_dendrite.sweeps.plan import DataNeed, fetch_needs
from lit_dendrite.sweeps.preflight import DEFAULT_TIME_MIN
from lit_dendrite.sweeps.search_report import with_search_section
from lit_dendrite.sweeps.spec import SweepError, load_sweep
from lit_dendrite.sweeps.state import cancel_jobs, collect, format_status, unfinished_runs

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_SWEEP = CONFIGS / "sweep" / "paper.yaml"


def _submission_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options shared by submitting a sweep and its evaluation."""
    parser = argument_parser(prog, description)
    parser.add_argument("--cluster", choices=list(BACKENDS), required=True, help="where the jobs run (the backend)")
    parser.add_argument("--cluster-config", type=Path, help="configs/cluster/*.yaml (default per --cluster)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (runs per experiment, a sweep's GPU-hours, missing data sets) and the sbatch script; "
        "submit nothing",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also list every run's action (and in a dry run its training arguments)"
    )
    parser.add_argument(
        "--max-parallel", type=positive_int, help="runs at once (default: the config's array_parallelism)"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait for the jobs to end, print the status, and exit 1 unless every submitted run is done "
        "(and evaluated, with an evaluate: section)",
    )
    parser.add_argument("--wait-timeout-h", type=positive_float, default=48.0, help="give up waiting after this long")
    return parser


def cluster_config(args: argparse.Namespace) -> ClusterConfig:
    """The cluster config of ``--cluster-config``, else the backend's default file."""
    default_config = BACKENDS[args.cluster].default_config
    default_path = CONFIGS / "cluster" / default_config if default_config else None
    return load_cluster_config(args.cluster_config or default_path)


def submit_main(argv: list[str]) -> int:
    """Validate and submit a sweep, or (``evaluate DIR ...``) the evaluation of an existing one."""
    if argv[:1] == ["evaluate"]:
        parser = _submission_parser("launch/sweep.py evaluate", "Evaluate a sweep's finished runs as one job array.")
        parser.add_argument("sweep_dir", type=Path, help="the sweep directory, <out>/<sweep name>")
        parser.add_argument("--sweep", type=Path, help="sweep file with the evaluate: section (default: the sweep's)")
        argv = argv[1:]
    else:
        parser = _submission_parser("launch/sweep.py", "Submit a sweep as one job array.")
        parser.add_argument("--sweep", type=Path, default=DEFAULT_SWEEP, help="sweep file (default: paper.yaml)")
        parser.add_argument(
            "--out", type=directory, default=Path("runs"), help="runs go to OUT/<sweep>/<experiment>/<run>"
        )
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="discard the results of runs whose directory holds another configuration, and train them afresh",
        )
        parser.add_argument(
            "--retry-stalled",
            action="store_true",
            help="train stalled runs again from the session that stalled (by default a stalled run is finished: "
            "the same seed and code stall again)",
        )
        parser.add_argument(
            "--gpu-speedup",
            type=positive_float,
            default=DEFAULT_GPU_SPEEDUP,
            help="the dry run's cost estimate: assumed GPU speedup over the CPU benchmark while no GPU result exists",
        )
        parser.add_argument("--force", action="store_true", help="also submit the kinds of run whose preflight failed")
    args = parser.parse_args(argv)
    config = cluster_config(args)
    if "sweep_dir" in args:
        submission = submit_evaluation(
            args.sweep_dir, args.cluster, config, args.sweep, args.dry_run, args.max_parallel
        )
    else:
        sweep = load_sweep(args.sweep)
        submit = functools.partial(
            submit_sweep,
            sweep,
            args.cluster,
            config,
            args.out,
            args.dry_run,
            args.max_parallel,
            overwrite=args.overwrite,
            verbose=args.verbose,
            gpu_speedup=args.gpu_speedup,
            force=args.force,
            retry_stalled=args.retry_stalled,
        )
        submission = submit()
        if args.wait and sweep.search is not None and submission.jobs and not submission.submitted:
            print(wait_for(submission.jobs, submission.sweep_dir, args.wait_timeout_h * 3600))
            submission = submit()  # the search's workers ended: its final runs
    if args.wait and submission.jobs:
        print(wait_for(submission.jobs, submission.sweep_dir, args.wait_timeout_h * 3600))
        unfinished = unfinished_runs(submission.sweep_dir, submission.submitted)
        if unfinished:
            listed = "\n".join(f"  {run}: {state}" for run, state in unfinished.items())
            print(
                f"error: {len(unfinished)} of {len(submission.submitted)} submitted runs did not finish as done:\n"
                f"{listed}\nsee `python launch/sweep.py status {submission.sweep_dir}` for errors and logs",
                file=sys.stderr,
            )
            return 1
    return 0


def preflight_main(argv: list[str]) -> int:
    """Run the sweep's preflight job and print what it measured; exit 1 when a kind of run failed."""
    from lit_dendrite.sweeps.preflight_job import run_preflight

    parser = argument_parser(
        "launch/sweep.py preflight",
        "One short job with the sweep's cluster settings: reads each kind of run's data on the compute node, builds "
        "its net there (the fused op's self-check), times a few steps of each session and attack, and writes "
        "<out>/<sweep>/preflight.json for the dry run's costs and the submission. See docs/cluster.md.",
    )
    parser.add_argument("--sweep", type=Path, default=DEFAULT_SWEEP, help="sweep file (default: paper.yaml)")
    parser.add_argument("--cluster", choices=list(BACKENDS), required=True, help="where the job runs (the backend)")
    parser.add_argument("--cluster-config", type=Path, help="configs/cluster/*.yaml (default per --cluster)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="the sweep's --out: writes OUT/<sweep>/")
    parser.add_argument("--time-min", type=positive_int, default=DEFAULT_TIME_MIN, help="the job's time limit")
    args = parser.parse_args(argv)
    try:
        preflight = run_preflight(load_sweep(args.sweep), args.cluster, cluster_config(args), args.out, args.time_min)
    except (SweepError, ClusterError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if preflight is None:
        print("error: the preflight job wrote no result (see its log above)", file=sys.stderr)
        return 1
    print("\n".join(preflight.report()))
    return 1 if preflight.failures() else 0


def fetch_main(argv: list[str], download: Download = download_url) -> int:
    """Fetch every data set a sweep's jobs read (or the named ones), checking the published md5s; with --dry-run say
    what is present and verified and what would be fetched."""
    parser = argument_parser(
        "launch/sweep.py fetch-data",
        "Fetch every data set a sweep's jobs read (clean and corrupted) where they read it, checking the published "
        "md5s; run it on a login node before submitting. See docs/cluster.md.",
    )
    parser.add_argument("names", nargs="*", help=f"data sets to fetch instead of a sweep's: {', '.join(NAMES)}")
    parser.add_argument("--sweep", type=Path, help="sweep file (default: paper.yaml, unless data sets are named)")
    parser.add_argument(
        "--root", type=Path, help="fetch into this folder (default: where the runs read each set; named sets: data)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="verify what is present and say what would be fetched; download nothing"
    )
    args = parser.parse_args(argv)
    if args.names and args.sweep:
        parser.error("name data sets or give --sweep, not both")
    try:
        if args.names:
            root = (args.root or Path("data")).resolve()
            for name in args.names:
                check_name(name, NAMES)
            needs = [DataNeed(name, root, (), (name,), root) for name in args.names]
        else:
            needs = fetch_sweep_data(load_sweep(args.sweep or DEFAULT_SWEEP))
        for note in fetch_needs(needs, args.root, args.dry_run, download=download):
            print(f"note: {note}: point the runs there (data.root, evaluate's corruptions root) or link the folder")
    except (SweepError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def collect_main(sweep_dir: Path, surface_images: int = SURFACE_IMAGES) -> int:
    """Write the analysis report and summary.csv of every run record with the report's per-run numbers; print the
    report's accuracy table."""
    report = with_search_section(build_report(sweep_dir, n_images=surface_images))
    print(f"wrote {collect(sweep_dir, report.per_run)}")
    print(f"report: {report.write()}")
    print(accuracy_section(report.text))
    return 0


def cancel_main(sweep_dir: Path) -> int:
    """Cancel the sweep's queued and running jobs and say which."""
    cancelled = cancel_jobs(sweep_dir)
    for job_id, runs in cancelled.items():
        print(f"cancelled job {job_id}: {', '.join(runs)}")
    if cancelled:
        print(f"resume with the same submission command; see `python launch/sweep.py status {sweep_dir}`")
    else:
        print(f"no job of {sweep_dir} is queued or running")
    return 0


def main(argv: list[str]) -> int:
    """The command: its exit status, a bad input reported as a short error with status 2
    (:func:`lit_dendrite.errors.run_command`)."""
    return run_command(lambda: dispatch(argv), "python launch/sweep.py")


def dispatch(argv: list[str]) -> int:
    """Dispatch to `status DIR`, `cancel DIR`, `collect DIR`, `fetch-data`, `preflight`, or submission (of a sweep,
    or with `evaluate DIR` its evaluation)."""
    if argv[:1] in (["status"], ["cancel"], ["collect"]):
        parser = argument_parser(f"launch/sweep.py {argv[0]}")
        parser.add_argument("sweep_dir", type=Path, help="the sweep directory, <out>/<sweep name>")
        if argv[0] == "collect":
            parser.add_argument(
                "--surface-images",
                type=positive_int,
                default=SURFACE_IMAGES,
                help="test images whose input pairs define the surface regions",
            )
        args = parser.parse_args(argv[1:])
        if argv[0] == "status":
            print(format_status(args.sweep_dir))
            return 0
        if argv[0] == "cancel":
            return cancel_main(args.sweep_dir)
        return collect_main(args.sweep_dir, args.surface_images)
    if argv[:1] == ["fetch-data"]:
        return fetch_main(argv[1:])
    if argv[:1] == ["preflight"]:
        return preflight_main(argv[1:])
    return submit_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
