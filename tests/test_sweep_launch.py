"""launch/sweep.py without a cluster: dry runs, validation before submitting, debug (in-process) sweeps with
skipping of finished runs, failure isolation, status and collect; the Slurm Trainer additions."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import sys
import types
from pathlib import Path

import pytest
import yaml
from helpers import load_launcher

from lit_dendrite.sweeps.cluster import ClusterConfig, ClusterError, load_cluster_config
from lit_dendrite.sweeps.job import TrainRun
from lit_dendrite.sweeps.launch import submit_sweep
from lit_dendrite.sweeps.spec import SweepError, load_sweep
from lit_dendrite.sweeps.state import read_manifest

REPO = Path(__file__).resolve().parent.parent


def arg(args: list[str], key: str) -> str:
    return args[args.index(key) + 1]


@pytest.fixture
def sweep_file(tmp_path: Path) -> Path:
    experiments = tmp_path / "configs" / "experiment"
    experiments.mkdir(parents=True)
    for name in ("mlp_digits_2arg", "mlp_digits_relu"):
        (experiments / f"{name}.yaml").write_text("seed_everything: 0\n")
    path = tmp_path / "configs" / "sweep" / "tiny.yaml"
    path.parent.mkdir()
    spec = {"experiments": ["mlp_digits_2arg", "mlp_digits_relu"], "seeds": [1, 2], "grid": {"model.lr": [0.01]}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class FakePipeline:
    """Stands in for lit_dendrite.cli: records calls; `fail`/`diverge`/`stall` pick runs by their seed."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail: set[str] = set()
        self.diverge: set[str] = set()
        self.stall: set[str] = set()
        self.bad_config = False
        self.parsed = 0

    def parse(self, args: list[str]) -> types.SimpleNamespace:
        self.parsed += 1
        if self.bad_config:
            raise ValueError("Key 'model.lr' expected a float, got 'fast'")
        data = types.SimpleNamespace(dataset="digits", root="data", download=False)
        return types.SimpleNamespace(config=types.SimpleNamespace(data=data))

    def resolve(self, args: list[str]) -> dict:
        return {"big": 1, "seed_everything": int(arg(args, "--seed_everything"))}

    def train(self, args: list[str], extra_callbacks: list) -> dict:
        assert [type(c).__name__ for c in extra_callbacks] == ["RestoreSigtermHandler"]
        self.calls.append(args)
        seed = arg(args, "--seed_everything")
        if seed in self.fail:
            raise RuntimeError(f"boom in seed {seed}")
        run_dir = Path(arg(args, "--run_dir"))
        status = "diverged" if seed in self.diverge else "stalled" if seed in self.stall else "done"
        if status == "stalled":  # as the protocol leaves it: session I finished, session II's checkpoints only
            for path in (run_dir / "I_pretrain" / "session.json", run_dir / "II_joint" / "checkpoints" / "last.ckpt"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}")
        error = "session II_joint: loss at chance" if status == "stalled" else None
        result = {"status": status, "error": error, "run_dir": str(run_dir), "seed": int(seed), "test_acc": 0.5,
                  "epochs": {"II_joint": 3}, "config": self.resolve(args)}  # fmt: skip
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "result.json").write_text(json.dumps(result))
        return result


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch) -> FakePipeline:
    fake = FakePipeline()
    module = types.ModuleType("lit_dendrite.cli")
    module.train, module.parse, module.resolve = fake.train, fake.parse, fake.resolve
    monkeypatch.setitem(sys.modules, "lit_dendrite.cli", module)
    return fake


