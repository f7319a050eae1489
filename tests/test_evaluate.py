"""End to end: train tiny digits runs with the real pipeline, then evaluate one with the one command."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, QUIET

from lit_dendrite.cli import train
from lit_dendrite.data.corrupt import write_corrupted_set
from lit_dendrite.data.datasets import load_arrays
from lit_dendrite.robustness import evaluate
from lit_dendrite.robustness.adversarial import SanityCheckError
from lit_dendrite.robustness.evaluate import find_baseline, main
from lit_dendrite.runs import PARTIAL_FILE, RESULT_FILE, ROBUSTNESS_DIR, ROBUSTNESS_FILE

TINY = ["--trainer.max_epochs", "2", "--protocol.pretrain_epochs", "1", "--model.net.init_args.widths", "[16, 16]"]


def _train(sweep: Path, neuron: str) -> Path:
    run_dir = sweep / f"mlp_digits_{neuron}" / "seed=0"
    config = Path(__file__).resolve().parent.parent / "configs" / "experiment" / f"mlp_digits_{neuron}.yaml"
    train(["--config", str(config), "--run_dir", str(run_dir), "--seed_everything", "0", *TINY])
    return run_dir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep directory with a tiny 2-argument run and its ReLU control, and a small generated corrupted set."""
    root = tmp_path_factory.mktemp("sweep")
    runs = {neuron: _train(root, neuron) for neuron in ("2arg", "relu")}
    images, labels = load_arrays("digits", "unused", train=False)
    corrupted = write_corrupted_set(
        images[:40],
        labels[:40],
        root / "digits_c",
        dataset="digits",
        num_classes=10,
        corruptions=["gaussian_noise", "brightness"],
        progress=False,
    )
    return runs, corrupted


@pytest.mark.slow
def test_baseline_is_the_relu_sibling(sweep):
    runs, _ = sweep
    assert find_baseline(runs["2arg"]) == runs["relu"].resolve()


