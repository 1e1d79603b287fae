"""The analysis library: intervals, Pareto front, hypervolume, study loading, tables, plots."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from analysis import stats
from analysis.frame import (StudyLoadError, column, complete_trials, load_study_frame, state_counts,
                            state_summary)
from analysis.front import (best_under_budgets, front_table, hypervolume, kd_gain_by_size,
                            mark_dominated, mark_indistinguishable, pareto_front, pareto_mask)
from analysis.plots import plot_comparison, plot_front, plot_kd_gain_vs_params
from analysis.report import NoCompleteTrials, build_report, render_markdown, render_text
from harness.sweep.storage import open_storage

from .synthetic import create_synthetic_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
Z95 = 1.959963984540054


# ---- intervals -------------------------------------------------------------------------


def wilson_reference(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval written from its formula, in float64."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(centre - half, 0.0), min(centre + half, 1.0)


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_matches_formula(kn):
    k, n = kn
    low, high = stats.wilson_interval(k, n)
    ref_low, ref_high = wilson_reference(k, n)
    assert low == pytest.approx(ref_low, abs=1e-12) and high == pytest.approx(ref_high, abs=1e-12)
    assert 0.0 <= low <= k / n <= high <= 1.0


@pytest.mark.parametrize("k, n, low, high", [
    # Newcombe (1998), Stat. Med. 17:857, table II, method 3 (score interval).
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718)])
def test_wilson_textbook_values(k, n, low, high):
    got = stats.wilson_interval(k, n)
    assert float(got[0]) == pytest.approx(low, abs=5e-5)
    assert float(got[1]) == pytest.approx(high, abs=5e-5)


def test_wilson_rejects_impossible_counts_with_nan():
    low, high = stats.wilson_interval([5, -1, 3, np.nan], [0, 10, 2, 10])
    assert np.isnan(low).all() and np.isnan(high).all()


def test_accuracy_interval_rounds_stored_accuracy():
    low, high = stats.accuracy_interval(0.8025, 1200)  # 963 of 1200
    assert (float(low), float(high)) == pytest.approx(wilson_reference(963, 1200), abs=1e-12)


@pytest.mark.parametrize("k1, n1, k2, n2, low, high", [
    # Newcombe (1998), Stat. Med. 17:873, table II, method 10.
    (56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090),
    (6, 7, 2, 7, 0.0582, 0.8062), (5, 56, 0, 29, -0.0381, 0.1926)])
def test_independent_difference_textbook_values(k1, n1, k2, n2, low, high):
    got = stats.independent_difference_interval(k1, n1, k2, n2)
    assert (float(got[0]), float(got[1])) == pytest.approx((low, high), abs=5e-5)


def test_paired_difference_reference_value():
    # Fagerland, Lydersen & Laake, "Statistical analysis of contingency tables", ch. 8:
    # Cavo et al. (2012) table [[59, 6], [16, 80]], Newcombe square-and-add interval.
    low, high = stats.paired_difference_interval(65, 6, 16, 161)
    assert (float(low), float(high)) == pytest.approx((-0.1186, -0.0046), abs=5e-5)


@given(st.integers(1, 400).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.integers(0, n), min_size=3, max_size=3))))
def test_paired_difference_contains_estimate_and_stays_in_range(case):
    n, cuts = case
    a, a_b, a_b_c = sorted(cuts)  # cumulative cut points keep a + b + c <= n
    b, c = a_b - a, a_b_c - a_b
    low, high = stats.paired_difference_interval(a + b, b, c, n)
    diff = (b - c) / n
    assert -1.0 <= low <= diff + 1e-12 and diff - 1e-12 <= high <= 1.0
    if b == c:  # equal discordant counts: symmetric about 0
        assert float(low) == pytest.approx(-float(high), abs=1e-12)


def test_paired_difference_impossible_table_is_nan():
    low, high = stats.paired_difference_interval(5, 8, 0, 100)  # more "only" than correct
    assert np.isnan(low) and np.isnan(high)


# ---- Pareto front and hypervolume --------------------------------------------------------


def brute_force_mask(acc, cost):
    n = len(acc)
    ok = [math.isfinite(acc[i]) and math.isfinite(cost[i]) for i in range(n)]
    mask = []
    for i in range(n):
        dominated = any(ok[j] and acc[j] >= acc[i] and cost[j] <= cost[i]
                        and (acc[j] > acc[i] or cost[j] < cost[i]) for j in range(n))
        mask.append(ok[i] and not dominated)
    return np.array(mask, dtype=bool)


def brute_force_hypervolume(acc, cost, ref_acc, ref_cost):
    """Area of the union of boxes [cost_i, ref_cost] x [ref_acc, acc_i] on a compressed grid."""
    boxes = [(c, a) for a, c in zip(acc, cost) if a > ref_acc and c < ref_cost]
    xs = sorted({c for c, _ in boxes} | {ref_cost})
    ys = sorted({a for _, a in boxes} | {ref_acc})
    area = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        for y0, y1 in zip(ys, ys[1:]):
            if any(c <= x0 and a >= y1 for c, a in boxes):
                area += (x1 - x0) * (y1 - y0)
    return area


# Small integer grids make ties and exact duplicates common; NaN stands for missing values.
grid_value = st.one_of(st.integers(0, 6).map(float), st.just(float("nan")))
float_value = st.floats(0.0, 1e3, allow_nan=False)
points = st.one_of(
    st.lists(st.tuples(grid_value, grid_value), max_size=25),
    st.lists(st.tuples(float_value, float_value), max_size=25))


@settings(max_examples=150, deadline=None)
@given(points)
def test_pareto_mask_matches_brute_force(pts):
    acc = [a for a, _ in pts]
    cost = [c for _, c in pts]
    np.testing.assert_array_equal(pareto_mask(acc, cost), brute_force_mask(acc, cost))


def test_exact_duplicates_are_all_on_the_front():
    mask = pareto_mask([0.8, 0.8, 0.7, 0.8], [10.0, 10.0, 5.0, 11.0])
    assert mask.tolist() == [True, True, True, False]


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.lists(st.tuples(st.integers(0, 6).map(float), st.integers(1, 6).map(float)),
                          max_size=20),
                 st.lists(st.tuples(st.floats(0, 1), st.floats(1, 1e3)), max_size=20)),
       st.floats(0.0, 0.5), st.floats(1.0, 2e3))
def test_hypervolume_matches_brute_force(pts, ref_acc, ref_cost):
    acc = [a for a, _ in pts]
    cost = [c for _, c in pts]
    expected = brute_force_hypervolume(acc, cost, ref_acc, ref_cost)
    assert hypervolume(acc, cost, ref_acc, ref_cost) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_hypervolume_default_reference_and_hand_value():
    # Front (1, 0.5), (2, 0.8); ref cost 1.1 * 2 = 2.2: 0.5 * 1 + 0.8 * 0.2 = 0.66.
    assert hypervolume([0.5, 0.8, 0.4], [1.0, 2.0, 1.5]) == pytest.approx(0.66)
    assert hypervolume([], []) == 0.0


def test_pareto_front_skips_unfinished_rows_and_sorts_by_cost():
    frame = pd.DataFrame({
        "trial": [0, 1, 2, 3, 4],
        "state": ["COMPLETE", "FAIL", "COMPLETE", "PRUNED", "COMPLETE"],
        "dev_accuracy": [0.70, 0.99, 0.80, 0.99, np.nan],
        "flops_per_example": [1e8, 1.0, 5e8, 1.0, 1.0]})
    front = pareto_front(frame)
    assert front["trial"].tolist() == [0, 2]
    assert mark_dominated(frame)["dominated"].tolist() == [False, True, False, True, True]
    with pytest.raises(ValueError, match="flops_per_example, params, latency_ms, train_flops"):
        pareto_front(frame, x="seconds")


# ---- study loading ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def study_storage(tmp_path_factory):
    url = f"journal:{tmp_path_factory.mktemp('study')}/s.journal"
    create_synthetic_study(url, "smoke", n_complete=12, seed=3)
    create_synthetic_study(url, "other", n_complete=5, seed=4, failed=0, pruned=0)
    return url


@pytest.fixture(scope="module")
def frame(study_storage):
    return load_study_frame("smoke", study_storage)


def test_frame_has_one_row_per_trial_with_states_and_fields(frame):
    assert len(frame) == 14 and frame["trial"].tolist() == list(range(14))
    assert state_counts(frame)["COMPLETE"] == 12
    assert state_summary(frame) == "12 complete, 1 pruned, 1 failed"
    failed = frame[frame["state"] == "FAIL"].iloc[0]
    assert failed["fail_reason"] == "diverged" and not math.isnan(failed["T"])  # from params
    for name in ("dev_accuracy", "kd_gain", "flops_per_example", "T", "T_s", "alpha",
                 "num_layers", "hidden_size", "kd_only_correct_dev", "teacher_dev_accuracy"):
        assert name in frame.columns
    assert str(frame["dev_examples"].dtype) == "Int64"  # counts stay integers
    assert frame.attrs["objectives"] == ["dev_accuracy", "flops_per_example"]


def test_complete_trials_and_column_read_any_frame():
    frame = pd.DataFrame({"state": ["COMPLETE", "FAIL", "COMPLETE"], "x": ["1.5", "n/a", None]},
                         index=[5, 6, 7])
    complete = complete_trials(frame)
    assert complete.index.tolist() == [0, 1] and (complete["state"] == "COMPLETE").all()
    np.testing.assert_array_equal(column(frame, "x"), [1.5, np.nan, np.nan])
    assert column(frame, "absent").dtype == np.float64 and np.isnan(column(frame, "absent")).all()
    by_hand = pd.DataFrame({"dev_accuracy": [0.7, 0.8]})  # no state: every row counts
    pd.testing.assert_frame_equal(complete_trials(by_hand), by_hand)


def test_unknown_study_lists_the_studies(study_storage):
    with pytest.raises(StudyLoadError, match="studies there: other, smoke"):
        load_study_frame("nope", study_storage)


def test_missing_journal_is_not_created(tmp_path):
    with pytest.raises(StudyLoadError, match="does not exist"):
        load_study_frame("x", f"journal:{tmp_path}/none/s.journal")
    assert not (tmp_path / "none").exists()


# ---- tables, report, plots -------------------------------------------------------------


def test_front_matches_optuna_best_trials(frame, study_storage):
    study = optuna.load_study(study_name="smoke", storage=open_storage(study_storage))
    front = front_table(frame)
    assert set(front["trial"]) == {t.number for t in study.best_trials}
    assert front["flops_per_example"].is_monotonic_increasing
    assert front["dev_accuracy"].is_monotonic_increasing


def test_intervals_retention_and_speedup(frame):
    row = stats.add_intervals(frame[frame["state"] == "COMPLETE"]).iloc[0]
    k = round(row["dev_accuracy"] * row["dev_examples"])
    assert (row["dev_accuracy_ci_low"], row["dev_accuracy_ci_high"]) == pytest.approx(
        wilson_reference(k, int(row["dev_examples"])))
    assert row["kd_gain_ci_low"] <= row["kd_gain"] <= row["kd_gain_ci_high"]
    assert row["retention_dev"] == pytest.approx(row["dev_accuracy"] / row["teacher_dev_accuracy"])
    assert row["speedup"] == pytest.approx(
        row["teacher_flops_per_example"] / row["flops_per_example"])


def test_indistinguishable_marks_overlapping_neighbours():
    front = pd.DataFrame({"dev_accuracy": [0.60, 0.61, 0.75, 0.90],
                          "dev_examples": [1200, 1200, 1200, 1200]})
    marked = mark_indistinguishable(front)["indistinguishable"].tolist()
    assert marked == [True, True, False, False]


def test_kd_gain_by_size_and_budgets(frame):
    sizes = kd_gain_by_size(frame)
    complete = frame[frame["state"] == "COMPLETE"]
    assert sizes["trials"].sum() == len(complete)
    for _, row in sizes.iterrows():
        same = complete[(complete["num_layers"] == row["num_layers"])
                        & (complete["hidden_size"] == row["hidden_size"])]
        assert row["dev_accuracy"] == same["dev_accuracy"].max()
    budgets = best_under_budgets(frame)
    assert budgets["budget"].tolist() == [0.5, 0.25, 0.1]
    teacher_flops = complete["teacher_flops_per_example"].iloc[0]
    for _, row in budgets.dropna(subset=["trial"]).iterrows():
        fits = complete[complete["flops_per_example"] <= row["budget"] * teacher_flops]
        assert row["dev_accuracy"] == fits["dev_accuracy"].max()


def test_report_renders_and_refuses_empty_studies(frame):
    report = build_report(frame, "params")
    text = render_markdown(report, "journal:x")
    assert "teacher (reference)" in text and "parameters (count)" in text
    assert "12 complete, 1 pruned, 1 failed" in render_text(report)
    with pytest.raises(NoCompleteTrials, match="no complete trial"):
        build_report(frame[frame["state"] != "COMPLETE"], study_name="empty")


def plotted_line(ax, label: str) -> np.ndarray:
    """The (x, y) points of the one line drawn with ``label``."""
    (line,) = [line for line in ax.get_lines() if line.get_label() == label]
    return line.get_xydata()


def points(table: pd.DataFrame, x: str, y: str = "dev_accuracy") -> np.ndarray:
    return table[[x, y]].to_numpy(dtype=np.float64)


def test_plotted_front_is_the_reports_front(frame):
    # A repeat of the cheapest trial, more accurate than any trial: were repeats ranked, it
    # would be on the single-run front (and alone at its cost).
    complete = frame[frame["state"] == "COMPLETE"]
    cheapest = complete.sort_values("flops_per_example").iloc[0]
    repeat = {**cheapest.to_dict(), "trial": len(frame), "repeat_of": cheapest["trial"],
              "seed": 1, "dev_accuracy": 0.99}
    with_repeat = pd.concat([frame, pd.DataFrame([repeat])], ignore_index=True)
    report = build_report(with_repeat)
    expected = points(pareto_front(frame), "flops_per_example")  # the search trials' front
    assert 0.99 not in expected[:, 1]
    np.testing.assert_array_equal(points(report.front, "flops_per_example"), expected)
    figure = plot_front(with_repeat)
    assert isinstance(figure, Figure)
    (ax,) = figure.axes
    assert ax.get_xscale() == "log"
    np.testing.assert_array_equal(
        plotted_line(ax, "KD student: Pareto front (95% intervals)"), expected)
    (bars,) = [c for c in ax.containers if c.lines[0].get_marker() == "o"]  # its intervals
    np.testing.assert_array_equal(bars.lines[0].get_xydata(), expected)
    np.testing.assert_array_equal(
        plotted_line(ax, "confirmed front: mean over fresh seeds (95% intervals over seeds)"),
        points(report.confirmed[report.confirmed["confirmed"]], "flops_per_example",
               "dev_accuracy_mean"))
    (trials,) = [c for c in ax.collections
                 if c.get_label() == f"KD student: trials ({len(complete)})"]
    assert sorted(map(tuple, np.asarray(trials.get_offsets()))) == sorted(
        map(tuple, points(complete, "flops_per_example")))


def test_comparison_and_kd_gain_plots_draw_each_studys_numbers(frame, study_storage):
    other = load_study_frame("other", study_storage)
    # By hand: on parameters trial 1 is cheapest, on FLOPs trial 0 dominates both others.
    hand = pd.DataFrame({"trial": [0, 1, 2], "state": ["COMPLETE"] * 3,
                         "dev_accuracy": [0.7, 0.6, 0.5], "flops_per_example": [1e6, 2e6, 3e6],
                         "params": [1e4, 1e3, 5e3]})
    (ax,) = plot_comparison({"smoke": frame, "other": other, "hand": hand}, "params").axes
    for label, study in (("smoke", frame), ("other", other)):
        np.testing.assert_array_equal(plotted_line(ax, f"{label}: Pareto front (95% intervals)"),
                                      points(pareto_front(study, "params"), "params"))
    np.testing.assert_array_equal(plotted_line(ax, "hand: Pareto front (95% intervals)"),
                                  [[1e3, 0.6], [1e4, 0.7]])
    complete = frame[frame["state"] == "COMPLETE"]
    figure = plot_kd_gain_vs_params(frame)
    for ax, name in zip(figure.axes, ("T", "T_s", "alpha")):  # the colour bar's axes last
        (scatter,) = ax.collections[1:]  # after the error bars
        assert sorted(map(tuple, np.asarray(scatter.get_offsets()))) == sorted(
            map(tuple, points(complete, name, "kd_gain")))


def test_report_of_one_trial_without_teacher_fields():
    frame = pd.DataFrame({"trial": [0, 1], "state": ["COMPLETE", "FAIL"],
                          "dev_accuracy": [0.7, np.nan], "flops_per_example": [1e8, np.nan],
                          "num_layers": [2, np.nan], "hidden_size": [128, np.nan]})
    report = build_report(frame, study_name="tiny")
    assert report.front["trial"].tolist() == [0] and not report.teacher
    assert report.hypervolume == pytest.approx(0.7 * 0.1e8)
    text = render_markdown(report)
    assert "teacher (reference)" not in text and "none fits" in text
    assert plot_front(frame).axes
