"""``launch/sweep.py preflight``: one job measures every kind of run of a sweep on the node (debug: in this process;
local: a background process), the dry run prices the sweep from it and names its source, and the submission leaves
out the kinds whose preflight failed (missing data, a fused kernel failing its self-check, a peak beyond the memory:
each simulated here) unless --force; without a preflight the plan says once how to run one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from helpers import load_launcher

from lit_dendrite.nn import inner_check, native
from lit_dendrite.nn.inner_check import PATHS
from lit_dendrite.sweeps.cluster import ClusterConfig, load_cluster_config
from lit_dendrite.sweeps.launch import submit_sweep
from lit_dendrite.sweeps.preflight import PREFLIGHT, read_preflight
from lit_dendrite.sweeps.preflight_job import PreflightJob
from lit_dendrite.sweeps.spec import load_sweep

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "configs" / "experiment"
TINY = {
    "trainer.max_epochs": 2,
    "protocol.pretrain_epochs": 1,
    "data.batch_size": 32,
    "model.net.init_args.widths": [8, 8],
    "trainer.enable_progress_bar": False,
}
EVALUATE = {"n": 16, "batch_size": 16, "attacks": {"linf_pgd": {"steps": 2}}}
KINDS = {
    "DendriticMLP/2arg/digits/32-true/attacks=linf_pgd": ["I_pretrain", "II_joint", "III_frozen", "inference"],
    "DendriticMLP/relu/digits/32-true/attacks=linf_pgd": ["II_joint", "inference"],
}


def write_sweep(directory: Path, experiments: list[str], overrides: dict | None = None) -> Path:
    path = directory / "tiny.yaml"
    spec = {
        "name": "tiny",
        "experiments": [str(EXPERIMENTS / f"{name}.yaml") for name in experiments],
        "seeds": [1, 2],
        "overrides": {**TINY, **(overrides or {})},
        "evaluate": EVALUATE,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def preflight(sweep: Path, out: Path, cluster: str, *extra: str) -> int:
    return load_launcher().main(["preflight", "--sweep", str(sweep), "--cluster", cluster, "--out", str(out), *extra])


def dry_run(sweep: Path, out: Path, cluster: str = "local", **options) -> tuple[list[str], object]:
    lines: list[str] = []
    config = load_cluster_config(REPO / "configs" / "cluster" / "local.yaml")
    submission = submit_sweep(load_sweep(sweep), cluster, config, out, dry_run=True, echo=lines.append, **options)
    return lines, submission


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A debug preflight of a tiny sweep of two kinds (2-arg and ReLU MLPs on digits, two seeds each)."""
    directory = tmp_path_factory.mktemp("preflight")
    sweep = write_sweep(directory, ["mlp_digits_2arg", "mlp_digits_relu"])
    assert preflight(sweep, directory / "runs", "debug") == 0
    return sweep, directory / "runs", json.loads((directory / "runs" / "tiny" / PREFLIGHT).read_text())


def check_every_kind_timed_on_cpu(result: dict) -> None:
    assert result["device"]["type"] == "cpu" and "ru_maxrss" in result["device"]["memory_measure"]
    assert result["versions"]["torch"] and result["finished"]
    assert set(result["kinds"]) == set(KINDS)
    for key, sessions in KINDS.items():
        kind = result["kinds"][key]
        assert kind["failure"] is None and kind["runs"] == 2
        assert set(kind["sessions"]) == set(sessions)
        assert all(timing["step_s"] > 0 for timing in kind["sessions"].values())
        assert kind["attacks"]["linf_pgd"]["gradient_s"] > 0 and kind["attacks"]["linf_pgd"]["batch"] == 16
        assert kind["peak_memory_bytes"] > 0
        assert kind["data"]["clean"]["batches"] == 3 and kind["data"]["clean"]["root"] == str(REPO / "data")
    assert result["kinds"][next(iter(KINDS))]["paths"]["II_joint"]["used"]  # the inner net's path is recorded


def test_a_debug_preflight_times_every_kind_of_run_on_cpu(measured) -> None:
    check_every_kind_timed_on_cpu(measured[2])


