"""Evaluating a run's robustness with the one command: results, merging of sections, what is reused and when
(mCE baselines, saved sections, the resume store), resuming an interrupted evaluation.

Most tests evaluate untrained networks saved as the pipeline saves them (seconds); the slow ones train tiny runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from test_data import write_idx

from lit_dendrite.analysis.robustness_plots import ATTACK_FIGURE, CORRUPTION_FIGURE
from lit_dendrite.cli import train
from lit_dendrite.data.corrupt import write_corrupted_set
from lit_dendrite.data.corrupted import MNIST_C_CORRUPTIONS
from lit_dendrite.data.datasets import load_arrays, pixels
from lit_dendrite.nn import DendriticMLP
from lit_dendrite.robustness import evaluate
from lit_dendrite.robustness.adversarial import SanityCheckError, exact_model, predict
from lit_dendrite.robustness.cli import main
from lit_dendrite.robustness.evaluate import find_baseline
from lit_dendrite.runs import FileLock, RunDir

TINY = ["--trainer.max_epochs", "2", "--protocol.pretrain_epochs", "1", "--model.net.init_args.widths", "[16, 16]"]
CORRUPTIONS = ["gaussian_noise", "brightness"]
SETS = 10
"""Corrupted test sets of a generated set (2 corruptions x 5 severities)."""


def _train(sweep: Path, neuron: str) -> Path:
    run_dir = sweep / f"mlp_digits_{neuron}" / "seed=0"
    config = Path(__file__).resolve().parent.parent / "configs" / "experiment" / f"mlp_digits_{neuron}.yaml"
    train(["--config", str(config), "--run_dir", str(run_dir), "--seed_everything", "0", *TINY])
    return run_dir


def untrained_run(sweep: Path, neuron: str, seed: int = 0, dataset: str = "digits", root: str = "data") -> Path:
    """A finished MLP run of an untrained network on ``dataset`` (under ``root``), saved as the pipeline saves
    it, whose record holds the test accuracy the network really has."""
    run_dir = sweep / f"mlp_{dataset}_{neuron}" / f"seed={seed}"
    torch.manual_seed(seed)
    init_args = {"widths": [16, 16], "neuron": neuron, "mean": [0.3053], "std": [0.3247]}
    net = DendriticMLP(**init_args).eval()
    checkpoint = run_dir / "II_joint" / "checkpoints" / "best.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, checkpoint)
    images, labels = load_arrays(dataset, root, train=False)
    with exact_model(net):
        test_acc = (predict(net, pixels(images)) == torch.from_numpy(labels)).float().mean().item()
    result = {
        "status": "done",
        "experiment": run_dir.parent.name,
        "seed": seed,
        "dataset": dataset,
        "net": "DendriticMLP",
        "neuron": neuron,
        "test_acc": test_acc,
        "best_checkpoint": checkpoint.relative_to(run_dir).as_posix(),
        "config": {
            "model": {"net": {"class_path": "lit_dendrite.nn.DendriticMLP", "init_args": init_args}},
            "data": {"dataset": dataset, "root": root},
        },
    }
    RunDir(run_dir).result.write_text(json.dumps(result))
    return run_dir


def generated_set(directory: Path, first: int = 0, label_shift: int = 0) -> Path:
    """A generated corrupted digits set of 40 test images (``first`` on), labels shifted by ``label_shift``."""
    images, labels = load_arrays("digits", "unused", train=False)
    chosen = slice(first, first + 40)
    return write_corrupted_set(
        images[chosen],
        (labels[chosen] + label_shift) % 10,
        directory,
        dataset="digits",
        num_classes=10,
        corruptions=CORRUPTIONS,
        progress=False,
    )


def digits_as_mnist(root: Path) -> Path:
    """MNIST's files under ``root`` (torchvision's layout) holding the digits images (28x28), so that a run of
    data set ``mnist`` can be evaluated offline."""
    for split, prefix in ((True, "train"), (False, "t10k")):
        images, labels = load_arrays("digits", "unused", train=split)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images[..., 0])
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def mnist_c_set(root: Path, noise: float) -> Path:
    """MNIST-C's layout under ``root`` (``root/mnist_c/<corruption>/test_{images,labels}.npy``) made of 40 digits
    test images with uniform noise of amplitude ``noise`` (a stand-in for the released set)."""
    images, labels = load_arrays("digits", "unused", train=False)
    generator = np.random.default_rng(int(noise))
    for index, corruption in enumerate(MNIST_C_CORRUPTIONS):
        folder = root / "mnist_c" / corruption
        folder.mkdir(parents=True)
        chosen = slice(index, index + 40)
        noisy = images[chosen].astype(np.float32) + generator.uniform(-noise, noise, images[chosen].shape)
        np.save(folder / "test_images.npy", np.clip(noisy, 0, 255).astype(np.uint8))
        np.save(folder / "test_labels.npy", labels[chosen])
    return root


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    """A sweep directory holding an untrained 2-argument run and its ReLU control."""
    return {neuron: untrained_run(tmp_path / "sweep", neuron) for neuron in ("2arg", "relu")}


def _saved(run_dir: Path) -> dict:
    return json.loads(RunDir(run_dir).robustness.read_text())


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


def test_corrupted_set_of_another_data_set_is_refused_before_evaluating(runs, tmp_path, capsys):
    run_dir = runs["relu"]
    images, labels = load_arrays("digits", "unused", train=False)
    other = write_corrupted_set(
        images[:4], labels[:4], tmp_path / "fashion_c", dataset="fashion_mnist", num_classes=10,
        corruptions=["brightness"], progress=False,
    )  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        main([str(run_dir), "--corruptions", f"generated:{other}", "--attacks", "none"])
    error = capsys.readouterr().err
    assert stopped.value.code == 2
    assert re.search(r"error: .*made from 'fashion_mnist'.*trained on 'digits'.*--dataset digits", error)
    assert not RunDir(run_dir).robustness.exists() and not RunDir(run_dir).robustness_dir.exists()


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


def test_baseline_is_the_relu_sibling(runs):
    assert find_baseline(runs["2arg"]) == runs["relu"].resolve()
    assert find_baseline(runs["relu"]) == runs["relu"].resolve()


@pytest.mark.parametrize("change", ["regenerated", "other_directory"])
def test_run_measured_against_itself_has_mce_one_after_its_set_changed(runs, tmp_path, change):
    """Issue 12 item 7: the ReLU control's saved accuracies on an older set were reused as its own baseline."""
    relu = runs["relu"]
    corrupted = generated_set(tmp_path / "digits_c")
    main([str(relu), "--corruptions", f"generated:{corrupted}", "--attacks", "none"])
    assert _saved(relu)["corruptions"]["mCE"] == 1.0
    if change == "regenerated":
        shutil.rmtree(corrupted)
        generated_set(corrupted, first=40, label_shift=3)
    else:
        corrupted = generated_set(tmp_path / "elsewhere", first=40, label_shift=3)
    report = main([str(relu), "--corruptions", f"generated:{corrupted}", "--attacks", "none"])
    assert report["corruptions"]["baseline"]["chosen"] == "the run itself"
    assert report["corruptions"]["mCE"] == 1.0
    assert report["corruptions"]["baseline"]["accuracy"] == report["corruptions"]["accuracy"]


