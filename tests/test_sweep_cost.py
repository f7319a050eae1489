"""The paper sweep's dry run: its runs and a GPU-hour estimate from the benchmark's step times, with assumptions."""

import json
import math
import re
from pathlib import Path

import pytest
from helpers import load_launcher

from lit_dendrite.data.datasets import data_files
from lit_dendrite.nn.neurons import NEURONS
from lit_dendrite.sweeps.cost import (
    MIN_STEP_S,
    RunShape,
    estimate,
    load_step_times,
    session_paths,
    train_hours,
)
from lit_dendrite.sweeps.step_times import BF16_PATHS

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


FIRST_SCREEN = 25  # lines a terminal shows before a person scrolls


def test_paper_dry_run_first_screen_names_the_gpu_hours_and_the_missing_data_with_the_fetch_command(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the runs read data/ from the directory the sweep is submitted from
    launcher = load_launcher()
    code = launcher.main(["--cluster", "local", "--out", str(tmp_path / "runs"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    screen = "\n".join(out.splitlines()[:FIRST_SCREEN])
    assert "paper" in screen and "288 runs, 288 to submit" in screen
    for experiment in ("mlp_mnist_2arg", "cnn_cifar10_1arg"):
        assert re.search(rf"\n  {experiment} +24 +24 +200/400 ", screen), experiment
    assert re.search(r"\n  cnn_mnist_relu +24 +24 +200/- ", screen)
    total = float(re.search(r"\n  ([0-9.]+) GPU-hours for all 288 runs \(ASSUMING a GPU 100x", screen).group(1))
    train, evaluate = map(float, re.search(r"\n  total +288 +288 +([0-9.]+) +([0-9.]+)\n", screen).groups())
    assert train + evaluate == pytest.approx(total, abs=0.1)
    assert "Data sets the jobs read: 4 of 4 missing" in screen
    for name, role in (("mnist", "clean"), ("cifar10", "clean"), ("mnist_c", "corrupted"), ("cifar10_c", "corrupted")):
        assert re.search(rf"\n  {name} +{role} +144 runs  {tmp_path / 'data'}  missing\n", screen), name
    assert f"python launch/sweep.py fetch-data --sweep {REPO / 'configs' / 'sweep' / 'paper.yaml'}" in screen
    # the per-run list is not on it, nor anywhere without --verbose
    assert "cnn_cifar10_2arg/seed=24" not in out and "--protocol.joint_epochs 200" not in out
    assert "ASSUMED: a GPU is 100x faster than the benchmark's CPU run" in out

    for file in data_files("mnist", tmp_path / "data", True) + data_files("mnist", tmp_path / "data", False):
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"")
    assert launcher.main(["--cluster", "local", "--out", str(tmp_path / "runs"), "--dry-run", "--verbose",
                          "--gpu-speedup", "50"]) == 0  # fmt: skip
    verbose = capsys.readouterr().out
    assert "Data sets the jobs read: 3 of 4 missing" in verbose
    assert re.search(rf"\n  mnist +clean +144 runs  {tmp_path / 'data'}  present\n", verbose)
    assert "\n  cnn_cifar10_2arg/seed=24  submit\n" in verbose
    assert "train args of cnn_cifar10_2arg/seed=24: " in verbose and "--protocol.joint_epochs 200" in verbose
    slower = float(re.search(r"([0-9.]+) GPU-hours for all 288 runs", verbose).group(1))
    assert slower > 1.5 * total  # halving the speedup nearly doubles it
    assert not (tmp_path / "runs").exists()


def shape(neuron, epochs=(2, 3)):
    return RunShape("cnn_cifar10_" + neuron, "cifar10", "DendriticCNN", neuron, 32, 200, *epochs, True)


def test_training_hours_are_counted_images_times_measured_step_times():
    times = load_step_times(RESULTS, gpu_speedup=10)
    measured = json.loads((RESULTS / "neurons_cpu.json").read_text())["models"]["cnn"]
    rows, batch = measured["rows"], measured["batch"]

    def epoch_s(path):
        step = max(200 * rows[path]["train_step_s"] / batch / 10, MIN_STEP_S)
        return math.ceil(40_000 / 200) * step + 10_000 / rows[path]["inference_images_per_s"] / 10

    assert train_hours(times, shape("relu")) * 3600 == pytest.approx(2 * epoch_s("relu"))
    # rows named after a neuron time that neuron; bf16 rows are not what a float32 run trains with
    paths = [p for p in rows if p not in ("reference", "table", *BF16_PATHS, *NEURONS)]
    fastest = min(paths, key=lambda p: rows[p]["train_step_s"])
    expected = 2 * epoch_s(fastest) + 3 * epoch_s("table")
    assert train_hours(times, shape("2arg")) * 3600 == pytest.approx(expected)


def test_a_gpu_benchmark_replaces_the_assumed_speedup(tmp_path):
    row = {"train_step_s": 0.02, "inference_images_per_s": 1e5}
    cases = [{"model": "cnn", "batch": batch, "precision": precision, "rows": {"relu": row, "fused": row, "table": row}}
             for batch in (50, 256) for precision in ("fp32", "bf16-mixed")]  # fmt: skip
    (tmp_path / "neurons_cuda.json").write_text(json.dumps({"device": "NVIDIA H200", "cases": cases}))
    times = load_step_times(tmp_path, gpu_speedup=10)
    assert times.device == "cuda" and times.speedup == 1.0
    assert times.train["cnn"]["fused"] == pytest.approx(0.02 / 256) and times.learned_path("cnn") == "fused"
    assumptions = estimate([shape("relu")], times).format()
    assert "neurons_cuda.json" in assumptions and "ASSUMED: a GPU" not in assumptions
    with pytest.raises(FileNotFoundError, match="run `python benchmarks/neurons.py`"):
        load_step_times(tmp_path / "empty")


def test_a_neuron_measured_as_its_own_variant_is_timed_by_its_row_and_never_as_the_inner_net(tmp_path):
    def row(step):
        return {"train_step_s": step, "inference_images_per_s": 1e5}

    rows = {"relu": row(0.01), "fused": row(0.08), "table": row(0.02), "kan": row(0.03), "celltypes": row(0.09)}
    rows["1arg"] = row(0.1)
    cases = [{"model": "cnn", "batch": 256, "precision": "fp32", "rows": rows}]
    (tmp_path / "neurons_cuda.json").write_text(json.dumps({"device": "NVIDIA H200", "cases": cases}))
    times = load_step_times(tmp_path)
    assert times.learned_path("cnn") == "fused"  # kan's row is faster, but it is not a path of the inner net
    assert session_paths(times, shape("kan")) == ("kan", None)  # session II only
    # session III of a neuron with tables runs the frozen tables, whatever its own row
    assert session_paths(times, shape("celltypes")) == ("celltypes", "table")
    assert session_paths(times, shape("1arg")) == ("1arg", "table")
    assert session_paths(times, shape("2arg")) == ("fused", "table")
    assert session_paths(times, shape("3arg")) == ("fused", "table")
    # 1-arg at its own step time: (0.1 - 0.08) / 256 s more per image than 2-arg, over 2 epochs of 40,000 images
    extra_s = train_hours(times, shape("1arg")) * 3600 - train_hours(times, shape("2arg")) * 3600
    assert extra_s == pytest.approx(2 * 40_000 * 0.02 / 256)
    text = estimate([shape(n) for n in ("2arg", "1arg", "3arg", "pau", "relu")], times).format()
    assert "the benchmark has no row of its own for 3arg (cnn), pau (cnn): priced as the 2-arg neuron" in text


def test_evaluation_hours_count_autoattack_stages_and_corrupted_sets():
    from lit_dendrite.sweeps.cost import (
        AUTOATTACK_GRADIENTS_ALL,
        AUTOATTACK_GRADIENTS_ROBUST,
        AUTOATTACK_QUERIES_ROBUST,
        evaluate_hours,
    )
    from lit_dendrite.sweeps.evaluation import parse_evaluate, settings_for

    times = load_step_times(RESULTS, gpu_speedup=10)
    cifar = {"attacks": {"autoattack_linf": {"epsilons": [8 / 255]}}, "corruptions": {"spec": "cifar10_c"}}
    section = parse_evaluate("test", {"batch_size": 500, "datasets": {"cifar10": cifar}})
    settings = {dataset: settings_for(section, dataset) for dataset in ("cifar10", "mnist")}
    assert settings["mnist"]["batch_size"] == 500 and not settings["mnist"]["attacks"]
    gradient, forward = times.attack_gradient["cnn"]["relu"], times.inference["cnn"]["relu"]
    per_image = (AUTOATTACK_GRADIENTS_ALL + 0.1 * AUTOATTACK_GRADIENTS_ROBUST) * gradient
    expected = 10_000 * (per_image + 0.1 * AUTOATTACK_QUERIES_ROBUST * forward) + 95 * 10_000 * forward
    assert evaluate_hours(times, shape("relu"), settings["cifar10"], 0.1) * 3600 == pytest.approx(expected)
    assert evaluate_hours(times, shape("relu"), settings["mnist"], 0.1) == 0.0


def test_resnet_runs_are_timed_by_the_resnet_benchmark_scaled_by_width_and_input_area(tmp_path):
    def row(step, images_per_s):
        return {"train_step_s": step, "inference_images_per_s": images_per_s}

    cpu_rows = {"relu": row(0.01, 1e5), "fused": row(0.05, 2e4), "table": row(0.02, 1e5)}
    (tmp_path / "neurons_cpu.json").write_text(json.dumps({"models": {"cnn": {"batch": 50, "rows": cpu_rows}}}))
    resnet = {"relu": row(1.6, 40.0), "2arg": row(12.8, 5.0), "1arg": row(16.0, 4.0)}
    (tmp_path / "resnet_cpu.json").write_text(json.dumps({"width_multiplier": 0.5, "batch": 16, "rows": resnet}))
    times = load_step_times(tmp_path, gpu_speedup=10)
    assert times.train["resnet"]["2arg"] == pytest.approx(12.8 / 16 / 10) and times.resnet_width == 32

    def resnet_shape(neuron, width, side=32):
        return RunShape("resnet18_" + neuron, "cifar10", "DendriticResNet", neuron, side, 200, 2, 3, True, width)

    assert session_paths(times, resnet_shape("2arg", 32)) == ("2arg", "2arg")  # no table row: exact in both
    assert session_paths(times, resnet_shape("relu", 32)) == ("relu", None)
    assert session_paths(times, resnet_shape("pau", 32))[0] == "2arg"  # a learned neuron it did not time

    def epoch_s(neuron, scale):
        step = max(200 * resnet[neuron]["train_step_s"] / 16 / 10 * scale, MIN_STEP_S)
        return math.ceil(40_000 / 200) * step + 10_000 / resnet[neuron]["inference_images_per_s"] / 10 * scale

    assert train_hours(times, resnet_shape("1arg", 32)) * 3600 == pytest.approx(5 * epoch_s("1arg", 1.0))
    # twice the width: 4x the convolutions; 28x28 input: (28/32)^2 of the area
    scale = 4 * (28 / 32) ** 2
    assert train_hours(times, resnet_shape("relu", 64, 28)) * 3600 == pytest.approx(2 * epoch_s("relu", scale))
    text = estimate([resnet_shape("2arg", 64)], times).format()
    assert "ResNet: each neuron's own row of resnet_cpu.json, divided by the assumed 10x" in text


def test_the_beyond_sweep_dry_run_estimates_its_resnet_runs_and_says_when_it_cannot(tmp_path):
    from lit_dendrite.sweeps.cost import sweep_cost
    from lit_dendrite.sweeps.spec import load_sweep

    sweep = load_sweep(REPO / "configs" / "sweep" / "beyond.yaml")
    text = sweep_cost(sweep)
    assert "resnet18_cifar100_2arg" in text and "total:" in text and "ResNet: each neuron's own row" in text
    (tmp_path / "neurons_cpu.json").write_text((RESULTS / "neurons_cpu.json").read_text())
    missing = sweep_cost(sweep, tmp_path)
    assert "not available: no benchmark results for DendriticResNet" in missing
    assert "run `python benchmarks/resnet.py` first" in missing


def test_attacks_cost_the_benchmarks_image_gradient_and_a_training_step_only_where_it_timed_none(tmp_path):
    from lit_dendrite.sweeps.cost import evaluate_hours
    from lit_dendrite.sweeps.evaluation import parse_evaluate, settings_for

    def rows(with_gradients):
        timed = {"relu": (0.01, 0.004), "fused": (0.05, 0.02), "table": (0.02, None)}
        return {
            path: {"train_step_s": step, "inference_images_per_s": 1e5}
            | ({"attack_gradient_s": gradient} if with_gradients and gradient else {})
            for path, (step, gradient) in timed.items()
        }

    pgd = {"attacks": {"linf_pgd": {"epsilons": [0.1, 0.2], "steps": 10, "n": 100}}}
    settings = settings_for(parse_evaluate("test", {"datasets": {"cifar10": pgd}}), "cifar10")
    for measured, per_gradient in ((True, 0.02), (False, 0.05)):
        (tmp_path / "neurons_cpu.json").write_text(
            json.dumps({"models": {"cnn": {"batch": 50, "rows": rows(measured)}}})
        )
        times = load_step_times(tmp_path, gpu_speedup=10)
        expected = 100 * 10 * 2 * per_gradient / 50 / 10  # images x steps x epsilons x per-image gradient
        assert evaluate_hours(times, shape("2arg"), settings, None) * 3600 == pytest.approx(expected)
        text = estimate([shape("2arg")], times, {"cifar10": settings}).format()
        if measured:
            assert "an attack's gradient costs the benchmark's image gradient with frozen weights (cnn)" in text
        else:
            assert "a training step where the benchmark timed no image gradient (cnn)" in text
