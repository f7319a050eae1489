"""Evaluation inside the sweep: the ``evaluate:`` section of a sweep file, its checks, the evaluation each job
runs after training (through ``--cluster local`` like a workstation), ``sweep.py status`` and
``sweep.py evaluate``, and an evaluation preempted halfway that its requeued job finishes."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from helpers import load_launcher

from lit_dendrite.data.corrupt import write_corrupted_set
from lit_dendrite.data.datasets import load_arrays
from lit_dendrite.runs import RunDir
from lit_dendrite.sweeps.cluster import ClusterConfig
from lit_dendrite.sweeps.evaluation import (
    evaluate_trained_run,
    evaluation_calls,
    evaluation_state,
    parse_evaluate,
    record_evaluation_error,
)
from lit_dendrite.sweeps.launch import submit_sweep
from lit_dendrite.sweeps.spec import SweepError, load_sweep
from lit_dendrite.sweeps.state import format_status

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "configs" / "experiment"
TINY = {"trainer.max_epochs": 1, "protocol.pretrain_epochs": 1, "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False}  # fmt: skip


def test_evaluate_section_per_data_set() -> None:
    evaluate = parse_evaluate(
        "sweep.yaml",
        {
            "n": 1000,
            "attacks": {"linf_pgd": {}, "autoattack_linf": {"epsilons": [0.3], "n": 200}, "l2_pgd": {"steps": 100}},
            "corruptions": {"spec": "mnist_c", "root": "data"},
            "datasets": {"cifar10": {"attacks": {"autoattack_linf": {"epsilons": ["8/255"]}},
                                     "corruptions": "cifar10_c"}},
        },
    )  # fmt: skip
    mnist = evaluation_calls(evaluate, "mnist")
    assert mnist[0] == {"corruptions": "mnist_c", "corruption_root": "data", "attacks": [], "n": 1000,
                        "batch_size": 500, "seed": 0}  # fmt: skip
    assert [(call["attacks"], call["n"]) for call in mnist[1:]] == [(["linf_pgd", "l2_pgd"], 1000),
                                                                    (["autoattack_linf"], 200)]  # fmt: skip
    assert mnist[1]["attack_overrides"] == {"l2_pgd": {"steps": 100}} and mnist[1]["epsilons"] == {}
    assert mnist[2]["epsilons"] == {"autoattack_linf": [0.3]}
    cifar = evaluation_calls(evaluate, "cifar10")
    assert cifar[0]["corruptions"] == "cifar10_c" and cifar[1]["epsilons"] == {"autoattack_linf": [8 / 255]}
    assert evaluation_calls(parse_evaluate("s", {"datasets": {"cifar10": {"attacks": ["fgsm"]}}}), "mnist") == []


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"attack": {"fgsm": {}}}, r"unknown key\(s\) \['attack'\]"),
        ({"attacks": {"fgsm": {"epsilons": ["8/0"]}}}, "neither a number nor a fraction"),
        ({"attacks": {"fgsm": {"n": 0}}}, r"evaluate.attacks.fgsm.n: must be a positive integer"),
        ({"corruptions": {"spec": "mnist_c", "roots": "data"}}, r"unknown key\(s\) \['roots'\]"),
        ({"batch_size": 0, "attacks": ["fgsm"]}, "batch_size: must be a positive integer"),
        ({"n": 100}, "nothing to evaluate"),
    ],
)
def test_bad_evaluate_section_is_named(tmp_path: Path, section: dict, message: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"experiments": [str(EXPERIMENTS / "mlp_digits_relu.yaml")], "seeds": [1],
                                    "evaluate": section}))  # fmt: skip
    with pytest.raises(SweepError, match=message):
        load_sweep(path)


def test_unknown_attack_or_missing_corrupted_set_stops_the_sweep_before_submitting(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = {"corruptions": {"spec": "mnist_c", "root": str(tmp_path)}}
    for section, message in (
        ({"attacks": ["pgd"]}, r"evaluate.attacks.pgd: unknown attack 'pgd'.*nothing was submitted"),
        ({"attacks": {"fgsm": {"stepz": 3}}}, r"evaluate.attacks.fgsm: .*stepz"),
        ({"datasets": {"cifar": {"attacks": ["fgsm"]}}}, r"evaluate.datasets.cifar: unknown dataset 'cifar'"),
        ({"corruptions": "cifar10c"}, r"evaluate.corruptions: unknown corruption spec 'cifar10c'.*nothing was"),
        (
            missing,
            rf"missing where the jobs will read them; nothing was submitted:\n  mnist_c .* under {tmp_path}: "
            r"missing\nfetch them first .*: python launch/sweep.py fetch-data --sweep ",
        ),
    ):
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump({"experiments": [str(EXPERIMENTS / "mlp_digits_relu.yaml")], "seeds": [1],
                                        "evaluate": section}))  # fmt: skip
        with pytest.raises(SweepError, match=message):
            submit_sweep(load_sweep(path), "debug", ClusterConfig(), tmp_path / "runs", echo=lambda _: None)
        assert not (tmp_path / "runs").exists()
    # a dry run on a machine without the corrupted sets (they may live only on the cluster) reports them instead
    submission = submit_sweep(load_sweep(path), "slurm", ClusterConfig(), tmp_path / "runs", dry_run=True)
    assert submission.submitted == ["mlp_digits_relu/seed=1"]
    out = capsys.readouterr().out
    assert "Data sets the jobs read: 1 of 2 missing" in out and 'each job then evaluates its run: {"corruptions"' in out
    assert re.search(rf"\n  mnist_c +corrupted +1 runs  {tmp_path}  missing\n", out)


def digits_c(directory: Path) -> Path:
    images, labels = load_arrays("digits", "unused", train=False)
    return write_corrupted_set(images[:40], labels[:40], directory, dataset="digits", num_classes=10,
                               corruptions=["gaussian_noise", "brightness"], progress=False)  # fmt: skip


def write_sweep(path: Path, experiments: list[str], evaluate: dict) -> Path:
    spec = {"experiments": [str(EXPERIMENTS / f"{e}.yaml") for e in experiments], "seeds": [1], "overrides": TINY,
            "evaluate": evaluate}  # fmt: skip
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_sweep_evaluates_its_runs_and_reports_robustness(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corrupted = digits_c(tmp_path / "digits_c")
    evaluate = {"n": 40, "attacks": {"fgsm": {}}, "corruptions": {"spec": f"generated:{corrupted}"}}
    sweep_file = write_sweep(
        tmp_path / "tiny.yaml", ["mlp_digits_relu", "mlp_digits_2arg"], evaluate
    )  # the control first
    launcher, out = load_launcher(), tmp_path / "runs"
    submit = ["--sweep", str(sweep_file), "--out", str(out), "--max-parallel", "1"]
    assert launcher.main([*submit, "--cluster", "local", "--wait"]) == 0
    sweep_dir = out / "tiny"
    capsys.readouterr()
    assert launcher.main(["status", str(sweep_dir)]) == 0
    status = capsys.readouterr().out
    assert "done 2, failed 0" in status and "evaluation: done 2, running 0, to do 0, failed 0" in status, status
    two_arg = json.loads(RunDir(sweep_dir / "mlp_digits_2arg" / "seed=1").robustness.read_text())
    assert two_arg["corruptions"]["baseline"]["chosen"] == "sweep ReLU control" and two_arg["corruptions"]["mCE"] > 0
    assert two_arg["adversarial"]["fgsm"]["n"] == 40

    assert launcher.main(["collect", str(sweep_dir)]) == 0
    report = (sweep_dir / "report.md").read_text()
    assert "## Robustness" in report and "mCE" in report and "fgsm" in report

    capsys.readouterr()
    assert launcher.main([*submit, "--cluster", "local"]) == 0  # the same cluster: the same trainer.devices
    assert "0 to submit" in capsys.readouterr().out  # trained and evaluated with these settings

    relu_dir = RunDir(sweep_dir / "mlp_digits_relu" / "seed=1")
    fgsm = json.loads(relu_dir.robustness.read_text())["adversarial"]["fgsm"]
    more = {**evaluate, "attacks": {"fgsm": {}, "linf_deepfool": {"steps": 10}}}
    new_settings = write_sweep(tmp_path / "more.yaml", ["mlp_digits_relu", "mlp_digits_2arg"], more)
    argv = ["evaluate", str(sweep_dir), "--sweep", str(new_settings), "--cluster", "debug"]
    assert launcher.main(argv) == 0
    assert "2 runs, 2 to evaluate" in capsys.readouterr().out
    relu = json.loads(relu_dir.robustness.read_text())
    assert relu["adversarial"]["linf_deepfool"]["attack"]["steps"] == 10
    assert relu["adversarial"]["fgsm"] == fgsm  # done with these settings: kept, not measured again
    assert launcher.main(["status", str(sweep_dir)]) == 0
    assert "evaluation: done 2, running 0, to do 0, failed 0" in capsys.readouterr().out
    assert launcher.main(argv) == 0
    assert "2 runs, 0 to evaluate" in capsys.readouterr().out


@pytest.mark.slow
def test_preempted_evaluation_resumes_without_redoing_finished_attacks(tmp_path: Path) -> None:
    """A preemption (the signal submitit turns into checkpoint-and-requeue) lands while the second attack runs;
    the requeued job keeps the first attack's result and finishes the second."""
    evaluate = {"n": 20, "attacks": {"fgsm": {}, "linf_pgd": {"steps": 150}}}
    sweep_file = write_sweep(tmp_path / "preempt.yaml", ["mlp_digits_relu"], evaluate)
    submission = submit_sweep(load_sweep(sweep_file), "local", ClusterConfig(), tmp_path / "runs", echo=print)
    run_dir = submission.sweep_dir / "mlp_digits_relu" / "seed=1"
    partial = RunDir(run_dir).robustness_partial

    def saved_fgsm() -> dict | None:
        try:
            return json.loads(partial.read_text())["sections"]["attack/fgsm"]["units"].get("result")
        except (OSError, ValueError, KeyError):
            return None

    deadline = time.monotonic() + 300
    while saved_fgsm() is None:
        assert not submission.jobs[0].done(), "the job ended before its first attack was saved"
        assert time.monotonic() < deadline, "no attack finished within 300 s"
        time.sleep(0.2)
    fgsm = saved_fgsm()
    assert not RunDir(run_dir).robustness.exists()
    submission.jobs[0]._interrupt()  # what Slurm's preemption signal does to a job
    deadline = time.monotonic() + 600
    while not submission.jobs[0].done():
        assert time.monotonic() < deadline, "the requeued job did not finish within 600 s"
        time.sleep(1)
    log = "\n".join(path.read_text(errors="replace") for path in (submission.sweep_dir / "logs").rglob("*_log.*"))
    assert "resuming attack/fgsm" in log, log[-3000:]
    saved = json.loads(RunDir(run_dir).robustness.read_text())
    assert saved["adversarial"]["fgsm"]["wall_time_s"] == fgsm["wall_time_s"]  # reused, not measured again
    assert saved["adversarial"]["linf_pgd"]["attack"]["steps"] == 150
    assert not partial.exists()