def test_mnist_c_baseline_is_measured_again_on_another_root(tmp_path, monkeypatch):
    """Issue 12 item 7: with ``--corruption-root`` pointing elsewhere, the baseline's accuracies saved for the old
    root were reused because the set names match (mCE 36.9 seen for an MNIST-C run)."""
    old_root, new_root = mnist_c_set(tmp_path / "old", noise=0), mnist_c_set(tmp_path / "new", noise=120)
    mnist = str(digits_as_mnist(tmp_path / "data"))
    relu, two_arg = (
        untrained_run(tmp_path / "sweep", neuron, dataset="mnist", root=mnist) for neuron in ("relu", "2arg")
    )
    args = ["--corruptions", "mnist_c", "--attacks", "none"]
    main([str(relu), *args, "--corruption-root", str(old_root)])
    own = main([str(relu), *args, "--corruption-root", str(new_root)])["corruptions"]
    assert own["mCE"] == 1.0 and own["identity"]["set"]["directory"] == str((new_root / "mnist_c").resolve())

    calls = _count_calls(monkeypatch, "loader_accuracy")
    report = main([str(two_arg), *args, "--corruption-root", str(new_root)])["corruptions"]
    assert len(calls) == len(MNIST_C_CORRUPTIONS)  # the baseline's saved accuracies on the new root are reused
    assert report["baseline"]["accuracy"] == own["accuracy"]

    main([str(relu), *args, "--corruption-root", str(old_root)])  # the baseline's file now holds the old root
    calls.clear()
    report = main([str(two_arg), *args, "--corruption-root", str(new_root), "--fresh"])["corruptions"]
    assert len(calls) == 2 * len(MNIST_C_CORRUPTIONS)  # the run's and the baseline's, both measured again
    assert report["baseline"]["accuracy"] == own["accuracy"]