@pytest.mark.slow
def test_one_command_writes_report_and_plots(sweep):
    runs, corrupted = sweep
    run_dir = runs["2arg"]
    report = main([str(run_dir), "--corruptions", f"generated:{corrupted}", "--attacks", "fgsm,linf_pgd", "--n", "40"])
    saved = json.loads((run_dir / ROBUSTNESS_FILE).read_text())
    assert saved["clean"]["accuracy"] == pytest.approx(saved["clean"]["recorded_test_acc"], abs=0.005)
    corruptions = saved["corruptions"]
    assert set(corruptions["accuracy"]) == {"gaussian_noise", "brightness"}
    assert corruptions["baseline"]["run_dir"] == str(runs["relu"].resolve())
    assert corruptions["mCE"] == pytest.approx(report["corruptions"]["mCE"]) and corruptions["mCE"] > 0
    for name in ("fgsm", "linf_pgd"):
        result = saved["adversarial"][name]
        assert result["n"] == 40 and result["epsilons"][-1] == pytest.approx(0.3)
        assert result["reported"]["epsilon"] == pytest.approx(0.3)
    for png in ("corruptions.png", "adversarial.png"):
        assert (run_dir / "robustness" / png).stat().st_size > 1000
    assert list((run_dir / "robustness").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_accuracies_only_without_baseline(sweep, tmp_path):
    runs, corrupted = sweep
    alone = tmp_path / "alone" / "mlp_digits_2arg" / "seed=0"
    shutil.copytree(runs["2arg"], alone)
    report = main([str(alone), "--corruptions", f"generated:{corrupted}", "--attacks", "none", "--n", "10"])
    assert report["corruptions"]["baseline"] is None and "mCE" not in report["corruptions"]
    assert "--baseline" in report["corruptions"]["note"]
    assert report["adversarial"] == {}


@pytest.mark.slow
def test_recorded_accuracy_mismatch_fails(sweep, tmp_path):
    runs, _ = sweep
    tampered = tmp_path / "tampered"
    shutil.copytree(runs["relu"], tampered)
    result = json.loads((tampered / RESULT_FILE).read_text())
    result["test_acc"] = result["test_acc"] - 0.2
    (tampered / RESULT_FILE).write_text(json.dumps(result))
    with pytest.raises(SanityCheckError, match="recorded by the run"):
        main([str(tampered), "--attacks", "none"])


def test_bad_arguments_fail_before_loading(tmp_path):
    with pytest.raises(ValueError, match="unknown attack"):
        main([str(tmp_path), "--attacks", "pgd"])
    with pytest.raises(ValueError, match="corruption spec"):
        main([str(tmp_path), "--corruptions", "imagenet_c", "--attacks", "none"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--batch-size", "0"], r"--batch-size: .*must be an integer >= 1, got 0"),
        (["--n", "-5"], r"--n: .*must be an integer >= 1, got -5"),
        (["--batch", "5"], r"unrecognized arguments: --batch 5"),
    ],
    ids=["zero_batch_size", "negative_n", "abbreviated_option"],
)
def test_bad_numbers_and_abbreviations_are_argument_errors(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path), "--attacks", "none", *arguments])
    assert stopped.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_corrupted_set_of_another_data_set_is_refused_before_evaluating(tmp_path):
    run_dir = tmp_path / "mlp_digits_relu" / "seed=0"
    train(["--config", str(CONFIGS / "mlp_digits_relu.yaml"), "--run_dir", str(run_dir), *QUIET,
           "--trainer.max_epochs", "1", "--model.net.init_args.widths", "[16, 16]"])  # fmt: skip
    images, labels = load_arrays("digits", "unused", train=False)
    other = write_corrupted_set(
        images[:4], labels[:4], tmp_path / "fashion_c", dataset="fashion_mnist", num_classes=10,
        corruptions=["brightness"], progress=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"made from 'fashion_mnist'.*trained on 'digits'.*--dataset digits"):
        main([str(run_dir), "--corruptions", f"generated:{other}", "--attacks", "none"])
    assert not (run_dir / ROBUSTNESS_FILE).exists() and not (run_dir / ROBUSTNESS_DIR).exists()


class Preempted(Exception):
    """Stands for the Slurm preemption or Ctrl-C that stops an evaluation halfway."""


def _count_calls(monkeypatch, name: str, fail_at: int | None = None) -> list[int]:
    """Count the calls of ``evaluate.<name>`` (one per unit of work); the ``fail_at``-th call raises Preempted."""
    real = getattr(evaluate, name)
    calls = []

    def counted(*args, **kwargs):
        calls.append(len(calls) + 1)
        if len(calls) == fail_at:
            raise Preempted
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, name, counted)
    return calls


def _copy_sweep(runs: dict[str, Path], destination: Path) -> Path:
    """A copy of the tiny sweep (the run and its ReLU control, no robustness results); the copied 2-argument run."""
    results = shutil.ignore_patterns(ROBUSTNESS_FILE, ROBUSTNESS_DIR)
    for run_dir in runs.values():
        shutil.copytree(run_dir, destination / run_dir.parent.name / run_dir.name, ignore=results)
    return destination / runs["2arg"].parent.name / runs["2arg"].name


def _without_wall_times(report: dict) -> dict:
    report = {key: value for key, value in report.items() if key != "wall_time_s"}
    report["adversarial"] = {
        name: {key: value for key, value in result.items() if key != "wall_time_s"}
        for name, result in report["adversarial"].items()
    }
    return report