def test_run_evaluated_before_its_control_gets_its_mce_later_without_measuring_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_evaluate import SETS, _count_calls, generated_set, untrained_run

    corrupted = generated_set(tmp_path / "digits_c")
    evaluate = parse_evaluate("sweep.yaml", {"corruptions": f"generated:{corrupted}", "attacks": ["fgsm"], "n": 20})
    two_arg = untrained_run(tmp_path / "sweep", "2arg")
    assert evaluation_state(two_arg, evaluate) == "0/2"
    evaluate_trained_run(two_arg, evaluate)
    assert evaluation_state(two_arg, evaluate) == "done"
    assert "mCE" not in json.loads(RunDir(two_arg).robustness.read_text())["corruptions"]

    untrained_run(tmp_path / "sweep", "relu")  # the control finishes training
    assert evaluation_state(two_arg, evaluate) == "1/2"
    sets, attacks = _count_calls(monkeypatch, "loader_accuracy"), _count_calls(monkeypatch, "evaluate_attacks")
    evaluate_trained_run(two_arg, evaluate)
    assert len(sets) == SETS and attacks == []  # only the control's sets are measured
    assert json.loads(RunDir(two_arg).robustness.read_text())["corruptions"]["mCE"] > 0
    assert evaluation_state(two_arg, evaluate) == "done"


