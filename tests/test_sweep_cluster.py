"""Sweeps on a real single-node Slurm cluster (fixture ``slurm_cluster`` from tests/slurm_cluster.py): a job
array runs to completion, reruns submit nothing, ``scontrol requeue`` and time limits resume from
``last.ckpt`` with the same epoch count as an uninterrupted run, ``sweep.py cancel`` stops a job that the next
submission resumes, and a two-task CPU DDP job trains."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import load_launcher

from lit_dendrite.sweeps.cluster import load_cluster_config
from lit_dendrite.sweeps.launch import Submission, submit_sweep
from lit_dendrite.sweeps.spec import load_sweep
from lit_dendrite.sweeps.state import FINISHED, format_status, run_states

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "configs" / "experiment"
QUIET = {"trainer.enable_progress_bar": False, "trainer.enable_model_summary": False}
# A ReLU run of LONG_EPOCHS x EPOCH_S seconds at least, with early stopping out of the way: long enough for a
# requeue, and for the time-limit signal (30-60 s after the start, see below), to land mid-training.
LONG_EPOCHS, EPOCH_S = 100, 0.6
PACER = {"class_path": "epoch_pacer.EpochPacer", "init_args": {"seconds": EPOCH_S}}
LONG = {**QUIET, "trainer.max_epochs": LONG_EPOCHS, "protocol.patience": 10_000, "trainer.callbacks": [PACER]}
TESTS = Path(__file__).resolve().parent
JOB_TIMEOUT_S = 420


def write_sweep(tmp_path: Path, name: str, experiments: list[str], overrides: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    spec = {"experiments": [str(EXPERIMENTS / f"{e}.yaml") for e in experiments], "seeds": [1], "overrides": overrides}
    path.write_text(yaml.safe_dump(spec))
    return path


def submit(sweep_file: Path, out: Path, partition: str, **cluster: object) -> Submission:
    config = load_cluster_config(REPO / "configs" / "cluster" / "test_cluster.yaml")
    setup = [*config.setup, f"export PYTHONPATH={TESTS}"]  # the jobs import epoch_pacer
    config = dataclasses.replace(config, partition=partition, setup=setup, **cluster)
    return submit_sweep(load_sweep(sweep_file), "slurm", config, out, echo=print)


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def wait_for_results(sweep_dir: Path, runs: list[str], timeout_s: float = JOB_TIMEOUT_S) -> dict[str, dict]:
    """Wait until every run has a final result.json and its job has left the queue; return the results."""

    def finished() -> bool:
        states = run_states(sweep_dir, runs).values()
        return all(i["state"] in (*FINISHED, "failed") and not i["live"] for i in states)

    try:
        wait_until(finished, timeout_s, f"results of {runs}", poll_s=2)
    finally:
        print(format_status(sweep_dir))
    return {run: json.loads((sweep_dir / run / "result.json").read_text()) for run in runs}


def job_log(sweep_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((sweep_dir / "logs").rglob("*_log.*")))


def last_checkpoint(run_dir: Path, session: str = "II_joint") -> dict:
    checkpoint = torch.load(run_dir / session / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {"epoch": checkpoint["epoch"], "global_step": checkpoint["global_step"]}


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A sweep of three runs (2-arg and ReLU, tiny; ReLU, long) run to completion as one job array."""
    tmp_path = tmp_path_factory.mktemp("array")
    tiny = write_sweep(tmp_path, "array", ["mlp_digits_2arg", "mlp_digits_relu"],
                       {**QUIET, "trainer.max_epochs": 2, "protocol.pretrain_epochs": 2})  # fmt: skip
    long = write_sweep(tmp_path, "long", ["mlp_digits_relu"], LONG)
    start = time.monotonic()
    submissions = [submit(tiny, tmp_path / "runs", slurm_cluster.partition),
                   submit(long, tmp_path / "runs", slurm_cluster.partition)]  # fmt: skip
    results = {s.sweep_dir.name: wait_for_results(s.sweep_dir, s.submitted) for s in submissions}
    return {"submissions": submissions, "results": results, "tiny": tiny, "out": tmp_path / "runs",
            "wall_s": time.monotonic() - start}  # fmt: skip


def test_job_array_runs_the_sweep_to_completion(uninterrupted: dict) -> None:
    array = uninterrupted["submissions"][0]
    base_id = array.job_ids[0].split("_")[0]
    assert sorted(array.job_ids) == [f"{base_id}_0", f"{base_id}_1"]
    results = uninterrupted["results"]["array"]
    assert results["mlp_digits_2arg/seed=1"]["status"] == "done"
    assert results["mlp_digits_2arg/seed=1"]["epochs"] == {"I_pretrain": 2, "II_joint": 2, "III_frozen": 2}
    assert results["mlp_digits_relu/seed=1"]["epochs"] == {"II_joint": 2}
    assert results["mlp_digits_relu/seed=1"]["neuron"] == "relu"
    print(f"array sweep and long run: {uninterrupted['wall_s']:.0f} s")


