"""Nothing silent, nothing cryptic (issue 25): every command answers a bad input with exit status 2, one ``error:``
line naming the file or key and the fix, no traceback (unless LIT_DENDRITE_DEBUG=1), and leaves no file behind when
it did nothing; and the four ways a run could be silently wrong are closed."""

import argparse
import importlib.util
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CONFIGS, QUIET, quick_args
from tiny_sweep import make_fake_sweep

from lit_dendrite.cli import main as train_main
from lit_dendrite.cli import train
from lit_dendrite.data.corrupt import main as corrupt_main
from lit_dendrite.errors import DEBUG_VARIABLE, ConfigError, RecordError
from lit_dendrite.models.loading import load_net
from lit_dendrite.models.resume import resume_point
from lit_dendrite.robustness.cli import main as evaluate_main
from lit_dendrite.runs import RunDir

REPO = Path(__file__).resolve().parents[1]
RELU = str(CONFIGS / "mlp_digits_relu.yaml")


def _launcher():
    spec = importlib.util.spec_from_file_location("sweep_launcher", REPO / "launch" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep_main = _launcher().main


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished ReLU run (session II only, 1 epoch) and the arguments that trained it."""
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    args = quick_args("mlp_digits_relu", run_dir, 1, 0)
    train(args)
    return run_dir, args


def _copy(finished: tuple[Path, list[str]], target: Path) -> tuple[Path, list[str]]:
    """A copy of the finished run and the arguments that train it there."""
    run_dir, args = finished
    shutil.copytree(run_dir, target)
    return target, [target.as_posix() if a == str(run_dir) else a for a in args]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# --- the bad-input matrix ------------------------------------------------------------------------------------------


def _bad_inputs(tmp: Path, run: Path) -> dict[str, tuple[object, list[str], str]]:
    """``{case: (command's main, arguments, text the error line must contain)}``: the kinds of issue 25 item 5 and
    more, over train.py, evaluate.py, sweep.py and the corruption generator."""
    (tmp / "bad.yaml").write_text("model:\n  lr: [1\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "a_file").write_text("")
    (tmp / "generated").mkdir()
    (tmp / "generated" / "metadata.json").write_text("{garbage")
    cifar = tmp / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), dtype=np.uint8)}))  # no labels
    train_run = ["--run_dir", str(tmp / "never" / "run"), *QUIET]
    return {
        "train: --overwrite without its value": (
            train_main,
            ["--config", RELU, *train_run, "--overwrite"],
            "--overwrite",
        ),
        "train: YAML syntax error": (train_main, ["--config", str(tmp / "bad.yaml"), *train_run], "bad.yaml"),
        "train: YAML list": (train_main, ["--config", str(tmp / "list.yaml"), *train_run], "list.yaml"),
        "train: missing config": (train_main, ["--config", str(tmp / "none.yaml"), *train_run], "none.yaml"),
        "train: lr nan": (train_main, ["--config", RELU, *train_run, "--model.lr", "nan"], "model.lr"),
        "train: lr -1": (train_main, ["--config", RELU, *train_run, "--model.lr", "-1"], "model.lr"),
        "train: seed -5": (train_main, ["--config", RELU, *train_run, "--seed_everything", "-5"], "seed_everything"),
        "train: unknown key": (train_main, ["--config", RELU, *train_run, "--model.lrr", "1"], "--model.lrr"),
        "train: unknown data set": (train_main, ["--config", RELU, *train_run, "--data.dataset", "x"], "data.dataset"),
        "train: unknown neuron": (
            train_main,
            ["--config", RELU, *train_run, "--model.net.init_args.neuron", "x"],
            "neuron",
        ),
        "train: batch size 0": (train_main, ["--config", RELU, *train_run, "--data.batch_size", "0"], "batch_size"),
        "train: max_epochs 0": (train_main, ["--config", RELU, *train_run, "--trainer.max_epochs", "0"], "max_epochs"),
        "train: widths of two billion": (
            train_main,
            ["--config", RELU, *train_run, "--model.net.init_args.widths", "[2000000000]"],
            "widths",
        ),
        "train: an accelerator this machine lacks": (
            train_main,
            ["--config", RELU, *train_run, "--trainer.accelerator", "gpu"]
            + (["--trainer.devices", "999"] if torch.cuda.is_available() else []),
            "trainer options",
        ),
        "train: --run_dir names a file": (
            train_main,
            ["--config", RELU, *QUIET, "--run_dir", str(tmp / "a_file")],
            "a_file",
        ),
        "train: missing data set": (
            train_main,
            ["--config", str(CONFIGS / "mlp_mnist_relu.yaml"), *train_run, "--data.root", str(tmp / "nodata")],
            "nodata",
        ),
        "train: CIFAR batch without labels": (
            train_main,
            ["--config", str(CONFIGS / "mlp_cifar10_relu.yaml"), *train_run, "--data.root", str(tmp / "cifar")],
            "data_batch_1",
        ),
        "evaluate: no such run": (evaluate_main, [str(tmp / "nowhere" / "run")], "nowhere"),
        "evaluate: run directory is a file": (evaluate_main, [str(tmp / "a_file")], "a_file"),
        "evaluate: --device cuda:7": (evaluate_main, [str(run), "--device", "cuda:7"], "--device"),
        "evaluate: --device nonsense": (evaluate_main, [str(run), "--device", "nonsense"], "--device"),
        "evaluate: --n 0": (evaluate_main, [str(run), "--n", "0"], "--n"),
        "evaluate: unknown attack": (evaluate_main, [str(run), "--attacks", "nope", "--device", "cpu"], "nope"),
        "evaluate: unknown corruption set": (evaluate_main, [str(run), "--corruptions", "nope"], "nope"),
        "evaluate: damaged corrupted-set metadata": (
            evaluate_main,
            [str(run), "--corruptions", f"generated:{tmp / 'generated'}", "--attacks", "none", "--device", "cpu"],
            "metadata.json",
        ),
        "sweep: YAML syntax error": (
            sweep_main,
            ["--sweep", str(tmp / "bad.yaml"), "--cluster", "debug", "--out", str(tmp / "out"), "--dry-run"],
            "bad.yaml",
        ),
        "sweep: missing sweep file": (
            sweep_main,
            ["--sweep", str(tmp / "none.yaml"), "--cluster", "debug", "--out", str(tmp / "out"), "--dry-run"],
            "none.yaml",
        ),
        "sweep: --out names a file": (
            sweep_main,
            ["--cluster", "debug", "--out", str(tmp / "a_file"), "--dry-run"],
            "a_file",
        ),
        "sweep: unknown cluster": (sweep_main, ["--cluster", "nope"], "--cluster"),
        "sweep: cluster config YAML error": (
            sweep_main,
            ["--cluster", "local", "--cluster-config", str(tmp / "bad.yaml"), "--out", str(tmp / "out"), "--dry-run"],
            "bad.yaml",
        ),
        "sweep: status of no sweep": (sweep_main, ["status", str(tmp / "nowhere")], "nowhere"),
        "sweep: collect of no sweep": (sweep_main, ["collect", str(tmp / "nowhere")], "nowhere"),
        "corrupt: unknown data set": (corrupt_main, ["--dataset", "nope", "--out", str(tmp / "c")], "nope"),
        "corrupt: --out names a file": (corrupt_main, ["--dataset", "digits", "--out", str(tmp / "a_file")], "a_file"),
        "corrupt: missing data set": (
            corrupt_main,
            ["--dataset", "mnist", "--root", str(tmp / "nodata"), "--out", str(tmp / "c")],
            "nodata",
        ),
        "corrupt: unknown corruption": (
            corrupt_main,
            ["--dataset", "digits", "--out", str(tmp / "c"), "--corruptions", "nope"],
            "--corruptions",
        ),
    }


def test_every_command_answers_bad_input_with_one_error_line_and_leaves_nothing_behind(
    tmp_path, finished, capsys, monkeypatch
):
    """One test over all cases (in-process: a subprocess per case would import torch ~40 times)."""
    monkeypatch.delenv(DEBUG_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    cases = _bad_inputs(tmp_path, finished[0])
    capsys.readouterr()
    failures = []
    for case, (command, arguments, named) in cases.items():
        before = _files(tmp_path)
        try:
            command(arguments)
            failures.append(f"{case}: no error")
            continue
        except SystemExit as stopped:
            code = stopped.code
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        if code != 2 or len(lines) != 1 or named not in lines[0] or "Traceback" in err or "RunDir(" in err:
            failures.append(f"{case}: exit {code}, stderr:\n{err}")
        if left := sorted(str(p) for p in _files(tmp_path) - before):
            failures.append(f"{case}: left behind {left}")
    assert not failures, "\n".join(failures)
    assert len(cases) >= 36


def test_the_error_line_is_followed_by_the_fix_and_unsafe_loading_is_never_advised(tmp_path, finished, capsys):
    run, _ = _copy(finished, tmp_path / "copy")
    RunDir(run).session("II_joint").best_checkpoint.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit):
        evaluate_main([str(run), "--attacks", "none", "--device", "cpu"])
    first, fix = capsys.readouterr().err.splitlines()[:2]
    assert first.startswith("error: ") and "II_joint/checkpoints/best.ckpt" in first and "truncated" in first
    assert fix.startswith("retrain the session: remove") and "weights_only" not in first + fix


def test_a_traceback_only_with_the_debug_switch(tmp_path):
    """The real command line (a subprocess), once without and once with LIT_DENDRITE_DEBUG=1."""
    env = {**{k: v for k, v in os.environ.items() if k != DEBUG_VARIABLE}, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "launch/train.py", "--config", str(tmp_path / "none.yaml")]
    quiet = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    loud = subprocess.run(args, cwd=REPO, env={**env, DEBUG_VARIABLE: "1"}, capture_output=True, text=True)
    assert quiet.returncode == 2 and quiet.stderr.startswith("error: --config: File does not exist")
    assert "Traceback" not in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr
    assert f"{DEBUG_VARIABLE}=1" in (REPO / "docs" / "troubleshooting.md").read_text()  # the switch is documented


def test_a_run_without_its_data_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    """Issue 24 item 6: one message, and not even the default run directory's .lock is left behind."""
    args = ["--config", str(CONFIGS / "mlp_mnist_relu.yaml"), "--data.root", str(tmp_path / "nodata")]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        train_main(args)
    assert "data set 'mnist' not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- the four silent faults ----------------------------------------------------------------------------------------


def test_the_overwrite_advice_is_trains_own_syntax_and_runs(tmp_path, finished, capsys):
    """Issue 24 item 4: the advised command is run as advised."""
    run, args = _copy(finished, tmp_path / "copy")
    changed = [*args, "--model.lr", "0.01"]
    with pytest.raises(SystemExit):
        train_main(changed)
    err = capsys.readouterr().err
    assert "--overwrite true" in err.splitlines()[-1]
    train_main([*changed, "--overwrite", "true"])
    assert json.loads(RunDir(run).result.read_text())["config"]["model"]["lr"] == 0.01


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_an_unfinished_run_without_a_readable_config_is_known_by_its_checkpoints(tmp_path, damage):
    """Issue 25 item 1: another configuration is refused (it would resume the old one's checkpoints); the same one
    resumes. Trained in place: a copied unfinished run resumes with Lightning's record of the original's paths."""
    run = tmp_path / "run"
    args = quick_args("mlp_digits_relu", run, 1, 0)
    train(args)
    run_dir = RunDir(run)
    run_dir.result.unlink()
    (run_dir.session("II_joint").summary).unlink()  # an unfinished session II
    run_dir.config.write_text("{garbage") if damage == "garbage" else run_dir.config.unlink()
    with pytest.raises(ConfigError, match="configuration hash") as refused:
        train([*args, "--model.lr", "0.01"])
    assert "--overwrite true" in refused.value.fix
    assert train(args)["status"] == "done"


def test_a_directory_whose_checkpoints_record_no_configuration_is_not_unused(tmp_path, finished):
    run, args = _copy(finished, tmp_path / "copy")
    run_dir = RunDir(run)
    run_dir.result.unlink()
    run_dir.config.unlink()
    for checkpoint in run.rglob("*.ckpt"):  # as written before checkpoints carried the hash
        data = torch.load(checkpoint, weights_only=True)
        data.pop("lit_dendrite_config_hash")
        torch.save(data, checkpoint)
    with pytest.raises(ConfigError, match="do not record which configuration") as refused:
        train(args)
    assert "another --run_dir" in refused.value.fix and "--overwrite true" in refused.value.fix


class _NotATensor(argparse.Namespace):
    pass


def test_a_checkpoint_holding_objects_is_set_aside_before_lightning_resumes(tmp_path, finished):
    """Issue 25 item 3: a valid zip holding a non-tensor object."""
    run, _ = _copy(finished, tmp_path / "copy")
    session = RunDir(run).session("II_joint")
    torch.save({"state_dict": {}, "payload": _NotATensor()}, session.last_checkpoint)
    said = []
    assert resume_point(session, said.append) == session.best_checkpoint
    assert not session.last_checkpoint.exists() and list(session.checkpoints.glob("last.ckpt.corrupt-*"))
    assert "holds objects other than tensors" in said[0] and "weights_only" not in said[0]


def test_a_damaged_best_checkpoint_names_the_file_and_the_recovery(tmp_path, finished):
    run, _ = _copy(finished, tmp_path / "copy")
    best = RunDir(run).session("II_joint").best_checkpoint
    best.write_bytes(best.read_bytes()[:2000])
    with pytest.raises(RecordError) as refused:
        load_net(run)
    assert str(best) in str(refused.value) and str(RunDir(run).session("II_joint").path) in refused.value.fix


def test_a_copied_run_reports_its_own_path(tmp_path, finished, capsys):
    """Issue 25 item 4."""
    run, args = _copy(finished, tmp_path / "copy")
    capsys.readouterr()
    train(args)
    assert f"-> {RunDir(run).result}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("field", "value"),
    [("robust_accuracy", math.nan), ("robust_accuracy", "0.5"), ("epsilons", None)],
    ids=["nan", "string", "missing"],
)
def test_a_robustness_file_with_unusable_numbers_is_a_problem_not_a_silent_gap(tmp_path, field, value):
    """Issue 25 item 2."""
    sweep = make_fake_sweep(tmp_path / "sweep", seeds=(1, 2))
    path = sweep / "mlp_digits_2arg" / "seed=2" / "robustness.json"
    robustness = json.loads(path.read_text())
    attack = robustness["adversarial"]["LinfPGD"]
    if field == "epsilons":
        del attack[field]
    else:
        attack[field][1] = value
    path.write_text(json.dumps(robustness))
    assert sweep_main(["collect", str(sweep)]) == 0
    problems = (sweep / "report.md").read_text().split("## Problems")[1]
    assert "`mlp_digits_2arg/seed=2`: robustness.json adversarial.LinfPGD" in problems
    assert f".{field}" in problems


def test_a_record_with_a_string_accuracy_is_listed_and_collect_finishes(tmp_path):
    sweep = make_fake_sweep(tmp_path / "sweep", seeds=(1, 2))
    path = sweep / "mlp_digits_relu" / "seed=1" / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "test_acc": "0.9"}))
    assert sweep_main(["collect", str(sweep)]) == 0
    report = (sweep / "report.md").read_text()
    assert "`mlp_digits_relu/seed=1`: status 'failed': result.json is done but test_acc is '0.9'" in report
    assert "## Robustness" in report and (sweep / "summary.csv").is_file()