def test_dry_run_prints_runs_and_the_sbatch_script_and_submits_nothing(
    sweep_file: Path, tmp_path: Path, pipeline: FakePipeline, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "cluster.yaml"
    settings = {"partition": "gpu", "gpus_per_node": 2, "tasks_per_node": 2, "time_min": 90,
                "setup": ["module load cuda"], "sbatch_extra": ["--mail-type=FAIL"]}  # fmt: skip
    config.write_text(yaml.safe_dump(settings))
    launcher = load_launcher()
    code = launcher.main(["--sweep", str(sweep_file), "--cluster", "slurm", "--cluster-config", str(config),
                          "--out", str(tmp_path / "runs"), "--dry-run", "--max-parallel", "3"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "4 runs, 4 to submit" in out
    for line in ("#SBATCH --array=0-3%3", "#SBATCH --partition=gpu", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --time=90", "#SBATCH --signal=TERM@", "#SBATCH --mail-type=FAIL",
                 "module load cuda", "srun --unbuffered"):  # fmt: skip
        assert line in out, line
    # the per-run list and each run's arguments only with --verbose
    assert "mlp_digits_relu/lr=0.01,seed=2" not in out and "add --verbose" in out
    code = launcher.main(["--sweep", str(sweep_file), "--cluster", "slurm", "--cluster-config", str(config),
                          "--out", str(tmp_path / "runs"), "--dry-run", "--verbose"])  # fmt: skip
    verbose = capsys.readouterr().out
    assert code == 0 and "  mlp_digits_relu/lr=0.01,seed=2  submit" in verbose
    assert "train args of mlp_digits_relu/lr=0.01,seed=2: --config" in verbose
    assert "--trainer.devices 2 --trainer.num_nodes 1 --trainer.strategy ddp" in verbose
    assert not (tmp_path / "runs").exists() and pipeline.calls == []


def test_debug_sweep_runs_isolates_failures_and_rerun_submits_only_unfinished(
    sweep_file: Path, tmp_path: Path, pipeline: FakePipeline
) -> None:
    sweep, out = load_sweep(sweep_file), tmp_path / "runs"
    pipeline.fail, pipeline.diverge = {"2"}, {"1"}
    first = submit_sweep(sweep, "debug", ClusterConfig(), out, echo=lambda _: None)
    sweep_dir = first.sweep_dir
    assert len(first.submitted) == 4 and len(pipeline.calls) == 4
    failed = json.loads((sweep_dir / "mlp_digits_2arg" / "lr=0.01,seed=2" / "result.json").read_text())
    assert failed["status"] == "failed" and "RuntimeError: boom in seed 2" in failed["error"]
    assert "--cluster" not in " ".join(pipeline.calls[0])  # debug keeps the experiment's own trainer settings
    statuses = {run["dir"]: run for run in read_manifest(sweep_dir)["runs"]}
    assert statuses["mlp_digits_2arg/lr=0.01,seed=1"]["axes"] == {"lr": "0.01", "seed": "1"}

    pipeline.fail = set()
    second = submit_sweep(sweep, "debug", ClusterConfig(), out, echo=lambda _: None)
    assert sorted(second.submitted) == ["mlp_digits_2arg/lr=0.01,seed=2", "mlp_digits_relu/lr=0.01,seed=2"]
    assert set(second.skipped.values()) == {"diverged"}
    assert (sweep_dir / "mlp_digits_2arg" / "lr=0.01,seed=2" / "result.failed.json").is_file()

    third = submit_sweep(sweep, "debug", ClusterConfig(), out, echo=lambda _: None)
    assert third.submitted == [] and len(pipeline.calls) == 6


def test_a_stalled_run_is_shown_and_resubmitted_only_when_asked(
    sweep_file: Path, tmp_path: Path, pipeline: FakePipeline, capsys: pytest.CaptureFixture
) -> None:
    launcher = load_launcher()
    submit = ["--sweep", str(sweep_file), "--cluster", "debug", "--out", str(tmp_path / "runs")]
    pipeline.stall = {"1"}
    assert launcher.main(submit) == 0
    sweep_dir, stalled = tmp_path / "runs" / "tiny", "mlp_digits_2arg/lr=0.01,seed=1"
    capsys.readouterr()
    assert launcher.main(["status", str(sweep_dir)]) == 0
    status = capsys.readouterr().out
    assert re.search(rf"{re.escape(stalled)}\s+stalled", status) and "session II_joint: loss at chance" in status
    assert "done 2, failed 0, diverged 0, stalled 2 (of 4)" in status
    assert launcher.main(submit) == 0 and len(pipeline.calls) == 4  # finished: not submitted again
    pipeline.stall = set()
    assert launcher.main([*submit, "--retry-stalled"]) == 0
    assert len(pipeline.calls) == 6 and {arg(call, "--seed_everything") for call in pipeline.calls[4:]} == {"1"}
    run_dir = sweep_dir / stalled
    assert json.loads((run_dir / "result.stalled.json").read_text())["status"] == "stalled"
    assert json.loads((run_dir / "result.json").read_text())["status"] == "done"
    # the session it finished is kept, the one that stalled starts afresh
    assert (run_dir / "I_pretrain" / "session.json").is_file() and not (run_dir / "II_joint").exists()


def test_status_and_collect_commands(
    sweep_file: Path, tmp_path: Path, pipeline: FakePipeline, capsys: pytest.CaptureFixture
) -> None:
    pipeline.fail = {"2"}
    launcher = load_launcher()
    assert launcher.main(["--sweep", str(sweep_file), "--cluster", "debug", "--out", str(tmp_path / "runs")]) == 0
    sweep_dir = tmp_path / "runs" / "tiny"
    (sweep_dir / "mlp_digits_relu" / "lr=0.01,seed=2" / "result.json").unlink()  # as if never run
    capsys.readouterr()
    assert launcher.main(["status", str(sweep_dir)]) == 0
    status = capsys.readouterr().out
    assert "pending 1, running 0, done 2, failed 1, diverged 0, stalled 0 (of 4)" in status
    assert "error: RuntimeError: boom in seed 2" in status

    assert launcher.main(["collect", str(sweep_dir)]) == 0
    with (sweep_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(row["run"], row["status"]) for row in rows] == [
        ("mlp_digits_2arg/lr=0.01,seed=1", "done"),
        ("mlp_digits_2arg/lr=0.01,seed=2", "failed"),
        ("mlp_digits_relu/lr=0.01,seed=1", "done"),
    ]
    assert rows[0]["axis.lr"] == "0.01" and rows[0]["epochs.II_joint"] == "3" and "config" not in rows[0]
    assert [f for f in os.listdir(sweep_dir) if f.endswith(".tmp")] == []

    with pytest.raises(SystemExit) as stopped:
        launcher.main(["status", str(tmp_path / "nowhere")])
    assert stopped.value.code == 2


def test_wait_exits_non_zero_and_names_the_runs_that_failed_or_diverged(
    sweep_file: Path, tmp_path: Path, pipeline: FakePipeline, capsys: pytest.CaptureFixture
) -> None:
    pipeline.fail, pipeline.diverge = {"2"}, {"1"}
    launcher = load_launcher()
    submit = ["--sweep", str(sweep_file), "--cluster", "debug", "--out", str(tmp_path / "runs"), "--wait"]
    assert launcher.main(submit) == 1
    error = capsys.readouterr().err
    assert "4 of 4 submitted runs did not finish as done" in error
    for seed, state in (("1", "diverged"), ("2", "failed")):
        for experiment in ("mlp_digits_2arg", "mlp_digits_relu"):
            assert f"{experiment}/lr=0.01,seed={seed}: {state}" in error
    pipeline.fail, pipeline.diverge = set(), set()
    shutil.rmtree(tmp_path / "runs")
    assert launcher.main(submit) == 0 and capsys.readouterr().err == ""


def test_a_backend_registered_outside_the_package_is_a_cluster_choice_that_runs_the_sweep(
    sweep_file: Path, tmp_path: Path, pipeline: FakePipeline, backend_registry: dict, capsys: pytest.CaptureFixture
) -> None:
    import submitit

    from lit_dendrite.sweeps.backends import ClusterBackend, register_backend

    submit = ["--sweep", str(sweep_file), "--cluster", "inprocess", "--out", str(tmp_path / "runs")]
    launcher = load_launcher()
    with pytest.raises(SystemExit):
        launcher.main(submit)
    error = capsys.readouterr().err
    assert "invalid choice: 'inprocess' (choose from 'slurm', 'local', 'debug')" in error

    @register_backend
    class InProcess(ClusterBackend):
        """Like debug, with a Trainer setting of its own, and answering for the state of its jobs."""

        name = "inprocess"

        def __init__(self) -> None:
            self.asked: list[str] = []

        def trainer_args(self, config: ClusterConfig) -> list[str]:
            return ["--trainer.max_epochs", "1"]

        def executor(self, config: ClusterConfig, folder: Path, job_name: str) -> submitit.Executor:
            return submitit.DebugExecutor(folder=folder)

        def after_submit(self, jobs: list[submitit.Job]) -> None:
            for job in jobs:
                job.result()

        def job_states(self, job_ids: list[str]) -> dict[str, str | None]:
            self.asked += job_ids
            return dict.fromkeys(job_ids, "ENDED")

    assert launcher.main(submit) == 0
    assert len(pipeline.calls) == 4 and all(arg(call, "--trainer.max_epochs") == "1" for call in pipeline.calls)
    sweep_dir = tmp_path / "runs" / "tiny"
    jobs = json.loads((sweep_dir / "jobs.json").read_text())
    assert len(jobs) == 4 and {record["cluster"] for record in jobs.values()} == {"inprocess"}
    capsys.readouterr()
    assert launcher.main(["status", str(sweep_dir)]) == 0
    assert "done 4" in capsys.readouterr().out
    assert set(backend_registry["inprocess"].asked) == {record["job_id"] for record in jobs.values()}
    with pytest.raises(ValueError, match="'debug' is already registered"):
        register_backend(type("Debug", (InProcess,), {"name": "debug"}))


def test_queued_jobs_train_the_experiment_config_as_submitted_even_if_the_file_changes(
    sweep_file: Path, tmp_path: Path, pipeline: FakePipeline, backend_registry: dict
) -> None:
    import submitit

    from lit_dendrite.sweeps.backends import ClusterBackend, register_backend

    @register_backend
    class Queued(ClusterBackend):
        """Jobs wait in a queue until the test runs them."""

        name = "queued"

        def executor(self, config: ClusterConfig, folder: Path, job_name: str) -> submitit.Executor:
            return submitit.DebugExecutor(folder=folder)

    experiment = sweep_file.parent.parent / "experiment" / "mlp_digits_2arg.yaml"
    submission = submit_sweep(load_sweep(sweep_file), "queued", ClusterConfig(), tmp_path / "runs", echo=lambda _: None)
    experiment.write_text("seed_everything: 0\nmodel: {lr: 0.5}\n")  # edited while the jobs wait
    for job in submission.jobs:
        job.result()
    configs = {Path(arg(call, "--config")) for call in pipeline.calls if "mlp_digits_2arg" in arg(call, "--run_dir")}
    assert len(configs) == 1 and configs.pop().read_text() == "seed_everything: 0\n"
    manifest_args = [run["args"] for run in read_manifest(submission.sweep_dir)["runs"]]
    assert all(
        arg(args, "--config").startswith(str(submission.sweep_dir / "submitted_configs")) for args in manifest_args
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--cluster", "debug", "--max-parallel", "0"], r"--max-parallel: .*must be an integer >= 1, got 0"),
        (["--cluster", "debug", "--wait-timeout-h", "nan"], r"--wait-timeout-h: .*finite number > 0, got nan"),
        (["--clus", "debug"], r"the following arguments are required: --cluster"),
    ],
    ids=["zero_parallel", "nan_timeout", "abbreviated_option"],
)
def test_bad_numbers_and_abbreviations_are_argument_errors(
    arguments: list[str], capsys: pytest.CaptureFixture, message: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        load_launcher().main(arguments)
    assert stopped.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_config_that_does_not_parse_stops_the_sweep_before_submitting(
    sweep_file: Path, tmp_path: Path, pipeline: FakePipeline
) -> None:
    pipeline.bad_config = True
    with pytest.raises(
        SweepError, match=r"(?s)4 run\(s\) have a config that does not parse.*expected a float.*in 4 run"
    ):
        submit_sweep(load_sweep(sweep_file), "debug", ClusterConfig(), tmp_path / "runs", echo=lambda _: None)
    assert pipeline.calls == [] and not (tmp_path / "runs").exists()
    assert pipeline.parsed == 2  # once per experiment: seeds and run directories cannot break a config


def fake_slurm_tools(bin_dir: Path, partitions: tuple[str, ...]) -> None:
    """sbatch/srun/scontrol/sinfo stand-ins: scontrol knows only `partitions`, sbatch must not be called."""
    bin_dir.mkdir()
    scripts = {
        "sbatch": "echo 'sbatch must not run' >&2; exit 1",
        "srun": "exit 1",
        "sinfo": f"printf '{' '.join(partitions)}\\n'",
        "scontrol": f'case " {" ".join(partitions)} " in *" $3 "*) exit 0;; esac\n'
        'echo "invalid partition $3" >&2; exit 1',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)


def test_slurm_checks_before_submitting(
    sweep_file: Path, tmp_path: Path, pipeline: FakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = load_sweep(sweep_file)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ClusterError, match=r"needs sbatch and srun on PATH.*--cluster local"):
        submit_sweep(sweep, "slurm", ClusterConfig(), tmp_path / "runs", echo=lambda _: None)
    fake_slurm_tools(tmp_path / "bin", ("debug", "gpu"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(ClusterError, match=r"rejects partition 'gpux'.*invalid partition gpux.*\['debug', 'gpu'\]"):
        submit_sweep(sweep, "slurm", ClusterConfig(partition="gpux"), tmp_path / "runs", echo=lambda _: None)
    assert pipeline.calls == [] and not (tmp_path / "runs").exists()


def test_checkpoint_resubmits_the_same_callable(tmp_path: Path) -> None:
    run = TrainRun(["--config", "x.yaml"], tmp_path / "run")
    delayed = run.checkpoint()
    assert delayed.function is run and delayed.args == () and delayed.kwargs == {}


def test_local_config_rejects_several_nodes(tmp_path: Path) -> None:
    from lit_dendrite.sweeps.backends import cluster_backend

    with pytest.raises(ClusterError, match="nodes: 1"):
        cluster_backend("local").executor(ClusterConfig(nodes=2), tmp_path, "x")
    assert load_cluster_config(None) == ClusterConfig()


def test_sigterm_handler_in_place_before_fit_is_restored_during_training() -> None:
    import torch
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lit_dendrite.sweeps.preemption import RestoreSigtermHandler

    seen = []

    class Probe(Callback):
        def on_train_batch_start(self, *args: object) -> None:
            seen.append(signal.getsignal(signal.SIGTERM))

    def submitit_like_handler(signum: int, frame: object) -> None:
        raise AssertionError("not called")

    previous = signal.signal(signal.SIGTERM, submitit_like_handler)
    try:
        for callbacks, expect_original in (([Probe()], False), ([RestoreSigtermHandler(), Probe()], True)):
            seen.clear()
            trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                              accelerator="cpu", callbacks=callbacks)  # fmt: skip
            torch.manual_seed(0)
            trainer.fit(BoringModel())
            assert (seen[0] is submitit_like_handler) is expect_original
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_debug_sweep_with_the_real_pipeline_on_digits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep_file = tmp_path / "digits.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "experiments": [str(REPO / "configs" / "experiment" / "mlp_digits_2arg.yaml")],
        "seeds": [1],
        "overrides": {"trainer.max_epochs": 1, "protocol.pretrain_epochs": 1, "trainer.enable_progress_bar": False},
    }))  # fmt: skip
    launcher, out = load_launcher(), tmp_path / "runs"
    argv = ["--sweep", str(sweep_file), "--cluster", "debug", "--out", str(out)]
    assert launcher.main(argv) == 0
    sweep_dir = out / "digits"
    result = json.loads((sweep_dir / "mlp_digits_2arg" / "seed=1" / "result.json").read_text())
    assert result["status"] == "done" and result["epochs"] == {"I_pretrain": 1, "II_joint": 1, "III_frozen": 1}
    capsys.readouterr()

    assert launcher.main(argv) == 0
    assert "0 to submit" in capsys.readouterr().out
    assert launcher.main(["status", str(sweep_dir)]) == 0
    assert "pending 0, running 0, done 1, failed 0, diverged 0, stalled 0 (of 1)" in capsys.readouterr().out
    assert launcher.main(["collect", str(sweep_dir)]) == 0
    with (sweep_dir / "summary.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["run"] == "mlp_digits_2arg/seed=1" and float(row["test_acc"]) == pytest.approx(result["test_acc"])


def test_an_error_after_checkpoint_is_an_interruption_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = TrainRun(["--config", "x.yaml"], tmp_path / "run")

    def train_interrupted_by_the_scheduler(args: list[str], extra_callbacks: list) -> dict:
        run.checkpoint()  # what submitit's signal handler calls first, then `scontrol requeue` fails
        raise RuntimeError("scontrol requeue failed: job already requeued")

    module = types.ModuleType("lit_dendrite.cli")
    module.train = train_interrupted_by_the_scheduler
    monkeypatch.setitem(sys.modules, "lit_dendrite.cli", module)
    with pytest.raises(RuntimeError, match="already requeued"):
        run()
    assert not (tmp_path / "run" / "result.json").exists()

    module.train = lambda args, extra_callbacks: 1 / 0  # the requeued run starts afresh and fails for real
    assert run()["status"] == "failed"
    assert "ZeroDivisionError" in json.loads((tmp_path / "run" / "result.json").read_text())["error"]


def test_a_job_running_several_runs_shows_running_only_the_one_it_trains(
    tmp_path: Path, backend_registry: dict
) -> None:
    """--cluster local deals several runs to one process: the runs it has not reached are pending, as is one whose
    trainer died (its lock names a dead process); the one whose lock a live process holds is running."""
    from lit_dendrite.runs import FileLock, RunDir
    from lit_dendrite.sweeps.backends import ClusterBackend, register_backend
    from lit_dendrite.sweeps.state import record_jobs, run_states

    @register_backend
    class Busy(ClusterBackend):
        name = "busy"

        def job_states(self, job_ids: list[str]) -> dict[str, str | None]:
            return dict.fromkeys(job_ids, "RUNNING")

    runs = ["e/seed=1", "e/seed=2", "e/seed=3"]
    record_jobs(tmp_path, "busy", {run: ["7"] for run in runs})
    dead = {"host": os.uname().nodename, "pid": 2**22 + 1, "slurm_job": None, "since": "2026-11-30T00:00:00+0000"}
    RunDir(tmp_path / runs[2]).lock.parent.mkdir(parents=True)
    RunDir(tmp_path / runs[2]).lock.write_text(json.dumps(dead))
    with FileLock(RunDir(tmp_path / runs[0]).lock, "test"):
        states = {run: info["state"] for run, info in run_states(tmp_path, runs).items()}
    assert states == {"e/seed=1": "running", "e/seed=2": "pending", "e/seed=3": "pending"}
    assert run_states(tmp_path, runs[:1])[runs[0]]["state"] == "pending"  # released: the holder is cleared


def test_cancel_through_a_backend_that_cannot_cancel_names_it(
    tmp_path: Path, backend_registry: dict, capsys: pytest.CaptureFixture
) -> None:
    from lit_dendrite.sweeps.backends import ClusterBackend, register_backend
    from lit_dendrite.sweeps.state import MANIFEST, record_jobs

    @register_backend
    class Busy(ClusterBackend):
        name = "busy"

        def job_states(self, job_ids: list[str]) -> dict[str, str | None]:
            return dict.fromkeys(job_ids, "RUNNING")

    (tmp_path / MANIFEST).write_text(json.dumps({"name": "sweep", "runs": [{"dir": "e/seed=1"}]}))
    record_jobs(tmp_path, "busy", {"e/seed=1": ["7"]})
    with pytest.raises(SystemExit) as stopped:
        load_launcher().main(["cancel", str(tmp_path)])
    assert stopped.value.code == 2 and "cluster backend 'busy' cannot cancel jobs" in capsys.readouterr().err
