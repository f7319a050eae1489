"""A run directory holds one configuration (issue 12.3): reruns with other settings are errors naming the
differing keys, --overwrite discards the old results, and a sweep reports the mismatch per run."""

import json
from pathlib import Path

import lightning as L
import pytest
import yaml
from helpers import CONFIGS, quick_train

from lit_dendrite.runs import ConfigMismatch, RunDir, config_differences
from lit_dendrite.sweeps.cluster import ClusterConfig
from lit_dendrite.sweeps.launch import submit_sweep
from lit_dendrite.sweeps.spec import SweepError, load_sweep


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    return run_dir, quick_train("mlp_digits_relu", run_dir, 1, 0)


def test_rerunning_a_finished_run_with_other_settings_is_an_error(finished):
    run_dir, result = finished
    with pytest.raises(ConfigMismatch) as raised:
        quick_train("mlp_digits_relu", run_dir, 1, 0, "--model.net.init_args.neuron", "1arg", "--model.lr", "0.1")
    message = str(raised.value)
    assert str(RunDir(run_dir).path) in message and "2 key(s) differ" in message
    assert "model.lr: 0.001 (recorded) != 0.1 (now)" in message
    assert "model.net.init_args.neuron: 'relu' (recorded) != '1arg' (now)" in message
    assert "--run_dir" in raised.value.fix and "--overwrite true" in raised.value.fix
    assert json.loads(RunDir(run_dir).result.read_text())["test_acc"] == result["test_acc"]


def test_settings_that_cannot_change_results_may_differ(finished, tmp_path, monkeypatch):
    run_dir, result = finished
    monkeypatch.chdir(tmp_path)
    again = quick_train("mlp_digits_relu", run_dir, 1, 0, "--trainer.enable_progress_bar", "true",
                        "--data.root", "elsewhere", "--experiment", "renamed")  # fmt: skip
    assert again == result


def test_overwrite_keeps_a_run_of_the_same_configuration(finished):
    run_dir, result = finished
    assert quick_train("mlp_digits_relu", run_dir, 1, 0, "--overwrite", "true") == result


class Crash(Exception):
    pass


class CrashInFrozenSession(L.Callback):
    def on_train_start(self, trainer, module):
        if trainer.logger.version == "III_frozen":
            raise Crash("session III")


def test_partial_run_rerun_with_other_widths_is_an_error_and_overwrite_starts_afresh(tmp_path, capsys):
    run_dir = tmp_path / "run"
    wrong = ("--model.net.init_args.widths", "[16, 8]")
    with pytest.raises(Crash):
        quick_train("mlp_digits_2arg", run_dir, 1, 1, *wrong, extra_callbacks=[CrashInFrozenSession()])
    right = ("--model.net.init_args.widths", "[16, 16]")
    with pytest.raises(ConfigMismatch, match=r"model.net.init_args.widths: \[16, 8\] \(recorded\) != \[16, 16\]"):
        quick_train("mlp_digits_2arg", run_dir, 1, 1, *right)
    joint = RunDir(run_dir).session("II_joint")
    old_summary = joint.summary.read_text()
    result = quick_train("mlp_digits_2arg", run_dir, 1, 1, *right, "--overwrite", "true")
    assert "--overwrite: discarding" in capsys.readouterr().out
    assert result["status"] == "done" and result["widths"] == [16, 16]
    assert joint.summary.read_text() != old_summary  # session II was trained again, with the new widths


def test_config_differences_name_dotted_keys():
    recorded = {"model": {"lr": 0.001, "net": {"init_args": {"widths": [64]}}}, "run_dir": "a", "seed_everything": 0}
    wanted = {"model": {"lr": 0.01, "net": {"init_args": {"widths": [64]}}}, "run_dir": "b", "seed_everything": 1}
    assert config_differences(recorded, wanted) == {"model.lr": (0.001, 0.01), "seed_everything": (0, 1)}


def test_an_option_added_later_at_its_default_keeps_the_identity_of_runs_recorded_without_it():
    recorded = {"data": {"dataset": "digits"}, "seed_everything": 0}  # written before data.augment existed
    assert config_differences(recorded, {**recorded, "data": {"dataset": "digits", "augment": None}}) == {}
    augmented = {**recorded, "data": {"dataset": "digits", "augment": "cifar"}}
    assert config_differences(recorded, augmented) == {"data.augment": (None, "cifar")}


def test_rerunning_a_sweep_with_changed_overrides_reports_each_run(tmp_path):
    overrides = {"trainer.max_epochs": 1, "trainer.enable_progress_bar": False}
    path = tmp_path / "tiny.yaml"
    spec = {"experiments": [str(CONFIGS / "mlp_digits_relu.yaml")], "seeds": [1, 2], "overrides": overrides}
    path.write_text(yaml.safe_dump(spec))
    out, quiet = tmp_path / "runs", lambda _: None
    submit_sweep(load_sweep(path), "debug", ClusterConfig(), out, echo=quiet)
    path.write_text(yaml.safe_dump({**spec, "overrides": {**overrides, "model.lr": 0.01}}))
    lines: list[str] = []
    with pytest.raises(SweepError, match="2 run\\(s\\) hold another configuration.*--overwrite"):
        submit_sweep(load_sweep(path), "debug", ClusterConfig(), out, echo=lines.append)
    assert sum("CONFIG DIFFERS (model.lr)" in line for line in lines) == 2
    again = submit_sweep(load_sweep(path), "debug", ClusterConfig(), out, echo=quiet, overwrite=True)
    assert len(again.submitted) == 2
    for run in again.submitted:
        assert json.loads(RunDir(Path(again.sweep_dir) / run).result.read_text())["config"]["model"]["lr"] == 0.01
