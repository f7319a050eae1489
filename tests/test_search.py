"""Hyperparameter search (a sweep file's ``search:`` section): its checks, the equal budget of every condition's
study, pruned, failed and abandoned trials, session I shared by the trials, a worker requeued mid-trial on
``--cluster local`` with two workers, the final step and the report's search section."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import optuna
import pytest
import yaml

from lit_dendrite.runs import RunDir
from lit_dendrite.sweeps.cluster import ClusterConfig
from lit_dendrite.sweeps.launch import submit_sweep
from lit_dendrite.sweeps.search import budget_left, open_study, params_values, parse_search, suggest, trial_dir
from lit_dendrite.sweeps.search_launch import fail_abandoned_trials
from lit_dendrite.sweeps.search_report import HISTORY_FIGURE, IMPORTANCE_FIGURE, search_section
from lit_dendrite.sweeps.search_worker import RUN_DIR_ATTR, WORKER_ATTR, SearchWorker
from lit_dendrite.sweeps.spec import SweepError, load_sweep
from lit_dendrite.sweeps.state import format_status

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
EXPERIMENTS = REPO / "configs" / "experiment"
QUICK = {"trainer.enable_progress_bar": False, "trainer.enable_model_summary": False, "protocol.pretrain_epochs": 2}
LR = {"model.lr": {"loguniform": [1.0e-3, 1.0e-2]}}


def write_sweep(path: Path, experiments: list[str], search: dict, overrides: dict | None = None, **more) -> Path:
    spec = {
        "name": path.stem,
        "experiments": [str(EXPERIMENTS / f"{e}.yaml") for e in experiments],
        "seeds": [1],
        "overrides": {**QUICK, "trainer.max_epochs": 3, **(overrides or {})},
        "search": search,
        **more,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("search", "more", "message"),
    [
        ({"trials": 4, "space": LR, "objective": "sessions.II_joint.test_loss"}, {}, "test metric"),
        ({"trials": 4, "space": LR, "sampler": "grid"}, {}, "grid needs every space axis"),
        (
            {"trials": 4, "space": {"model.net.init_args.widths": {"choice": [[8], [16]]}}, "sampler": "cmaes"},
            {},
            "cmaes searches numeric axes only",
        ),
        ({"trials": 0, "space": LR}, {}, "trials must be a positive integer"),
        ({"trials": 4, "space": {"seed_everything": {"int": [1, 9]}}}, {}, "not a hyperparameter"),
        ({"trials": 4, "space": LR, "pruner": "hyperband"}, {}, "pruner must be one of"),
        ({"trials": 4, "space": LR}, {"random": {"trials": 2, "axes": LR}}, "cannot be combined with ['random']"),
        ({"trials": 4, "space": {"model.lr": {"uniform": [0.1, 0.01]}}}, {}, "low < high"),
    ],
)
def test_a_bad_search_section_is_refused_naming_the_fix(tmp_path: Path, search: dict, more: dict, message: str) -> None:
    path = write_sweep(tmp_path / "bad.yaml", ["mlp_digits_relu"], search, **more)
    with pytest.raises(SweepError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_sweep(path)


def test_a_searched_key_cannot_also_be_a_fixed_override(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "both.yaml", ["mlp_digits_relu"], {"trials": 2, "space": LR}, {"model.lr": 0.1})
    with pytest.raises(SweepError, match=r"\['model.lr'\] are both fixed overrides"):
        load_sweep(path)


def test_choices_of_lists_come_back_as_the_values_trained_and_workers_cover_the_grid(tmp_path: Path) -> None:
    widths = [[8, 8], [16, 16], [32, 32]]
    spec = parse_search(
        "t", {"trials": 3, "sampler": "grid", "space": {"model.net.init_args.widths": {"choice": widths}}}
    )
    worker = SearchWorker(tmp_path, "t", spec, {"mlp": []})
    asked = [worker._ask() for _ in range(3)]
    study = open_study(spec, tmp_path, "t", "mlp")
    seen = [params_values(trial.params, spec)["model.net.init_args.widths"] for trial in study.get_trials()]
    again = optuna.trial.Trial(study, study.get_trials()[0]._trial_id)
    assert suggest(again, spec)["model.net.init_args.widths"] == seen[0], "asked again: the same values"
    assert asked == [("mlp", 0), ("mlp", 1), ("mlp", 2)] and sorted(seen) == widths, "the grid, each point once"


def test_failed_trials_are_replaced_but_the_budget_of_finished_trials_stays_exact(tmp_path: Path) -> None:
    spec = parse_search("t", {"trials": 3, "space": LR})
    study = open_study(spec, tmp_path, "t", "mlp")
    for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED):
        trial = study.ask()
        suggest(trial, spec)
        study.tell(trial, 1.0 if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    assert budget_left(study.get_trials(), spec) == 1, "complete + pruned count, the failed one is asked again"
    for _ in range(3):
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    assert budget_left(study.get_trials(), spec) == 0, "as many failures as the budget: nothing more is asked"


@pytest.mark.parametrize("database", [False, True], ids=["journal file", "RDB URL"])
def test_workers_ask_the_conditions_in_turn_new_values_each_and_never_beyond_the_budget(
    tmp_path: Path, database: bool
) -> None:
    space = {**LR, "model.net.init_args.dropout": {"uniform": [0.0, 0.5]}}
    storage = f"sqlite:///{tmp_path / 'studies.db'}" if database else None
    spec = parse_search("t", {"trials": 3, "space": space, "storage": storage})
    workers = [SearchWorker(tmp_path, "t", spec, {"relu": [], "2arg": []}) for _ in range(2)]
    asked = [worker._ask() for _ in range(4) for worker in workers]
    assert asked[6:] == [None, None], "three trials per condition, then nothing"
    assert sorted(asked[:6]) == [("2arg", 0), ("2arg", 1), ("2arg", 2), ("relu", 0), ("relu", 1), ("relu", 2)]
    for condition in ("relu", "2arg"):
        trials = open_study(spec, tmp_path, "t", condition).get_trials()
        assert len({trial.params["model.lr"] for trial in trials}) == 3, "each trial draws new values"
        assert all(
            trial.user_attrs[RUN_DIR_ATTR].endswith(f"search/{condition}/trial={trial.number}") for trial in trials
        )
    assert (tmp_path / "search" / "optuna.journal").exists() != database, "the studies live in the database if given"


def test_a_trial_left_running_by_a_worker_that_ended_is_failed_in_its_study_and_its_record(tmp_path: Path) -> None:
    spec = parse_search("t", {"trials": 2, "space": LR})
    study = open_study(spec, tmp_path, "t", "mlp_digits_relu")
    trial = study.ask()
    suggest(trial, spec)
    run_dir = trial_dir(tmp_path, "mlp_digits_relu", trial.number)
    trial.set_user_attr(WORKER_ATTR, "12345_0")
    trial.set_user_attr(RUN_DIR_ATTR, str(run_dir))
    assert fail_abandoned_trials(tmp_path, "t", spec, ["mlp_digits_relu"]) == 1
    assert study.get_trials()[0].state == optuna.trial.TrialState.FAIL
    record = json.loads(RunDir(run_dir).result.read_text())
    assert record["status"] == "failed" and "ended mid-trial" in record["error"]
    assert budget_left(study.get_trials(), spec) == 2, "not reused: both trials are asked afresh"


def test_a_search_worker_trains_one_task_only(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path / "ddp.yaml", ["mlp_digits_relu"], {"trials": 2, "space": LR}))
    config = ClusterConfig(tasks_per_node=2)
    with pytest.raises(SweepError, match="one trial at a time in one task"):
        submit_sweep(sweep, "local", config, tmp_path / "runs", echo=lambda line: None)


@pytest.mark.slow
def test_pruned_trials_are_recorded_and_the_final_step_retrains_the_best_configuration(tmp_path: Path) -> None:
    """One condition, a grid of three learning rates (two hopeless), a median pruner judging from the first
    finished trial: in any order some trial is pruned. Rerunning the command retrains the best on the seeds."""
    search = {"trials": 3, "sampler": "grid", "pruner": {"median": {"n_startup_trials": 1}},
              "space": {"model.lr": {"choice": [3.0e-3, 1.0e-7, 2.0e-7]}}}  # fmt: skip
    sweep = load_sweep(write_sweep(tmp_path / "pruned.yaml", ["mlp_digits_relu"], search))
    submission = submit_sweep(sweep, "debug", ClusterConfig(array_parallelism=1), tmp_path / "runs", echo=print)
    sweep_dir = submission.sweep_dir
    study = open_study(sweep.search, sweep_dir, sweep.name, "mlp_digits_relu")
    states = [trial.state for trial in study.get_trials()]
    assert len(states) == 3 and optuna.trial.TrialState.PRUNED in states
    for trial in study.get_trials():
        record = json.loads(RunDir(trial_dir(sweep_dir, "mlp_digits_relu", trial.number)).result.read_text())
        expected = "pruned" if trial.state == optuna.trial.TrialState.PRUNED else "done"
        assert record["status"] == expected
    assert study.best_trial.params == {"model.lr": 0}, "the working learning rate (choice 0) wins"
    assert "mlp_digits_relu: trials 2 complete, 1 pruned; 0 to ask" in format_status(sweep_dir)

    final = submit_sweep(sweep, "debug", ClusterConfig(), tmp_path / "runs", echo=print)
    assert final.submitted == ["mlp_digits_relu/seed=1"]
    record = json.loads(RunDir(sweep_dir / "mlp_digits_relu" / "seed=1").result.read_text())
    assert record["status"] == "done" and record["config"]["model"]["lr"] == 3.0e-3
    section = "\n".join(search_section(sweep_dir))
    assert "| mlp_digits_relu | 2 complete, 1 pruned | " in section
    assert (sweep_dir / HISTORY_FIGURE).is_file() and (sweep_dir / IMPORTANCE_FIGURE).is_file()


@pytest.mark.slow
def test_two_local_workers_give_every_condition_its_budget_and_a_requeued_worker_resumes_its_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two conditions, three trials each, two worker processes; the worker training a 1-arg trial is preempted
    (submitit's checkpoint-and-requeue) mid-session II and resumes that trial from last.ckpt."""
    pacer = {"class_path": "epoch_pacer.EpochPacer", "init_args": {"seconds": 0.5}}
    overrides = {"trainer.max_epochs": 6, "protocol.patience": 100, "trainer.callbacks": [pacer]}
    search = {"trials": 3, "sampler": "random", "space": {**LR, "model.net.init_args.dropout": {"uniform": [0.0, 0.5]}}}
    experiments = ["mlp_digits_relu", "mlp_digits_1arg"]
    sweep = load_sweep(write_sweep(tmp_path / "local.yaml", experiments, search, overrides))
    # the workers inherit this environment (no setup lines: the preemption signal must reach the job's Python)
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}:{os.environ.get('PYTHONPATH', '')}")  # they import epoch_pacer
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = ClusterConfig(array_parallelism=2, signal_delay_s=5)
    submission = submit_sweep(sweep, "local", config, tmp_path / "runs", echo=print)
    sweep_dir = submission.sweep_dir
    assert len(submission.jobs) == 2

    def running_one_arg_trial() -> tuple[str, Path] | None:
        study = open_study(sweep.search, sweep_dir, sweep.name, "mlp_digits_1arg")
        for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            run_dir = Path(trial.user_attrs.get(RUN_DIR_ATTR, "/nonexistent"))  # set just after the trial is asked
            if (run_dir / "II_joint" / "checkpoints" / "last.ckpt").is_file():
                return trial.user_attrs[WORKER_ATTR], run_dir
        return None

    deadline = time.monotonic() + 600
    while (found := running_one_arg_trial()) is None:
        assert time.monotonic() < deadline and not all(job.done() for job in submission.jobs), "no 1-arg trial ran"
        time.sleep(0.2)
    worker, interrupted_dir = found
    (job,) = [job for job in submission.jobs if job.job_id == worker]
    job._interrupt()  # what Slurm's preemption signal does to a job
    deadline = time.monotonic() + 900
    while not all(job.done() for job in submission.jobs):
        assert time.monotonic() < deadline, "the workers did not finish within 900 s"
        time.sleep(1)
    print(format_status(sweep_dir))

    log = "\n".join(p.read_text(errors="replace") for p in (sweep_dir / "logs").rglob("*_log.*"))
    assert f"Restoring states from the checkpoint path at {interrupted_dir}/II_joint/checkpoints/last.ckpt" in log
    run_dirs, drawn = set(), set()
    for experiment in experiments:
        trials = open_study(sweep.search, sweep_dir, sweep.name, experiment).get_trials()
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3, "the budget exactly, all done"
        for trial in trials:
            run_dir = trial_dir(sweep_dir, experiment, trial.number)
            assert trial.user_attrs[RUN_DIR_ATTR] == run_dir.as_posix(), "a trial trains its own condition's run"
            record = json.loads(RunDir(run_dir).result.read_text())
            assert record["status"] == "done" and record["experiment"] == experiment
            assert record["config"]["model"]["lr"] == pytest.approx(trial.params["model.lr"], rel=1e-3)
            run_dirs.add(run_dir)
            drawn.add(record["config"]["model"]["lr"])
    assert len(run_dirs) == 6, "no trial shared between conditions"
    assert len(drawn) == 3, "each condition's trials draw other values; the conditions draw the same ones"
    one_arg = [json.loads(RunDir(trial_dir(sweep_dir, "mlp_digits_1arg", n)).result.read_text()) for n in range(3)]
    reused = [r["sessions"]["I_pretrain"].get("reused_from") for r in one_arg]
    assert sum(origin is None for origin in reused) >= 1 and any(reused), "session I trained once, then reused"
    assert "mlp_digits_1arg: trials 3 complete; 0 to ask" in format_status(sweep_dir)