def _status_of_one_run(sweep_dir: Path, evaluate: dict) -> str:
    """``sweep.py status`` of a sweep directory holding the one run ``mlp_digits_relu/seed=0``."""
    manifest = {"sweep": "s", "sweep_file": "s.yaml", "evaluate": evaluate,
                "runs": [{"dir": "mlp_digits_relu/seed=0", "axes": {}, "args": []}]}  # fmt: skip
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest))
    return format_status(sweep_dir)


def test_failed_evaluation_is_shown_by_status(tmp_path: Path) -> None:
    from test_evaluate import untrained_run

    run_dir = untrained_run(tmp_path / "sweep", "relu")
    evaluate = parse_evaluate("sweep.yaml", {"attacks": ["fgsm"]})
    record_evaluation_error(run_dir, "Traceback ...\nSanityCheckError: robust accuracy rises", "logs/1_0_log.err")
    assert evaluation_state(run_dir, evaluate) == "failed"
    status = _status_of_one_run(tmp_path / "sweep", evaluate)
    assert "evaluation error: SanityCheckError: robust accuracy rises" in status
    assert "evaluation: done 0, running 0, to do 0, failed 1" in status
    evaluate_trained_run(run_dir, evaluate)
    assert evaluation_state(run_dir, evaluate) == "done"


