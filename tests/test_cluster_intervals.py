"""Intervals over examples that come in groups (analysis.stats.cluster_robust_interval):
against a hand computation, against statsmodels' cluster-robust OLS, and through a study
frame whose trials stored counts per group (harness.evaluation.cluster_counts)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as scipy_stats

from analysis.stats import add_intervals, cluster_robust_interval, wilson_interval
from harness.evaluation import cluster_counts


def test_a_hand_computed_interval_of_three_groups():
    # Groups of 4, 2 and 4 examples with 3, 0 and 4 correct: p = 7/10.
    estimate, low, high = cluster_robust_interval([3, 0, 4], [4, 2, 4])
    residuals = [3 - 0.7 * 4, 0 - 0.7 * 2, 4 - 0.7 * 4]  # 0.2, -1.4, 1.2
    variance = 3 / 2 * sum(r * r for r in residuals) / 10 ** 2  # 3/2 * 3.44 / 100 = 0.0516
    half = 4.302652729911275 * math.sqrt(variance)  # t(0.975, 2 degrees of freedom)
    assert estimate == 0.7
    assert variance == pytest.approx(0.0516, abs=1e-15)
    assert (low, high) == (pytest.approx(max(0.0, 0.7 - half), abs=1e-12),
                           pytest.approx(min(1.0, 0.7 + half), abs=1e-12))
    assert high == 1.0  # clipped: three groups say little


def test_it_matches_statsmodels_cluster_robust_ols():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 15, size=40)
    groups = np.repeat(np.arange(40), sizes)
    # Correlated within a group: each group has its own chance of a correct prediction.
    chance = rng.uniform(0.4, 0.95, size=40)[groups]
    correct = (rng.uniform(size=len(groups)) < chance).astype(np.float64)
    baseline = (rng.uniform(size=len(groups)) < chance - 0.05).astype(np.float64)
    for values, bounds in ((correct, (0.0, 1.0)), (correct - baseline, (-1.0, 1.0))):
        fit = sm.OLS(values, np.ones((len(values), 1))).fit(
            cov_type="cluster", cov_kwds={"groups": groups, "use_correction": True})
        se = float(fit.bse[0])
        totals = np.bincount(groups, weights=values)
        estimate, low, high = cluster_robust_interval(totals, sizes, bounds=bounds)
        t = scipy_stats.t.ppf(0.975, 39)
        assert estimate == pytest.approx(float(fit.params[0]), abs=1e-12)
        assert (low, high) == (pytest.approx(estimate - t * se, abs=1e-12),
                               pytest.approx(estimate + t * se, abs=1e-12))


def test_correlated_groups_widen_the_interval_and_singletons_do_not():
    # 20 groups of 10 examples, each group all right or all wrong: 10 groups right.
    sizes, totals = [10] * 20, [10] * 10 + [0] * 10
    _, low, high = cluster_robust_interval(totals, sizes)
    wilson_low, wilson_high = wilson_interval(100, 200)
    assert high - low > 2.5 * (wilson_high - wilson_low)
    # Every example its own group: the Wald interval with n / (n - 1) and a t quantile.
    _, low, high = cluster_robust_interval([1] * 100 + [0] * 100, [1] * 200)
    wald = scipy_stats.t.ppf(0.975, 199) * math.sqrt(0.25 / 200 * 200 / 199)
    assert (high - low) / 2 == pytest.approx(wald, abs=1e-12)


def test_counts_per_group_from_logits():
    labels = torch.tensor([1, 0, 1, 1, 0])
    logits = torch.tensor([[0., 1], [1, 0], [1, 0], [0, 1], [0, 1]])  # right: 1 1 0 1 0
    baseline = torch.tensor([[1., 0], [1, 0], [0, 1], [0, 1], [1, 0]])  # right: 0 1 1 1 1
    counts = cluster_counts(logits, baseline, labels, ("b", "a", "b", "c", "a"))
    # Groups in sorted order: a = examples 1, 4; b = 0, 2; c = 3.
    assert counts.sizes == (2, 2, 1)
    assert counts.correct == (1, 1, 1)
    assert counts.baseline_correct == (2, 1, 1)


def test_a_study_frame_uses_the_cluster_interval_where_trials_stored_groups():
    sizes, correct, baseline = [30, 20, 25, 25], [25, 10, 20, 15], [20, 12, 18, 14]
    grouped = {"sizes": sizes, "correct": correct, "baseline_correct": baseline}
    test = {"sizes": [50, 50], "correct": [40, 30], "baseline_correct": [35, 30]}
    row = {"dev_accuracy": 0.7, "baseline_dev_accuracy": 0.64, "dev_examples": 100,
           "test_accuracy": 0.7, "baseline_test_accuracy": 0.65, "test_examples": 100,
           "kd_only_correct_dev": 14, "baseline_only_correct_dev": 8,
           "kd_only_correct_test": 9, "baseline_only_correct_test": 4, "kd_gain": 0.06}
    frame = pd.DataFrame([{**row, "dev_clusters": json.dumps(grouped),
                           "test_clusters": json.dumps(test)},
                          {**row, "dev_clusters": None, "test_clusters": None}])
    out = add_intervals(frame)
    assert list(out["interval_method"]) == ["cluster-robust", "Wilson/Newcombe"]
    _, low, high = cluster_robust_interval(correct, sizes)
    assert (out.loc[0, "dev_accuracy_ci_low"], out.loc[0, "dev_accuracy_ci_high"]) == (low, high)
    _, low, high = cluster_robust_interval(np.subtract(correct, baseline), sizes, bounds=(-1, 1))
    assert (out.loc[0, "kd_gain_ci_low"], out.loc[0, "kd_gain_ci_high"]) == (low, high)
    _, low, high = cluster_robust_interval([35, 30], [50, 50])
    assert out.loc[0, "baseline_test_accuracy_ci_low"] == low
    wilson = wilson_interval(70, 100)
    assert out.loc[1, "dev_accuracy_ci_low"] == pytest.approx(float(wilson[0]))
