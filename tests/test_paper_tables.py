"""The paper's tables in the report: Table 1 beside the published values, mCE over the benchmark corruptions with
exclusions named, the soft-XOR verdict per layer, and the published numbers' data file."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import ttest_ind

from lit_dendrite.analysis.paper import authors_layer, paper_numbers, published_robust_accuracy
from lit_dendrite.analysis.robustness_report import corruption_metrics, epsilon_comparison, table_one
from lit_dendrite.analysis.surfaces import collect_input_pairs, density_region, learned_neurons, pixel_batches
from lit_dendrite.analysis.xor import analyse_layers, analyse_net, fit_quadratic
from lit_dendrite.nn import DendriticMLP
from lit_dendrite.robustness.corruption import corruption_errors, relative_corruption_errors


def test_paper_numbers_file_holds_table_one_with_its_source():
    numbers = paper_numbers()
    assert "arXiv:2110.06871" in numbers["source"] and "eval mode" in numbers["note"]
    assert published_robust_accuracy("mnist", "DendriticCNN") == {
        "dataset": "mnist", "net": "DendriticCNN", "epsilon": 0.3, "2arg": 49.25, "1arg": 10.02, "relu": 9.33,
    }  # fmt: skip
    assert published_robust_accuracy("digits", "DendriticMLP") is None
    assert (authors_layer("DendriticMLP"), authors_layer("DendriticCNN")) == (1, 3)


def robust_rows(dataset, net, values, epsilon, attack="autoattack_linf"):
    """Robust accuracies per neuron (one per run) at the reported epsilon, plus a smaller epsilon to be ignored."""
    rows = []
    for neuron, accuracies in values.items():
        for seed, accuracy in enumerate(accuracies):
            common = {"condition": f"x_{neuron}", "run": f"{neuron}/seed={seed}", "dataset": dataset, "net": net}
            common |= {"neuron": neuron, "variant": "", "attack": attack, "reported": epsilon}
            rows.append({**common, "epsilon": epsilon, "robust_accuracy": accuracy})
            rows.append({**common, "epsilon": epsilon / 2, "robust_accuracy": 0.99})
    return rows


def test_table_one_sets_each_measured_value_beside_the_published_one():
    values = {"2arg": [0.40, 0.42, 0.44], "1arg": [0.20, 0.22], "relu": [0.25, 0.27, 0.26]}
    table = table_one(pd.DataFrame(robust_rows("mnist", "DendriticMLP", values, 0.3)), "autoattack_linf")
    row = table.iloc[0]
    assert (row["data set"], row["net"], row["eps"]) == ("mnist", "DendriticMLP", "0.3")
    assert row["2-arg"] == "42.00 ± 2.00 (n=3)" and row["2-arg paper"] == "39.80"
    assert row["1-arg"] == "21.00 ± 1.41 (n=2)" and row["1-arg paper"] == "22.86"
    assert row["ReLU paper"] == "26.74"
    expected = ttest_ind(values["2arg"], values["relu"], equal_var=False).pvalue
    assert row["p 2-arg vs ReLU"] == f"{expected:.3g}"
    assert list(table.columns[:3]) == ["data set", "net", "eps"] and len(table) == 1


def test_robust_accuracy_is_compared_with_the_control_at_every_epsilon():
    values = {"2arg": [0.40, 0.42, 0.44], "relu": [0.25, 0.27, 0.26]}
    rows = pd.DataFrame(robust_rows("mnist", "DendriticMLP", values, 0.3))
    conditions = pd.DataFrame(
        [{"condition": f"x_{n}", "dataset": "mnist", "net": "DendriticMLP", "neuron": n} for n in values]
    )
    table = epsilon_comparison(rows, conditions)
    assert list(table.columns) == ["condition", "versus", "eps=0.15", "eps=0.3"] and len(table) == 1
    expected = ttest_ind(values["2arg"], values["relu"], equal_var=False).pvalue
    assert table.iloc[0]["eps=0.3"] == f"+16.00 (p {expected:.3g})"
    assert table.iloc[0]["eps=0.15"].startswith("+0.00 (p ")  # every run at 0.99


def corruption_rows(neuron, runs, clean, accuracies, spec="cifar10_c"):
    """Rows of ``runs`` runs of one neuron: accuracies[corruption] = accuracy at severities 1 and 2."""
    return [
        {"condition": f"c_{neuron}", "run": f"{neuron}/seed={seed}", "dataset": "cifar10", "net": "DendriticCNN",
         "variant": "", "neuron": neuron, "spec": spec, "corruption": corruption, "severity": severity,
         "accuracy": value[severity - 1], "clean": clean}
        for seed in range(runs) for corruption, value in accuracies.items() for severity in (1, 2)
    ]  # fmt: skip


def test_mce_averages_the_benchmark_corruptions_and_relative_mce_excludes_those_where_the_control_does_not_worsen():
    # the control's error rises on gaussian_noise; on fog it stays at its clean error (0.2): relative CE undefined
    control = {"gaussian_noise": (0.6, 0.4), "fog": (0.8, 0.8), "speckle_noise": (0.5, 0.5)}
    learned = {"gaussian_noise": (0.7, 0.5), "fog": (0.75, 0.7), "speckle_noise": (0.6, 0.6)}
    rows = pd.DataFrame(corruption_rows("relu", 2, 0.8, control) + corruption_rows("2arg", 2, 0.85, learned))
    per_run, groups = corruption_metrics(rows)
    group = groups.iloc[0]
    assert group["benchmark"] == ["gaussian_noise", "fog"] and group["extra"] == ["speckle_noise"]
    assert group["excluded_relative"] == ["fog"] and group["excluded_mce"] == []
    learned_run = per_run[per_run["neuron"] == "2arg"].iloc[0]
    benchmark = ("gaussian_noise", "fog")
    table = {c: dict(enumerate(learned[c], 1)) for c in learned}
    base = {c: dict(enumerate(control[c], 1)) for c in control}
    ces = corruption_errors({c: table[c] for c in benchmark}, {c: base[c] for c in benchmark})
    assert learned_run["mce"] == pytest.approx(np.mean(list(ces.values())))
    assert learned_run["mce_extra"] == pytest.approx(0.8 / 1.0)  # errors 0.4+0.4 over the control's 0.5+0.5
    noise = "gaussian_noise"
    relative = relative_corruption_errors({noise: table[noise]}, 0.85, {noise: base[noise]}, 0.8)
    assert learned_run["relative_mce"] == pytest.approx(relative[noise])
    assert not math.isnan(learned_run["relative_mce"])
    assert per_run[per_run["neuron"] == "relu"]["mce"].tolist() == pytest.approx([1.0, 1.0])


def test_corruption_metrics_without_a_control_give_accuracy_only():
    rows = pd.DataFrame(corruption_rows("2arg", 2, 0.9, {"shear": (0.8, 0.8)}, spec="mnist_c"))
    per_run, groups = corruption_metrics(rows)
    assert not groups.iloc[0]["baseline"] and groups.iloc[0]["benchmark"] == ["shear"]
    assert per_run["accuracy"].tolist() == pytest.approx([0.8, 0.8]) and per_run["mce"].isna().all()


def test_soft_xor_per_layer_uses_each_layers_own_input_pairs():
    torch.manual_seed(0)
    net = DendriticMLP(widths=(16, 16, 16))
    images = (np.random.default_rng(0).random((64, 28, 28, 1)) * 255).astype(np.uint8)
    analyses = analyse_layers(net, images)
    assert list(analyses.layers) == list(learned_neurons(net))
    pairs = collect_input_pairs(net, pixel_batches(images), max_pairs=50_000)
    surface = analyses.pooled.surface
    for name, fit in analyses.layers.items():
        expected = fit_quadratic(surface, density_region(pairs[name]))
        np.testing.assert_array_equal(fit.coefficients, expected.coefficients)
    first, second = (fit.coefficients for fit in list(analyses.layers.values())[:2])
    assert not np.allclose(first, second)  # the layers see different inputs: different regions, different fits
    np.testing.assert_array_equal(analyses.pooled.fit.coefficients, analyse_net(net, images).fit.coefficients)
