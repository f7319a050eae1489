"""Corruption accuracy, CE, mCE and relative mCE on hand-computed numbers."""

import json
import math

import pytest

from lit_dendrite.robustness.corruption import (
    corruption_errors,
    corruption_report,
    mean_accuracy_per_corruption,
    mean_corruption_accuracy,
    mean_corruption_error,
    relative_corruption_errors,
    relative_mean_corruption_error,
)

OURS = {"noise": {1: 0.9, 2: 0.7}, "blur": {1: 0.8, 2: 0.6}}
BASE = {"noise": {1: 0.8, 2: 0.6}, "blur": {1: 0.9, 2: 0.8}}
# errors: ours noise 0.1 + 0.3 = 0.4, blur 0.2 + 0.4 = 0.6; baseline noise 0.2 + 0.4 = 0.6, blur 0.1 + 0.2 = 0.3
# relative (clean errors 0.05 and 0.10): ours noise 0.05 + 0.25 = 0.30, blur 0.15 + 0.35 = 0.50;
# baseline noise 0.10 + 0.30 = 0.40, blur 0.00 + 0.10 = 0.10


def test_accuracy_averages():
    assert mean_accuracy_per_corruption(OURS) == pytest.approx({"noise": 0.8, "blur": 0.7})
    assert mean_corruption_accuracy(OURS) == pytest.approx(0.75)


def test_corruption_error_and_mce():
    assert corruption_errors(OURS, BASE) == pytest.approx({"noise": 0.4 / 0.6, "blur": 0.6 / 0.3})
    assert mean_corruption_error(OURS, BASE) == pytest.approx((2 / 3 + 2) / 2)
    assert mean_corruption_error(BASE, BASE) == pytest.approx(1.0)


def test_relative_corruption_error():
    relative = relative_corruption_errors(OURS, 0.95, BASE, 0.9)
    assert relative == pytest.approx({"noise": 0.30 / 0.40, "blur": 0.50 / 0.10})
    assert relative_mean_corruption_error(OURS, 0.95, BASE, 0.9) == pytest.approx((0.75 + 5.0) / 2)


def test_relative_error_undefined_when_baseline_not_hurt():
    baseline = {"noise": {1: 0.8, 2: 0.6}, "blur": {1: 0.95, 2: 0.9}}  # blur never worse than clean (0.9)
    relative = relative_corruption_errors(OURS, 0.95, baseline, 0.9)
    assert math.isnan(relative["blur"]) and relative["noise"] == pytest.approx(0.75)
    report = corruption_report(OURS, 0.95, baseline, 0.9)
    assert report["relative_corruption_error"]["blur"] is None and report["relative_mCE_excluded"] == ["blur"]
    assert report["relative_mCE"] == pytest.approx(0.75)  # the mean over the corruptions where it is defined
    json.dumps(report, allow_nan=False)


def test_corruption_where_the_baseline_makes_no_error_is_left_out_and_named():
    baseline = {"noise": {1: 0.8, 2: 0.6}, "blur": {1: 1.0, 2: 1.0}}  # digits-sized sets: no error at all on blur
    assert math.isnan(corruption_errors(OURS, baseline)["blur"])
    report = corruption_report(OURS, 0.95, baseline, 1.0)
    assert report["mCE"] == pytest.approx(0.4 / 0.6) and report["mCE_excluded"] == ["blur"]
    assert report["corruption_error"]["blur"] is None and report["relative_mCE_excluded"] == ["blur"]
    nothing_defined = corruption_report(OURS, 0.95, {c: {1: 1.0, 2: 1.0} for c in OURS}, 1.0)
    assert nothing_defined["mCE"] is None and nothing_defined["mCE_excluded"] == ["blur", "noise"]
    json.dumps(report, allow_nan=False)


def test_report_round_trips_through_json():
    report = corruption_report(OURS, 0.95, BASE, 0.9)
    assert report["mCE"] == pytest.approx(4 / 3) and report["relative_mCE"] == pytest.approx(2.875)
    reloaded = json.loads(json.dumps(report, allow_nan=False))
    assert mean_corruption_error(reloaded["accuracy"], BASE) == pytest.approx(4 / 3)  # severity keys are strings now
    assert "mCE" not in corruption_report(OURS, 0.95)


@pytest.mark.parametrize(
    ("baseline", "message"),
    [
        ({"noise": {1: 0.8, 2: 0.6}}, r"only in accuracies \['blur'\]"),
        ({"noise": {1: 0.8, 2: 0.6}, "blur": {1: 0.9}}, "severities of 'blur' differ"),
        ({"noise": {1: 80, 2: 60}, "blur": {1: 0.9, 2: 0.8}}, r"fraction in \[0, 1\]"),
        ({}, "no corruptions"),
    ],
)
def test_bad_inputs_are_named(baseline, message):
    with pytest.raises(ValueError, match=message):
        mean_corruption_error(OURS, baseline)


def test_report_needs_baseline_clean_accuracy():
    with pytest.raises(ValueError, match="baseline_clean_accuracy"):
        corruption_report(OURS, 0.95, BASE)
