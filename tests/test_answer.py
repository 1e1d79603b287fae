"""Does distillation pay at a given cost? The label-only front beside the distilled one,
and per band of the teacher's FLOPs the best confirmed distilled student against the best
label-only one (analysis.front.label_only_front, analysis.seeds.kd_answer, the report)."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from analysis.frame import study_frame
from analysis.front import label_only_front
from analysis.report import answer_lines, build_report, render_markdown, render_text
from analysis.seeds import by_configuration, kd_answer
from tests.synthetic import create_synthetic_study

TEACHER_FLOPS = 1e9


def test_label_only_front_of_a_synthetic_study(tmp_path):
    study = create_synthetic_study(f"journal:{tmp_path / 's.journal'}", "s", n_complete=30)
    frame = study_frame(study)
    front = label_only_front(frame)
    # By hand: each student's best baseline, then the students no other one beats on both.
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best: dict[tuple, tuple[float, float]] = {}
    for trial in complete:
        attrs = trial.user_attrs
        key = (attrs["num_layers"], attrs["hidden_size"])
        point = (attrs["baseline_dev_accuracy"], attrs["flops_per_example"])
        best[key] = max(best.get(key, point), point)
    expected = sorted((cost, accuracy) for accuracy, cost in best.values()
                      if not any(a >= accuracy and c <= cost and (a, c) != (accuracy, cost)
                                 for a, c in best.values()))
    assert sorted(zip(front["flops_per_example"], front["baseline_dev_accuracy"])) == expected
    assert len(front) >= 2 and front["flops_per_example"].is_monotonic_increasing


def run(trial, share, dev, baseline_dev, test, baseline_test, repeat_of=None, layers=1):
    return {"trial": trial, "state": "COMPLETE", "repeat_of": repeat_of, "num_layers": layers,
            "hidden_size": 64, "flops_per_example": share * TEACHER_FLOPS,
            "teacher_flops_per_example": TEACHER_FLOPS, "dev_accuracy": dev,
            "baseline_dev_accuracy": baseline_dev, "kd_gain": dev - baseline_dev,
            "test_accuracy": test, "baseline_test_accuracy": baseline_test,
            "dev_examples": 1000, "test_examples": 1000}


def configuration(trial, share, devs, baselines, tests, baseline_tests, layers, first_repeat):
    """A search run (its numbers far above its fresh runs: they must not count) and its
    fresh runs."""
    rows = [run(trial, share, 0.99, 0.99, 0.99, 0.99, layers=layers)]
    rows += [run(first_repeat + i, share, *values, repeat_of=trial, layers=layers)
             for i, values in enumerate(zip(devs, baselines, tests, baseline_tests))]
    return rows


@pytest.fixture
def answered() -> pd.DataFrame:
    rows = (configuration(0, 0.05, [0.80, 0.82, 0.81], [0.78, 0.79, 0.80],
                          [0.79, 0.80, 0.80], [0.78, 0.78, 0.79], 1, 10)
            + configuration(1, 0.08, [0.79, 0.80, 0.78], [0.81, 0.82, 0.83],
                            [0.78, 0.79, 0.79], [0.80, 0.80, 0.82], 2, 20)
            + configuration(2, 0.25, [0.86, 0.88, 0.87], [0.84, 0.845, 0.85],
                            [0.85, 0.87, 0.86], [0.84, 0.85, 0.85], 3, 30)
            # Cheap and brilliant on its search run alone: unconfirmed, never the answer.
            + [run(3, 0.05, 0.95, 0.95, 0.95, 0.95, layers=4)]
            # Confirmed but over 1/3 of the teacher: outside both bands.
            + configuration(4, 0.5, [0.9] * 3, [0.9] * 3, [0.9] * 3, [0.9] * 3, 5, 40))
    return pd.DataFrame(rows)


def test_the_answer_per_band_against_scipy(answered):
    answer = kd_answer(answered, by_configuration(answered)).set_index("band")
    tenth, third = answer.loc[1 / 10], answer.loc[1 / 3]
    # <= 1/10: distilled best is configuration 0, label-only best configuration 1: two
    # sets of fresh runs, Welch's interval.
    assert (tenth["kd_trial"], tenth["label_trial"]) == (0, 1)
    assert tenth["kd_dev_mean"] == pytest.approx(0.81)
    assert tenth["label_dev_mean"] == pytest.approx(0.82)
    welch = scipy_stats.ttest_ind([0.80, 0.82, 0.81], [0.81, 0.82, 0.83], equal_var=False)
    low, high = welch.confidence_interval(0.95)
    assert (tenth["gain"], tenth["gain_low"], tenth["gain_high"]) == (
        pytest.approx(-0.01, abs=1e-12), pytest.approx(low, abs=1e-12),
        pytest.approx(high, abs=1e-12))
    welch = scipy_stats.ttest_ind([0.79, 0.80, 0.80], [0.80, 0.80, 0.82], equal_var=False)
    assert tenth["gain_test_low"] == pytest.approx(welch.confidence_interval(0.95)[0], abs=1e-12)
    assert tenth["verdict"] == tenth["verdict_test"] == "not shown"
    # <= 1/3: configuration 2 is best both ways: its own gains, paired by seed.
    assert (third["kd_trial"], third["label_trial"]) == (2, 2)
    gains = np.subtract([0.86, 0.88, 0.87], [0.84, 0.845, 0.85])
    low, high = scipy_stats.ttest_1samp(gains, 0.0).confidence_interval(0.95)
    assert (third["gain"], third["gain_low"], third["gain_high"]) == (
        pytest.approx(gains.mean(), abs=1e-12), pytest.approx(low, abs=1e-12),
        pytest.approx(high, abs=1e-12))
    assert (third["verdict"], third["verdict_test"], third["kd_seeds"]) == ("pays", "not shown", 3)
    gains = np.subtract([0.85, 0.87, 0.86], [0.84, 0.85, 0.85])
    assert third["gain_test"] == pytest.approx(gains.mean(), abs=1e-12)
    assert third["gain_test_high"] == pytest.approx(
        scipy_stats.ttest_1samp(gains, 0.0).confidence_interval(0.95)[1], abs=1e-12)


def test_the_report_says_it_in_one_line_per_band(answered):
    report = build_report(answered)
    lines = answer_lines(report)
    assert len(lines) == 2
    assert lines[0].startswith("<= 1/10 of the teacher's FLOPs: distilled 1 x 64 (trial 0, 3 "
                               "fresh seeds) dev 81.0") and "label-only 2 x 64 (trial 1" in lines[0]
    assert lines[0].endswith("no difference shown on dev, no difference shown on test")
    assert lines[1].startswith("<= 1/3 of the teacher's FLOPs: distilled 3 x 64 (trial 2")
    assert "KD gain +2.5 [+0.3, +4.7] dev, +1.3 [-0.1, +2.8] test" in lines[1]
    assert lines[1].endswith("KD pays on dev, no difference shown on test")
    page = render_markdown(report)
    assert "## Does distillation pay?" in page and f"- {lines[1]}" in page
    assert "## Label-only front" in page
    assert lines[0] in render_text(report)


def test_a_band_no_confirmed_configuration_fits_says_so(answered):
    cheap_unconfirmed = answered[answered["flops_per_example"] >= 0.2 * TEACHER_FLOPS]
    lines = answer_lines(build_report(cheap_unconfirmed))
    assert lines[0] == "<= 1/10 of the teacher's FLOPs: no configuration with fresh runs fits"