def test_an_attack_refused_on_a_run_leaves_its_evaluation_done_and_is_shown_by_status(
    tmp_path: Path, attack_registry: dict
) -> None:
    from test_evaluate import register_weak_attack, untrained_run

    register_weak_attack()
    run_dir = untrained_run(tmp_path / "sweep", "relu")
    evaluate = parse_evaluate("sweep.yaml", {"attacks": ["linf_weak", "fgsm"]})
    evaluate_trained_run(run_dir, evaluate)  # a job: a refusal is no error
    assert evaluation_state(run_dir, evaluate) == "done"
    status = _status_of_one_run(tmp_path / "sweep", evaluate)
    assert "    refused: linf_weak: raw robust accuracy rises" in status
    assert "evaluation: done 1, running 0, to do 0, failed 0" in status


def test_status_tells_a_run_being_evaluated_from_one_waiting_for_its_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_evaluate import untrained_run

    from lit_dendrite.runs import FileLock
    from lit_dendrite.sweeps import state

    runs = [untrained_run(tmp_path / "sweep", neuron) for neuron in ("relu", "2arg")]
    names = [str(run.relative_to(tmp_path / "sweep")) for run in runs]
    evaluate = parse_evaluate("sweep.yaml", {"attacks": ["fgsm"]})
    manifest = {"sweep": "s", "sweep_file": "s.yaml", "evaluate": evaluate,
                "runs": [{"dir": name, "axes": {}, "args": []} for name in names]}  # fmt: skip
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps(manifest))
    state.record_jobs(tmp_path / "sweep", "local", {name: ["7"] for name in names})
    monkeypatch.setattr(state, "job_states", lambda records: dict.fromkeys(records, "RUNNING"))
    with FileLock(RunDir(runs[0]).lock, "evaluating"):  # the job evaluates the first run; the second waits its turn
        status = format_status(tmp_path / "sweep")
    lines = {name: line for name in names for line in status.splitlines() if line.startswith(name)}
    assert "0/1, running" in lines[names[0]] and "running" not in lines[names[1]].replace("7 (running)", ""), status
    assert "evaluation: done 0, running 1, to do 1, failed 0" in status
    assert "evaluation: done 0, running 0, to do 2, failed 0" in format_status(tmp_path / "sweep")  # lock released