def test_baseline_is_measured_again_after_it_was_retrained(runs, tmp_path, monkeypatch):
    corrupted = generated_set(tmp_path / "digits_c")
    args = ["--corruptions", f"generated:{corrupted}", "--attacks", "none"]
    main([str(runs["relu"]), *args])
    calls = _count_calls(monkeypatch, "loader_accuracy")
    main([str(runs["2arg"]), *args])
    assert len(calls) == SETS

    checkpoint = runs["relu"] / "II_joint" / "checkpoints" / "best.ckpt"
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    calls.clear()
    report = main([str(runs["2arg"]), *args])
    assert len(calls) == SETS  # the run's own accuracies are reused, the baseline's measured again
    assert report["corruptions"]["identity"]["baseline"]["checkpoint"]["mtime_ns"] == checkpoint.stat().st_mtime_ns


def test_sections_merge_into_robustness_json(runs, tmp_path, monkeypatch, capsys):
    """Issue 12 item 7: running attacks after the corruption evaluation dropped the corruption results."""
    run_dir, corrupted = runs["relu"], generated_set(tmp_path / "digits_c")
    main([str(run_dir), "--corruptions", f"generated:{corrupted}", "--attacks", "fgsm", "--n", "20"])
    corruptions = _saved(run_dir)["corruptions"]

    main([str(run_dir), "--attacks", "linf_deepfool", "--n", "10"])
    saved = _saved(run_dir)
    assert saved["corruptions"] == corruptions
    assert {name: result["n"] for name, result in saved["adversarial"].items()} == {"fgsm": 20, "linf_deepfool": 10}

    attacks = _count_calls(monkeypatch, "evaluate_attacks")
    sets = _count_calls(monkeypatch, "loader_accuracy")
    main([str(run_dir), "--corruptions", f"generated:{corrupted}", "--attacks", "fgsm,linf_deepfool", "--n", "10"])
    assert len(attacks) == 1 and len(sets) == SETS  # linf_deepfool is done with these settings; fgsm and n=10 sets not
    saved = _saved(run_dir)
    assert saved["corruptions"]["n"] == 10 and saved["adversarial"]["fgsm"]["n"] == 10
    assert {name for name in os.listdir(RunDir(run_dir).robustness_dir) if name.endswith(".png")} == {
        CORRUPTION_FIGURE,
        ATTACK_FIGURE,
    }

    attacks.clear()
    sets.clear()
    main([str(run_dir), "--corruptions", f"generated:{corrupted}", "--attacks", "fgsm,linf_deepfool", "--n", "10"])
    assert attacks == [] and sets == []  # everything is done with these settings and this checkpoint

    checkpoint = run_dir / "II_joint" / "checkpoints" / "best.ckpt"
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    capsys.readouterr()  # retrained: nothing saved for the old checkpoint stays
    main([str(run_dir), "--attacks", "fgsm", "--n", "10"])
    assert "measured on another checkpoint" in capsys.readouterr().out
    saved = _saved(run_dir)
    assert "corruptions" not in saved and list(saved["adversarial"]) == ["fgsm"]
    assert not list(RunDir(run_dir).robustness_dir.glob("*.tmp")) and not list(run_dir.glob("*.tmp"))


def test_accuracies_only_without_baseline(runs, tmp_path):
    alone = tmp_path / "alone" / "mlp_digits_2arg" / "seed=0"
    shutil.copytree(runs["2arg"], alone)
    corrupted = generated_set(tmp_path / "digits_c")
    report = main([str(alone), "--corruptions", f"generated:{corrupted}", "--attacks", "none", "--n", "10"])
    assert report["corruptions"]["baseline"] is None and "mCE" not in report["corruptions"]
    assert "--baseline" in report["corruptions"]["note"]
    assert "adversarial" not in report


