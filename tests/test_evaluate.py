"""End to end: train tiny digits runs with the real pipeline, then evaluate one with the one command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lit_dendrite.cli import train
from lit_dendrite.data.corrupt import write_corrupted_set
from lit_dendrite.data.datasets import load_arrays
from lit_dendrite.robustness.adversarial import SanityCheckError
from lit_dendrite.robustness.evaluate import ROBUSTNESS_FILE, find_baseline, main

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
    result = json.loads((tampered / "result.json").read_text())
    result["test_acc"] = result["test_acc"] - 0.2
    (tampered / "result.json").write_text(json.dumps(result))
    with pytest.raises(SanityCheckError, match="recorded by the run"):
        main([str(tampered), "--attacks", "none"])


def test_bad_arguments_fail_before_loading(tmp_path):
    with pytest.raises(ValueError, match="unknown attack"):
        main([str(tmp_path), "--attacks", "pgd"])
    with pytest.raises(ValueError, match="corruption spec"):
        main([str(tmp_path), "--corruptions", "imagenet_c", "--attacks", "none"])
