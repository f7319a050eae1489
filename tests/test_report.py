"""The sweep report: every section, every condition, stated tests with p values, problems listed not fatal."""

import json
import re

import pandas as pd
import pytest
from helpers import load_launcher
from scipy.stats import ttest_ind
from tiny_sweep import CONDITIONS, make_fake_sweep, train_tiny_sweep, write_session_events

from lit_dendrite.analysis.nonlinearity_report import surfaces_figure_name
from lit_dendrite.analysis.report import (
    LEARNING_CURVES_FIGURE,
    SPEED_FIGURE,
    accuracy_table,
    load_runs,
    summary_table,
    write_report,
)
from lit_dendrite.analysis.robustness_report import robust_accuracy_column
from lit_dendrite.analysis.tables import compare_conditions, markdown_table, mean_sd

SECTIONS = ("## Clean test accuracy", "## Learning curves", "## Inner-net surfaces", "## Robustness")


def referenced_images(report: str) -> list[str]:
    return re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)


@pytest.fixture
def fake_sweep(tmp_path):
    return make_fake_sweep(tmp_path / "sweep")


def test_summary_table_per_condition(fake_sweep):
    (fake_sweep / "mlp_digits_relu" / "seed=9").mkdir()
    failed = {"status": "failed", "error": "CUDA out of memory", "log": "x.log"}
    (fake_sweep / "mlp_digits_relu" / "seed=9" / "result.json").write_text(json.dumps(failed))
    table = summary_table(load_runs(fake_sweep)).set_index("condition")
    assert list(table.index) == sorted(CONDITIONS)
    relu = table.loc["mlp_digits_relu"]
    assert (relu["n"], relu["not_done"], relu["neuron"], relu["dataset"]) == (3, 1, "relu", "digits")
    assert relu["test_acc_mean"] == pytest.approx(0.82)
    assert relu["test_acc_sd"] == pytest.approx(0.01)
    assert int(relu["params"]) > 0


def test_conditions_are_compared_with_the_relu_control_by_welch(fake_sweep):
    runs = load_runs(fake_sweep)
    table = summary_table(runs)
    values = pd.DataFrame({"condition": [r.condition for r in runs], "value": [r.test_acc for r in runs]})
    compared = compare_conditions(values, table)
    assert compared[["condition", "versus"]].values.tolist() == [["mlp_digits_2arg", "mlp_digits_relu"]]
    a, b = (values[values["condition"] == c]["value"] for c in ("mlp_digits_2arg", "mlp_digits_relu"))
    expected = ttest_ind(a, b, equal_var=False)
    assert compared["p"].iloc[0] == pytest.approx(expected.pvalue)
    assert compared["difference"].iloc[0] == pytest.approx(0.05)
    # without a control (here: none in the table, or none with values), every pair is compared
    no_control = table.assign(neuron=["2arg", "1arg"])
    assert len(compare_conditions(values, no_control)) == 1
    three = pd.concat([table, table.iloc[:1].assign(condition="mlp_digits_1arg", neuron="1arg")])
    without_relu = pd.concat(
        [values[values["condition"] == "mlp_digits_2arg"], a.to_frame().assign(condition="mlp_digits_1arg")]
    )
    assert compare_conditions(without_relu, three)[["condition", "versus"]].values.tolist() == [
        ["mlp_digits_1arg", "mlp_digits_2arg"]
    ]


def test_markdown_table_formats_and_marks_missing_values():
    text = markdown_table(pd.DataFrame({"a": ["x"], "p": [float("nan")], "q": [0.12345]}), {"q": ".2f"})
    assert text.splitlines() == ["| a | p | q |", "|---|---|---|", "| x | – | 0.12 |"]


def test_report_of_a_hand_made_sweep_has_every_section_and_condition(fake_sweep):
    failed_dir = fake_sweep / "mlp_digits_2arg" / "seed=8"
    failed_dir.mkdir()
    (failed_dir / "result.json").write_text(json.dumps({"status": "diverged", "error": "loss is NaN"}))
    stalled_dir = fake_sweep / "mlp_digits_2arg" / "seed=9"
    stalled_dir.mkdir()
    (stalled_dir / "result.json").write_text(json.dumps({"status": "stalled", "error": "session II_joint: at chance"}))
    broken = json.loads((fake_sweep / "mlp_digits_2arg" / "seed=3" / "result.json").read_text())
    (fake_sweep / "mlp_digits_2arg" / "seed=3" / broken["best_checkpoint"]).unlink()
    write_session_events(fake_sweep / "mlp_digits_relu" / "seed=4" / "II_joint", [0.5, 0.9])  # still training

    path = write_report(fake_sweep, n_images=100)
    report = path.read_text()
    assert path == fake_sweep / "report.md"
    for heading in SECTIONS:
        assert heading in report
    for condition in CONDITIONS:
        assert report.count(condition) >= 4
    assert "Welch" in report and "binomial" in report
    assert re.search(r"\| mlp_digits_2arg \| [0-2]/2 \|", report), "seed 3 has no checkpoint: two surfaces"
    assert re.search(r"seed=3`: surface analysis failed: MissingFile: .*best.ckpt is missing", report)
    assert re.search(r"\| mlp_digits_2arg \| 1 \(hidden\.0\.neuron\) authors' \| [0-2]/2 \|", report), "per layer"
    assert "seed=8`: status 'diverged': loss is NaN" in report
    stalled = report.split("## Stalled runs")[1].split("\n## ")[0]  # listed apart from the problems
    assert "seed=9`: session II_joint: at chance" in stalled and "seed=9" not in report.split("## Problems")[1]
    assert "| mlp_digits_2arg | 3 | 67.00 ± 1.00 | 86.61 ± 2.68 | 100.00 ± 0.00 |" in report, "corruption table"
    assert "| mlp_digits_relu | 82.00 ± 1.00 | 50.00 ± 0.00 | 12.00 ± 1.00 |" in report, "robust accuracy vs eps"
    # learning speed of the three finished ReLU runs only (their curves reach their end at their 4th epoch)
    assert "| mlp_digits_relu | II_joint | 4.0 ± 0.0 | 4.0 ± 0.0 | 3 |" in report, "a partial curve was counted"
    images = referenced_images(report)
    assert {LEARNING_CURVES_FIGURE, SPEED_FIGURE, surfaces_figure_name("mlp_digits_2arg")} <= set(images)
    for image in images:
        assert (fake_sweep / image).read_bytes()[:4] == b"\x89PNG"