def test_recorded_accuracy_mismatch_fails(runs):
    result_path = RunDir(runs["relu"]).result
    result = json.loads(result_path.read_text())
    result["test_acc"] = result["test_acc"] + 0.2
    result_path.write_text(json.dumps(result))
    with pytest.raises(SanityCheckError, match="recorded by the run"):
        main([str(runs["relu"]), "--attacks", "none"])


def test_a_run_being_trained_or_evaluated_by_another_process_is_refused_naming_it(runs, tmp_path, capsys):
    run = tmp_path / "mlp_digits_relu" / "seed=0"
    shutil.copytree(runs["relu"], run)
    with FileLock(RunDir(run).lock, "test"), pytest.raises(SystemExit) as stopped:
        main([str(run), "--attacks", "fgsm", "--n", "10"])
    assert stopped.value.code == 2
    assert re.search(f"error: .* locked by pid {os.getpid()}.*training or evaluating", capsys.readouterr().err)
    assert "adversarial" in main([str(run), "--attacks", "fgsm", "--n", "10"]), "the lock is free again"
    assert not FileLock(RunDir(run).lock, "").held(), "the evaluation released the lock"


def test_bad_arguments_fail_before_loading(tmp_path, capsys):
    for arguments, message in ((["--attacks", "pgd"], "unknown attack"), (["--corruptions", "imagenet_c"], "spec")):
        with pytest.raises(SystemExit) as stopped:
            main([str(tmp_path), *arguments])
        assert stopped.value.code == 2 and message in capsys.readouterr().err


def _without_wall_times(report: dict) -> dict:
    report = {key: value for key, value in report.items() if key != "wall_time_s"}
    report["adversarial"] = {
        name: {key: value for key, value in result.items() if key != "wall_time_s"}
        for name, result in report["adversarial"].items()
    }
    return report


@pytest.mark.parametrize(
    ("interrupted_in", "fail_at", "finished_sets", "finished_attacks"),
    [("loader_accuracy", 4, 3, []), ("evaluate_attacks", 2, 2 * SETS, ["fgsm"])],
    ids=["in_corruptions", "in_attacks"],
)
def test_interrupted_evaluation_resumes_where_it_stopped(
    runs, tmp_path, monkeypatch, interrupted_in, fail_at, finished_sets, finished_attacks
):
    run_dir, corrupted = runs["relu"], generated_set(tmp_path / "digits_c")
    args = [str(run_dir), "--corruptions", f"generated:{corrupted}", "--attacks", "fgsm,linf_deepfool", "--n", "20"]
    args += ["--baseline", str(runs["2arg"])]
    main(args)
    uninterrupted = _saved(run_dir)
    RunDir(run_dir).robustness.unlink()

    with monkeypatch.context() as patch:
        _count_calls(patch, interrupted_in, fail_at=fail_at)
        with pytest.raises(Preempted):
            main(args)
    partial_file = RunDir(run_dir).robustness_partial
    sections = json.loads(partial_file.read_text())["sections"]
    units = {name: section["units"] for name, section in sections.items()}
    assert sum(len(units.get(name, {})) for name in ("corrupted_sets", "baseline_corrupted_sets")) == finished_sets
    assert [name.removeprefix("attack/") for name, done in units.items() if name.startswith("attack/") and done] == (
        finished_attacks
    )
    assert not RunDir(run_dir).robustness.exists()

    set_calls = _count_calls(monkeypatch, "loader_accuracy")
    attack_calls = _count_calls(monkeypatch, "evaluate_attacks")
    main(args)
    assert len(set_calls) == 2 * SETS - finished_sets
    assert len(attack_calls) == 2 - len(finished_attacks)
    assert _without_wall_times(_saved(run_dir)) == _without_wall_times(uninterrupted)
    assert not partial_file.exists()


IGNORED_BECAUSE = {
    "n": "(changed: set)",
    "regenerated": "(changed: set)",
    "checkpoint": "(changed: checkpoint)",
    "fresh": "a fresh start was asked for",
}


