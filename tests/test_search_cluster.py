"""A small search on the real single-node Slurm cluster (fixture ``slurm_cluster``): two workers of one job array
train every condition's trials, then the same command submits the final runs with each condition's best values."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from test_sweep_cluster import EXPERIMENTS, QUIET, submit, wait_for_results, wait_until

from lit_dendrite.runs import SEARCH_DIR
from lit_dendrite.sweeps.search import open_study, params_values, trial_dir
from lit_dendrite.sweeps.spec import load_sweep
from lit_dendrite.sweeps.state import JOBS, format_status, job_states

pytestmark = pytest.mark.cluster


def test_a_small_study_per_condition_runs_on_slurm_workers_then_the_final_runs(slurm_cluster, tmp_path: Path) -> None:
    experiments = ["mlp_digits_relu", "mlp_digits_1arg"]
    sweep_file = tmp_path / "search.yaml"
    spec = {
        "experiments": [str(EXPERIMENTS / f"{e}.yaml") for e in experiments],
        "seeds": [1],
        "overrides": {**QUIET, "trainer.max_epochs": 2, "protocol.pretrain_epochs": 2},
        "search": {"trials": 2, "sampler": "random", "space": {"model.lr": {"loguniform": [1.0e-3, 1.0e-2]}}},
    }
    sweep_file.write_text(yaml.safe_dump(spec))
    search = submit(sweep_file, tmp_path / "runs", slurm_cluster.partition, array_parallelism=2)
    sweep_dir = search.sweep_dir
    assert len(search.job_ids) == 2 and search.submitted == []

    def workers_ended() -> bool:
        record = json.loads((sweep_dir / JOBS).read_text())[SEARCH_DIR]
        return job_states({SEARCH_DIR: record})[SEARCH_DIR] == "ENDED"

    wait_until(workers_ended, 600, "the search workers", poll_s=2)
    print(format_status(sweep_dir))
    sweep = load_sweep(sweep_file)
    best = {}
    for experiment in experiments:
        study = open_study(sweep.search, sweep_dir, sweep.name, experiment)
        assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE] * 2
        assert all(trial_dir(sweep_dir, experiment, t.number).joinpath("result.json").is_file() for t in study.trials)
        best[experiment] = params_values(study.best_trial.params, sweep.search)["model.lr"]

    final = submit(sweep_file, tmp_path / "runs", slurm_cluster.partition)
    assert sorted(final.submitted) == sorted(f"{e}/seed=1" for e in experiments)
    results = wait_for_results(sweep_dir, final.submitted)
    for experiment in experiments:
        record = results[f"{experiment}/seed=1"]
        assert record["status"] == "done" and record["config"]["model"]["lr"] == best[experiment]