def test_every_table_of_the_report_is_recomputed_from_summary_csv(fake_sweep):
    """collect writes summary.csv with every per-run number the report summarises; the report's tables (clean
    accuracy, learning speed, saddles, corruption metrics, robust accuracy per epsilon) follow from the CSV alone."""
    assert load_launcher().main(["collect", str(fake_sweep), "--surface-images", "100"]) == 0
    report = (fake_sweep / "report.md").read_text()
    summary = pd.read_csv(fake_sweep / "summary.csv")
    by_condition = summary.groupby("condition")

    def cells(column: str, scale: float = 100.0, digits: int = 2) -> dict[str, str]:
        stats = by_condition[column].agg(["mean", "std"])
        return {c: mean_sd(m, s, scale, digits) for c, (m, s) in stats.iterrows()}

    accuracy = cells("test_acc")
    for condition in CONDITIONS:
        assert f"| {condition} | digits | DendriticMLP |" in report
        assert re.search(rf"\| {condition} \| .* \| {re.escape(accuracy[condition])} \|", report)
    for session in ("II_joint", "III_frozen"):
        to_95, to_99 = cells(f"epochs_to_95.{session}", 1.0, 1), cells(f"epochs_to_99.{session}", 1.0, 1)
        for condition, n in summary.groupby("condition")[f"epochs_to_99.{session}"].count().items():
            if n:
                assert f"| {condition} | {session} | {to_95[condition]} | {to_99[condition]} | {n} |" in report
    saddles = summary.dropna(subset=["surface.saddle"]).groupby("condition")["surface.saddle"]
    for condition, verdicts in saddles:
        assert f"| {condition} | {int(verdicts.astype(bool).sum())}/{len(verdicts)} |" in report
    corruption = [cells(column) for column in ("corruption_accuracy", "mCE", "relative_mCE")]
    for condition, n in by_condition["mCE"].count().items():
        row = " | ".join(table[condition] for table in corruption)
        assert f"| {condition} | {n} | {row} |" in report, "corruption table"
    robust = [cells(robust_accuracy_column("LinfPGD", eps)) for eps in (0.0, 0.1, 0.3)]
    for condition in CONDITIONS:
        assert f"| {condition} | {' | '.join(table[condition] for table in robust)} |" in report, "robust accuracy"


def test_a_finished_run_at_chance_accuracy_is_listed_as_a_problem(fake_sweep):
    result_file = fake_sweep / "mlp_digits_relu" / "seed=2" / "result.json"
    result = json.loads(result_file.read_text())
    result_file.write_text(json.dumps({**result, "test_acc": 0.075}))
    report = write_report(fake_sweep, n_images=100).read_text()
    problems = report[report.index("## Problems") :]
    assert "`mlp_digits_relu/seed=2`: test accuracy 7.5% is at chance (10% by guessing): it did not learn" in problems
    assert "seed=1" not in problems and "seed=3" not in problems  # the runs that learned (81-85%) are not listed


def test_report_needs_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no result\.json"):
        write_report(tmp_path)


@pytest.mark.slow
def test_report_of_a_tiny_real_sweep(tmp_path_factory):
    sweep = train_tiny_sweep(tmp_path_factory.getbasetemp() / "tiny_real_sweep")
    report = write_report(sweep, n_images=200).read_text()
    for heading in SECTIONS[:3]:
        assert heading in report
    for condition in CONDITIONS:
        assert f"| {condition} | digits | DendriticMLP |" in report
    assert "| mlp_digits_2arg | " in report.split("## Inner-net surfaces")[1]
    assert "## Problems" not in report
    for image in referenced_images(report):
        assert (sweep / image).is_file()


def test_the_accuracy_table_shows_percentages_with_two_decimals(fake_sweep):
    shown = accuracy_table(summary_table(load_runs(fake_sweep))).set_index("condition")
    assert shown.loc["mlp_digits_relu", "test acc %"] == "82.00 ± 1.00"  # test_acc 0.81, 0.82, 0.83
    assert all(re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", cell) for cell in shown["test acc %"])