@pytest.mark.parametrize("change", list(IGNORED_BECAUSE))
def test_partial_results_of_another_evaluation_are_ignored(runs, tmp_path, monkeypatch, capsys, change):
    run_dir, corrupted = runs["2arg"], generated_set(tmp_path / "digits_c")
    args = [str(run_dir), "--corruptions", f"generated:{corrupted}", "--attacks", "none", "--n", "20"]
    with monkeypatch.context() as patch:
        _count_calls(patch, "loader_accuracy", fail_at=SETS + 1)
        with pytest.raises(Preempted):
            main(args)
    assert (RunDir(run_dir).robustness_partial).exists()

    if change == "n":
        args[-1] = "10"
    elif change == "regenerated":
        shutil.rmtree(corrupted)
        generated_set(corrupted, first=40)
    elif change == "checkpoint":
        checkpoint = run_dir / json.loads(RunDir(run_dir).result.read_text())["best_checkpoint"]
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


def test_each_attack_starts_from_the_seed(runs, monkeypatch):
    """So that a resumed evaluation's attacks are those of an uninterrupted one: none depends on what ran before."""
    first_draws = []
    real = evaluate.evaluate_attacks

    def drawing(*args, **kwargs):
        first_draws.append(torch.rand(1).item())
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_attacks", drawing)
    for seed in ("0", "1"):
        main([str(runs["relu"]), "--attacks", "fgsm,linf_deepfool", "--n", "10", "--seed", seed])
    torch.manual_seed(0)
    from_seed_0 = torch.rand(1).item()
    assert first_draws[:2] == [from_seed_0, from_seed_0]
    assert first_draws[2] == first_draws[3] != from_seed_0


class SignNoise:
    """An attack engine defined outside the package: every pixel moves by eps in a random direction (fixed per
    pixel by ``seed``); a point broken at an eps (the moved image misclassified) stays broken at larger ones."""

    defaults: ClassVar[dict] = {"seed": 0}

    def __init__(self, spec, seed: int = 0) -> None:
        self.seed = seed

    def run(self, model, images, labels, epsilons):
        signs = torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(self.seed)) * 2.0 - 1
        found, broken = images.clone(), predict(model, images) != labels
        adversarials, successes = [], []
        for eps in epsilons:  # ascending
            moved = (images + eps * signs.to(images.device)).clamp(0, 1)
            newly = ~broken & (predict(model, moved) != labels)
            found[newly], broken = moved[newly], broken | newly
            adversarials.append(found.clone())
            successes.append(broken)
        return torch.stack(adversarials), torch.stack(successes)


def test_an_attack_registered_outside_the_package_is_evaluated_and_accepted_by_a_sweep(runs, attack_registry):
    from lit_dendrite.robustness.attacks import AttackSpec, default_attacks, register_attack, register_engine
    from lit_dendrite.sweeps.evaluation import EvaluateSpecError, check_evaluate, parse_evaluate

    register_engine("sign_noise")(SignNoise)
    spec = register_attack("linf_sign_noise", AttackSpec("linf", "sign_noise", "random signs", {"seed": 3}))
    assert "linf_sign_noise" in default_attacks()
    with pytest.raises(ValueError, match="'linf_sign_noise' is already registered"):
        register_attack("linf_sign_noise", AttackSpec("l2", "sign_noise", "random signs"))
    with pytest.raises(ValueError, match="unknown engine 'noise'"):
        register_attack("other", AttackSpec("linf", "noise", "random signs"))

    argv = [str(runs["relu"]), "--attacks", "linf_sign_noise", "--n", "20"]
    result = main(argv)["adversarial"]["linf_sign_noise"]
    assert result["attack"] == {"name": "linf_sign_noise", "norm": "linf", "engine": "sign_noise",
                                "method": spec.method, "seed": 3}  # fmt: skip
    assert result["n"] == 20 and len(result["robust_accuracy"]) == len(result["epsilons"]) > 2
    assert _saved(runs["relu"])["adversarial"]["linf_sign_noise"] == result
    assert main(argv)["adversarial"]["linf_sign_noise"] == result  # the same identity: reused, not measured again

    section = parse_evaluate("sweep.yaml", {"attacks": {"linf_sign_noise": {"seed": 4, "n": 20}}})
    check_evaluate(section)  # accepted: raises nothing
    with pytest.raises(EvaluateSpecError, match=r"evaluate.attacks.linf_sign_noise: .*does not accept"):
        check_evaluate(parse_evaluate("sweep.yaml", {"attacks": {"linf_sign_noise": {"steps": 5}}}))