def test_rerunning_a_finished_sweep_submits_nothing(uninterrupted: dict, slurm_cluster) -> None:
    again = submit(uninterrupted["tiny"], uninterrupted["out"], slurm_cluster.partition)
    assert again.submitted == [] and again.job_ids == []
    assert set(again.skipped.values()) == {"done"}
    assert slurm_cluster.run("squeue", "-h").stdout.strip() == ""


def check_resumed_like_uninterrupted(uninterrupted: dict, sweep_dir: Path) -> None:
    run = "mlp_digits_relu/seed=1"
    reference = uninterrupted["results"]["long"][run]
    (result,) = wait_for_results(sweep_dir, [run]).values()
    assert result["status"] == "done", result.get("error")
    assert result["epochs"] == reference["epochs"] == {"II_joint": LONG_EPOCHS}
    log = job_log(sweep_dir)
    assert log.count("Starting with JobEnvironment") >= 2, "the job did not restart"
    assert re.search(r"Restoring states from the checkpoint path at \S*II_joint/checkpoints/last\.ckpt", log)
    reference_dir = uninterrupted["submissions"][1].sweep_dir / run
    assert last_checkpoint(sweep_dir / run)["epoch"] == LONG_EPOCHS - 1, "last.ckpt must hold the final epoch"
    assert last_checkpoint(sweep_dir / run) == last_checkpoint(reference_dir)


def test_scontrol_requeue_resumes_from_last_checkpoint(uninterrupted: dict, slurm_cluster, tmp_path: Path) -> None:
    sweep_file = write_sweep(tmp_path, "requeue", ["mlp_digits_relu"], LONG)
    submission = submit(sweep_file, tmp_path / "runs", slurm_cluster.partition)
    last = submission.sweep_dir / "mlp_digits_relu/seed=1/II_joint/checkpoints/last.ckpt"
    wait_until(last.is_file, JOB_TIMEOUT_S, "the first last.ckpt")
    (job_id,) = submission.job_ids
    slurm_cluster.run("scontrol", "requeue", job_id)
    check_resumed_like_uninterrupted(uninterrupted, submission.sweep_dir)


def test_cancel_stops_the_job_for_good_and_the_next_submission_resumes_it(
    uninterrupted: dict, slurm_cluster, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep_file = write_sweep(tmp_path, "cancel", ["mlp_digits_relu"], LONG)
    submission = submit(sweep_file, tmp_path / "runs", slurm_cluster.partition)
    run, sweep_dir = "mlp_digits_relu/seed=1", submission.sweep_dir
    last = sweep_dir / run / "II_joint/checkpoints/last.ckpt"
    wait_until(last.is_file, JOB_TIMEOUT_S, "the first last.ckpt")
    assert load_launcher().main(["cancel", str(sweep_dir)]) == 0
    assert f"cancelled job {submission.job_ids[0]}: {run}" in capsys.readouterr().out
    wait_until(lambda: not run_states(sweep_dir, [run])[run]["live"], 60, "the cancelled job to leave the queue")
    assert run_states(sweep_dir, [run])[run]["state"] == "pending"
    assert job_log(sweep_dir).count("Starting with JobEnvironment") == 1, "the cancelled job was requeued"
    submit(sweep_file, tmp_path / "runs", slurm_cluster.partition)
    check_resumed_like_uninterrupted(uninterrupted, sweep_dir)


def test_time_limit_requeues_and_resumes_from_last_checkpoint(
    uninterrupted: dict, slurm_cluster, tmp_path: Path
) -> None:
    sweep_file = write_sweep(tmp_path, "timelimit", ["mlp_digits_relu"], LONG)
    # Slurm checks time limits every 30 s: the signal comes 30-60 s after the start, the kill at 120 s.
    submission = submit(sweep_file, tmp_path / "runs", slurm_cluster.partition, time_min=2, signal_delay_s=60)
    check_resumed_like_uninterrupted(uninterrupted, submission.sweep_dir)
    assert "this job is timed-out" in job_log(submission.sweep_dir)


def test_two_task_cpu_ddp_job_trains_through_slurm(slurm_cluster, tmp_path: Path) -> None:
    sweep_file = write_sweep(tmp_path, "ddp", ["mlp_digits_relu"], {**QUIET, "trainer.max_epochs": 2})
    submission = submit(sweep_file, tmp_path / "runs", slurm_cluster.partition, tasks_per_node=2)
    (result,) = wait_for_results(submission.sweep_dir, submission.submitted).values()
    assert result["status"] == "done", result.get("error")
    assert result["epochs"] == {"II_joint": 2}
    log = job_log(submission.sweep_dir)
    assert "MEMBER: 2/2" in log and "distributed_backend=gloo" in log