def test_a_local_preflight_runs_in_a_background_job(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = write_sweep(tmp_path, ["mlp_digits_2arg", "mlp_digits_relu"])
    assert preflight(sweep, tmp_path / "runs", "local") == 0
    result = json.loads((tmp_path / "runs" / "tiny" / PREFLIGHT).read_text())
    check_every_kind_timed_on_cpu(result)
    printed = capsys.readouterr().out
    assert f"measured by preflight job {result['job_id']} on cpu" in printed and result["job_id"].isdigit()
    assert "II_joint" in printed and "ok" in printed


def test_the_dry_run_prices_the_sweep_from_the_preflight_and_names_it(measured, tmp_path: Path) -> None:
    sweep, out, result = measured
    lines, _ = dry_run(sweep, out)
    source = f"measured by preflight job {result['job_id']} on cpu ({result['host']}) at {result['finished']}"
    assert source in lines[1] and "GPU-hours for all 4 runs" in lines[1] and "ASSUMING" not in lines[1]
    header = next(line for line in lines if "experiment" in line and "runs" in line)
    assert "h per run" in header and "requeues" in header
    row = next(line for line in lines if line.strip().startswith("mlp_digits_2arg"))
    assert row.split()[-1] == "2/2"  # both runs priced from the measurement
    assert any(line.startswith("Preflight (") and "2 of 2 kinds of run passed" in line for line in lines)
    assert any("runs priced from preflight.json" in line for line in lines)
    # without a preflight: said once, with the command
    elsewhere, _ = dry_run(sweep, tmp_path / "runs")
    said = [line for line in elsewhere if "No preflight of this sweep was run" in line]
    assert len(said) == 1
    assert f"python launch/sweep.py preflight --sweep {sweep} --cluster local" in "\n".join(elsewhere)
    assert any("ASSUMING a GPU" in line for line in elsewhere)


@pytest.mark.skipif(not native.native_available(), reason="needs the native kernel (a C compiler)")
def test_failed_kinds_are_refused_with_their_reason_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Three kinds, three simulated failures: MNIST missing under its root, the fused kernel failing to compile
    (the 2-arg net), and a job memory of 10 MB (the ReLU net, whose check comes after the self-check's)."""

    def failing_compile(*args, **kwargs):
        raise RuntimeError("simulated: PTX compilation failed")

    inner_check.self_check.cache_clear()
    PATHS.warned.clear()
    monkeypatch.setattr(native, "inner_forward", failing_compile)
    sweep = write_sweep(
        tmp_path,
        ["mlp_digits_2arg", "mlp_digits_relu", "mlp_mnist_relu"],
        {"data.root": str(tmp_path / "nodata")},
    )
    cluster = tmp_path / "small.yaml"
    cluster.write_text(yaml.safe_dump({"mem_gb": 0.01}))
    try:
        assert preflight(sweep, tmp_path / "runs", "debug", "--cluster-config", str(cluster)) == 1
    finally:
        inner_check.self_check.cache_clear()
    printed = capsys.readouterr().out
    failures = read_preflight(tmp_path / "runs" / "tiny").failures()
    assert failures.keys() == {*KINDS, "DendriticMLP/relu/mnist/32-true/attacks=linf_pgd"}
    assert failures["DendriticMLP/relu/mnist/32-true/attacks=linf_pgd"].startswith("data missing: ")
    assert str(tmp_path / "nodata") in failures["DendriticMLP/relu/mnist/32-true/attacks=linf_pgd"]
    self_check = failures["DendriticMLP/2arg/digits/32-true/attacks=linf_pgd"]
    assert (
        "failed its self-check on cpu (cpu float32 arity 2 widths [64, 64]): its kernel failed to compile or run "
        "on cpu (RuntimeError: simulated" in self_check
    )
    memory = failures["DendriticMLP/relu/digits/32-true/attacks=linf_pgd"]
    assert memory.startswith("does not fit in memory: peak") and "the cluster config's mem_gb (0.01)" in memory
    assert printed.count("FAILED: ") == 3
    # the submission lists the three kinds with their reasons and submits none of their runs
    lines, submission = dry_run(sweep, tmp_path / "runs", verbose=True)
    text = "\n".join(lines)
    for key, why in failures.items():
        assert f"FAILED {key}: {why}" in text
    assert "their runs are not submitted" in text and submission.submitted == []
    assert "skip (preflight failed: does not fit in memory" in text
    lines, submission = dry_run(sweep, tmp_path / "runs", force=True)
    assert len(submission.submitted) == 6 and "SUBMITTED all the same (--force)" in "\n".join(lines)


def test_data_the_login_node_sees_but_the_compute_node_does_not_is_named_with_both_paths(tmp_path: Path) -> None:
    """The job reads the root as the run does on its node; the login node saw the set at its own path."""
    args = [
        "--config", str(EXPERIMENTS / "mlp_mnist_relu.yaml"), "--data.root", str(tmp_path / "node" / "data"),
        "--run_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    seen = {"name": "mnist", "root": "/login/scratch/data", "present": True}
    kinds = {"k": {"experiment": "mlp_mnist_relu", "runs": 1, "representative": "r", "args": args, "data": [seen],
                   "login_host": "login1"}}  # fmt: skip
    result = PreflightJob(tmp_path, kinds, None, ClusterConfig())()
    failure = result["kinds"]["k"]["failure"]
    assert "data unreadable on compute node" in failure and str(tmp_path / "node" / "data") in failure
    assert "The login node login1 sees mnist under /login/scratch/data" in failure
    assert read_preflight(tmp_path).failures() == {"k": failure}  # written atomically as the job went


def test_measured_hours_and_requeues_follow_the_preflight_and_time_min(measured) -> None:
    from lit_dendrite.sweeps.cost import BENCHMARK_RESULTS, RunShape, estimate, load_step_times

    _, out, result = measured
    kind = result["kinds"]["DendriticMLP/2arg/digits/32-true/attacks=linf_pgd"]
    shape = RunShape("mlp_digits_2arg", "digits", "DendriticMLP", "2arg", 28, 32, 300, 200, True, pretrain_epochs=50)
    settings = {"n": 16, "batch_size": 16, "attacks": {"linf_pgd": {"steps": 2}}, "corruptions": None}
    times, preflight = load_step_times(BENCHMARK_RESULTS), read_preflight(out / "tiny")
    found = estimate([shape], times, {"digits": settings}, None, preflight, time_min=1).rows[0]
    s = kind["sessions"]
    train, val = 1437 - 240, 240  # digits' training split and its validation sixth
    inference = val * s["inference"]["step_s"] / s["inference"]["batch"]
    epoch = {
        name: -(-train // 32) * max(s[name]["step_s"] / s[name]["batch"] * 32, 0.003) + inference
        for name in ("II_joint", "III_frozen")
    }
    pretrain = 50 * s["I_pretrain"]["steps_per_epoch"] * max(s["I_pretrain"]["step_s"], 0.003)
    assert found["train_h"] == pytest.approx((300 * epoch["II_joint"] + 200 * epoch["III_frozen"] + pretrain) / 3600)
    attack = 16 * 2 * kind["attacks"]["linf_pgd"]["gradient_s"] / kind["attacks"]["linf_pgd"]["batch"]
    assert found["evaluate_h"] == pytest.approx(attack / 3600)
    assert found["measured"] == 1 and found["requeues"] == math.ceil(found["run_h"] * 60) - 1 > 0