SETS = 10
"""Corrupted test sets of the sweep fixture (2 corruptions x 5 severities), evaluated for the run and its baseline."""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("interrupted_in", "fail_at", "finished_sets", "finished_attacks"),
    [("loader_accuracy", 4, 3, []), ("evaluate_attacks", 2, 2 * SETS, ["fgsm"])],
    ids=["in_corruptions", "in_attacks"],
)
def test_interrupted_evaluation_resumes_where_it_stopped(
    sweep, tmp_path, monkeypatch, capsys, interrupted_in, fail_at, finished_sets, finished_attacks
):
    runs, corrupted = sweep
    run_dir = _copy_sweep(runs, tmp_path)
    args = [str(run_dir), "--corruptions", f"generated:{corrupted}", "--attacks", "fgsm,linf_pgd", "--n", "20"]
    main(args)
    uninterrupted = json.loads((run_dir / ROBUSTNESS_FILE).read_text())
    (run_dir / ROBUSTNESS_FILE).unlink()

    with monkeypatch.context() as patch:
        _count_calls(patch, interrupted_in, fail_at=fail_at)
        with pytest.raises(Preempted):
            main(args)
    partial_file = run_dir / ROBUSTNESS_DIR / PARTIAL_FILE
    units = json.loads(partial_file.read_text())["units"]
    assert (
        sum(len(units.get(section, {})) for section in ("corrupted_sets", "baseline_corrupted_sets")) == finished_sets
    )
    assert list(units.get("attacks", {})) == finished_attacks
    assert not (run_dir / ROBUSTNESS_FILE).exists()

    set_calls = _count_calls(monkeypatch, "loader_accuracy")
    attack_calls = _count_calls(monkeypatch, "evaluate_attacks")
    capsys.readouterr()
    main(args)
    assert len(set_calls) == 2 * SETS - finished_sets
    assert len(attack_calls) == 2 - len(finished_attacks)
    reused = finished_sets + len(finished_attacks)
    assert f"reusing {reused} finished units" in capsys.readouterr().out
    resumed = json.loads((run_dir / ROBUSTNESS_FILE).read_text())
    assert _without_wall_times(resumed) == _without_wall_times(uninterrupted)
    assert not partial_file.exists()


IGNORED_BECAUSE = {"n": "(changed: n)", "checkpoint": "(changed: checkpoint)", "fresh": "a fresh start was asked for"}


@pytest.mark.slow
@pytest.mark.parametrize("change", list(IGNORED_BECAUSE))
def test_partial_results_of_another_evaluation_are_ignored(sweep, tmp_path, monkeypatch, capsys, change):
    runs, corrupted = sweep
    run_dir = _copy_sweep(runs, tmp_path)
    args = [str(run_dir), "--corruptions", f"generated:{corrupted}", "--attacks", "none", "--n", "20"]
    with monkeypatch.context() as patch:
        _count_calls(patch, "loader_accuracy", fail_at=SETS + 1)
        with pytest.raises(Preempted):
            main(args)
    assert (run_dir / ROBUSTNESS_DIR / PARTIAL_FILE).exists()

    if change == "n":
        args[-1] = "10"
    elif change == "checkpoint":
        checkpoint = run_dir / json.loads((run_dir / RESULT_FILE).read_text())["best_checkpoint"]
        os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    else:
        args.append("--fresh")
    set_calls = _count_calls(monkeypatch, "loader_accuracy")
    capsys.readouterr()
    report = main(args)
    assert len(set_calls) == 2 * SETS
    output = capsys.readouterr().out
    assert "reusing" not in output
    assert IGNORED_BECAUSE[change] in output
    assert report["corruptions"]["n"] == (10 if change == "n" else 20)


@pytest.mark.slow
def test_each_attack_starts_from_the_seed(sweep, tmp_path, monkeypatch):
    """So that a resumed evaluation's attacks are those of an uninterrupted one: none depends on what ran before."""
    runs, _ = sweep
    run_dir = tmp_path / "run"
    shutil.copytree(runs["2arg"], run_dir)
    first_draws = []
    real = evaluate.evaluate_attacks

    def drawing(*args, **kwargs):
        first_draws.append(torch.rand(1).item())
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_attacks", drawing)
    for seed in ("0", "1"):
        main([str(run_dir), "--attacks", "fgsm,linf_pgd", "--n", "10", "--seed", seed])
    torch.manual_seed(0)
    from_seed_0 = torch.rand(1).item()
    assert first_draws[:2] == [from_seed_0, from_seed_0]
    assert first_draws[2] == first_draws[3] != from_seed_0