@pytest.mark.slow
def test_one_command_writes_report_and_plots(tmp_path):
    """The whole evaluation of a trained run against its trained ReLU control."""
    sweep = tmp_path / "sweep"
    trained = {neuron: _train(sweep, neuron) for neuron in ("2arg", "relu")}
    corrupted = generated_set(tmp_path / "digits_c")
    run_dir = trained["2arg"]
    report = main([str(run_dir), "--corruptions", f"generated:{corrupted}", "--attacks", "fgsm,linf_pgd", "--n", "40"])
    saved = _saved(run_dir)
    assert saved["clean"]["accuracy"] == pytest.approx(saved["clean"]["recorded_test_acc"], abs=0.005)
    corruptions = saved["corruptions"]
    assert set(corruptions["accuracy"]) == set(CORRUPTIONS)
    assert corruptions["baseline"]["run_dir"] == str(trained["relu"].resolve())
    assert corruptions["mCE"] == pytest.approx(report["corruptions"]["mCE"]) and corruptions["mCE"] > 0
    for name in ("fgsm", "linf_pgd"):
        result = saved["adversarial"][name]
        assert result["n"] == 40 and result["epsilons"][-1] == pytest.approx(0.3)
        assert result["reported"]["epsilon"] == pytest.approx(0.3)
    for png in (CORRUPTION_FIGURE, ATTACK_FIGURE):
        assert (RunDir(run_dir).robustness_dir / png).stat().st_size > 1000
    assert list(RunDir(run_dir).robustness_dir.glob("events.out.tfevents.*"))


class ForgetsAtLargestEps:
    """An attack engine too weak at its largest epsilon: FGSM, except that at the largest eps it reports no success
    on the examples the model classifies correctly, so its raw robust accuracy rises there."""

    defaults: ClassVar[dict] = {}

    def __init__(self, spec) -> None:
        from lit_dendrite.robustness.attacks import build_attack

        self.fgsm = build_attack("fgsm").engine

    def run(self, model, images, labels, epsilons):
        adversarials, success = self.fgsm.run(model, images, labels, epsilons)
        success = torch.as_tensor(success).clone()
        success[-1] &= predict(model, images) != labels
        return adversarials, success


def register_weak_attack() -> None:
    """Register ``linf_weak``, an attack on :class:`ForgetsAtLargestEps` (with the ``attack_registry`` fixture)."""
    from lit_dendrite.robustness.attacks import AttackSpec, register_attack, register_engine

    register_engine("forgets_at_largest_eps")(ForgetsAtLargestEps)
    register_attack("linf_weak", AttackSpec("linf", "forgets_at_largest_eps", "FGSM forgetting at the largest eps"))


def test_an_attack_too_weak_on_the_model_is_recorded_as_refused_and_the_others_still_run(
    runs, attack_registry, monkeypatch, capsys
):
    from lit_dendrite.analysis.robustness_report import robustness_rows
    from lit_dendrite.runs import RunRecord
    from lit_dendrite.sweeps.evaluation import refused_attacks

    register_weak_attack()
    argv = [str(runs["relu"]), "--attacks", "linf_weak,fgsm"]
    report = main(argv)["adversarial"]
    assert "rises" in report["linf_weak"]["refused"] and "raise its steps or restarts" in report["linf_weak"]["refused"]
    assert "robust_accuracy" not in report["linf_weak"], "a refused attack must not report numbers"
    assert report["fgsm"]["robust_accuracy"][-1] < report["fgsm"]["robust_accuracy"][0], "the next attack still ran"
    assert "linf_weak (n=360): refused: raw robust accuracy rises" in capsys.readouterr().out
    assert refused_attacks(runs["relu"]) == {"linf_weak": report["linf_weak"]["refused"]}

    attacks = _count_calls(monkeypatch, "evaluate_attacks")
    assert main(argv)["adversarial"]["linf_weak"] == report["linf_weak"]
    assert attacks == [], "the refusal is the attack's result for this identity: it is not measured again"

    problems: list[str] = []
    adversarial, _ = robustness_rows([RunRecord.read(runs["relu"], name="mlp_digits_relu/seed=0")], problems)
    assert set(adversarial["attack"]) == {"fgsm"}
    assert problems == [
        f"`mlp_digits_relu/seed=0`: linf_weak refused, left out of its tables: {report['linf_weak']['refused']}"
    ]
