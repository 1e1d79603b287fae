"""Pareto front of accuracy (maximised) against a compute cost (minimised), and the tables
a researcher reads beside it: the front with its intervals, KD gain per student size,
the best student under compute budgets, and the front's hypervolume.

Pure functions on arrays and on the DataFrame of ``analysis.frame``; no Optuna here.

Dominance: point j dominates point i when ``accuracy_j >= accuracy_i`` and
``cost_j <= cost_i`` with at least one of the two strict. Exact duplicates (same accuracy
and same cost) therefore do not dominate each other: **all copies of a non-dominated point
are on the front** (as in Optuna's ``study.best_trials``), so two trials that tie stay
visible in the report. Points whose accuracy or cost is NaN or infinite are never on the
front and never dominate anything.

On a front table, ``indistinguishable`` is True when the 95% interval of the dev-accuracy
difference to an adjacent front member (next cheaper or next dearer) contains 0; the
interval, retention and speed-up columns come from ``analysis.stats.add_intervals``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from analysis import stats
from analysis.frame import column, complete_mask, complete_trials
from harness.sweep.front import pareto_mask

#: Compute axes a front can be drawn against; all are "lower is better".
AXES = ("flops_per_example", "params", "latency_ms", "train_flops", "int8_latency_ms",
        "int8_bytes", "flops_per_token")
#: How each axis is labelled in tables and plots, with its unit.
AXIS_LABELS = {"flops_per_example": "forward FLOPs per example",
               "params": "parameters (count)",
               "latency_ms": "latency (ms)",
               "train_flops": "training FLOPs (total)",
               "int8_latency_ms": "ONNX Runtime int8 latency, batch 1, 1 thread (ms)",
               "int8_bytes": "int8 ONNX file (bytes)",
               "flops_per_token": "forward FLOPs per generated token"}
DEPLOYED_ACCURACY = "int8_dev_accuracy"
ACCURACY = "dev_accuracy"
#: The teacher's value on each compute axis (the teacher has no training-FLOPs figure).
TEACHER_COLUMNS = {"flops_per_example": "teacher_flops_per_example",
                   "params": "teacher_params", "latency_ms": "teacher_latency_ms",
                   "flops_per_token": "teacher_flops_per_token"}
#: Shares of the teacher's cost that ``best_under_budgets`` looks under by default.
BUDGETS = (0.5, 0.25, 0.1)
#: The sampled fields that together name a student size.
SIZE = ["num_layers", "hidden_size"]
#: Where a study searches pre-trained students, their source tells two students of one size apart.
SOURCE = "student_source"


def check_axis(x: str) -> str:
    """``x`` if it is a known compute axis, else a ValueError naming the valid ones."""
    if x not in AXES:
        raise ValueError(f"unknown compute axis {x!r}; valid axes: {', '.join(AXES)}")
    return x


def hypervolume(accuracy, cost, ref_accuracy: float = 0.0,
                ref_cost: float | None = None) -> float:
    """Area dominated by the points and bounded by the reference point.

    The region is every (cost, accuracy) with ``cost_i <= cost <= ref_cost`` and
    ``ref_accuracy <= accuracy <= accuracy_i`` for some point i, in the units of the
    inputs (pass log10 costs for a log-axis area). Default reference: accuracy 0 and
    1.1 times the largest finite cost, so the most expensive point still adds area.
    Points not better than the reference in both coordinates add nothing.
    """
    acc = np.asarray(accuracy, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    valid = np.isfinite(acc) & np.isfinite(cost)
    acc, cost = acc[valid], cost[valid]
    if ref_cost is None:
        if cost.size == 0:
            return 0.0
        ref_cost = default_ref_cost(cost)
    inside = (acc > ref_accuracy) & (cost < ref_cost)
    acc, cost = acc[inside], cost[inside]
    front = pareto_mask(acc, cost)
    acc, cost = acc[front], cost[front]
    order = np.argsort(cost, kind="stable")
    acc, cost = acc[order], cost[order]
    # On the front accuracy rises with cost; slab i spans cost_i .. cost_{i+1} at height acc_i.
    right = np.r_[cost[1:], ref_cost]
    return float(np.sum((right - cost) * (acc - ref_accuracy)))


def default_ref_cost(cost) -> float:
    """The default reference cost: 1.1 times the largest finite cost."""
    cost = np.asarray(cost, dtype=np.float64)
    return float(1.1 * np.max(cost[np.isfinite(cost)]))


def mark_dominated(frame: pd.DataFrame, x: str = "flops_per_example",
                   y: str = ACCURACY) -> pd.DataFrame:
    """A copy of ``frame`` with a boolean ``dominated`` column (True off the front).

    Only COMPLETE trials (when a ``state`` column exists) compete; other rows and rows
    without both values are marked dominated so they never appear on the front.
    """
    check_axis(x)
    out = frame.copy()
    xs, ys = column(out, x), column(out, y)
    candidates = np.isfinite(xs) & np.isfinite(ys) & complete_mask(out)
    on_front = np.zeros(len(out), dtype=bool)
    on_front[candidates] = pareto_mask(ys[candidates], xs[candidates])
    out["dominated"] = ~on_front
    return out


def pareto_front(frame: pd.DataFrame, x: str = "flops_per_example",
                 y: str = ACCURACY) -> pd.DataFrame:
    """The front rows of ``frame``, cheapest first (ties: more accurate, then lower trial)."""
    marked = mark_dominated(frame, x, y)
    front = marked[~marked["dominated"]].drop(columns="dominated")
    if front.empty:  # also when the study never stored x or y: nothing to sort by
        return front.reset_index(drop=True)
    keys = [x, y] + (["trial"] if "trial" in front.columns else [])
    ascending = [True, False] + ([True] if "trial" in front.columns else [])
    return front.sort_values(keys, ascending=ascending, kind="stable").reset_index(drop=True)


def mark_indistinguishable(front: pd.DataFrame, y: str = ACCURACY,
                           n_name: str = "dev_examples") -> pd.DataFrame:
    """A copy of a front (cheapest first) with ``indistinguishable`` per member.

    Rule: the 95% Newcombe interval of the accuracy difference to an adjacent front
    member contains 0. The two are treated as independent samples although they are
    scored on the same examples; that makes the interval wider than a paired one, so a
    member *not* marked is reliably better than its cheaper neighbour.
    """
    out = front.reset_index(drop=True).copy()
    n = column(out, n_name)
    k = stats.correct_count(column(out, y), n)
    low, high = stats.independent_difference_interval(k[1:], n[1:], k[:-1], n[:-1])
    # Missing counts (NaN) cannot show a difference, so they count as overlapping.
    overlap = ~((low > 0) | (high < 0))
    marked = np.zeros(len(out), dtype=bool)
    marked[1:] |= overlap   # overlaps its cheaper neighbour
    marked[:-1] |= overlap  # overlaps its dearer neighbour
    out["indistinguishable"] = marked
    return out


def label_only_front(frame: pd.DataFrame, x: str = "flops_per_example") -> pd.DataFrame:
    """The front of label-only baselines (``baseline_dev_accuracy`` against ``x``), cheapest
    first: per student (size, and init and source where stored) its best baseline (trials
    of one student share baselines, except where the transfer copies, searched, change
    the baseline's budget: then the best of those budgets); what distillation has to beat
    at each cost."""
    check_axis(x)
    complete = stats.add_intervals(complete_trials(frame))
    if complete.empty or any(name not in complete.columns for name in SIZE):
        return pd.DataFrame()
    keys = SIZE + [name for name in ("init", SOURCE) if name in complete.columns]
    best = [group.assign(_acc=column(group, "baseline_dev_accuracy"))
            .sort_values(["_acc", "trial"], ascending=[False, True], kind="stable").iloc[0]
            for _, group in complete.groupby(keys, sort=True, dropna=False)]
    students = pd.DataFrame(best).drop(columns="_acc").reset_index(drop=True)
    return pareto_front(students, x, y="baseline_dev_accuracy")


def front_table(frame: pd.DataFrame, x: str = "flops_per_example") -> pd.DataFrame:
    """Front of complete trials on dev accuracy vs ``x``, with intervals and marks."""
    check_axis(x)
    return mark_indistinguishable(pareto_front(stats.add_intervals(frame), x))


def deployed_front(frame: pd.DataFrame, x: str = "int8_latency_ms") -> pd.DataFrame:
    """Front of the deployed students: int8 dev accuracy against ``x`` (int8 latency or
    bytes), with each member's int8-minus-fp32 change and its interval."""
    check_axis(x)
    return pareto_front(stats.add_intervals(frame), x, DEPLOYED_ACCURACY)


def not_deployed(frame: pd.DataFrame) -> list[tuple[int, str]]:
    """(trial, reason) of every complete trial whose student could not be deployed."""
    if "deploy_error" not in frame.columns:
        return []
    failed = complete_trials(frame).dropna(subset=["deploy_error"])
    return [(int(row["trial"]), str(row["deploy_error"])) for _, row in failed.iterrows()]


def teacher_reference(frame: pd.DataFrame) -> dict[str, float]:
    """The teacher's stored numbers (first value found on a complete trial), or {}."""
    names = ["teacher_dev_accuracy", "teacher_test_accuracy", "teacher_flops_per_example",
             "teacher_params", "teacher_latency_ms", "teacher_flops_per_token", "dev_examples",
             "test_examples"]
    complete = complete_trials(frame)
    found = {}
    for name in names:
        values = column(complete, name)
        values = values[np.isfinite(values)]
        if values.size:
            found[name] = float(values[0])
    return found if "teacher_dev_accuracy" in found else {}


def teacher_members(frame: pd.DataFrame) -> tuple[float, ...]:
    """An ensemble teacher's members' dev accuracies (``teacher.ensemble``), or ()."""
    complete = complete_trials(frame)
    if "teacher_member_dev_accuracies" not in complete.columns:
        return ()
    for stored in complete["teacher_member_dev_accuracies"]:
        if isinstance(stored, str):  # JSON text in the frame (analysis.frame)
            return tuple(json.loads(stored))
    return ()


def kd_gain_by_size(frame: pd.DataFrame) -> pd.DataFrame:
    """Per student size (num_layers, hidden_size, and source where stored): its best KD
    trial on dev against its baseline.

    ``trials`` counts the complete trials of that size and ``mean_kd_gain`` averages
    their dev gain. The best of several trials is chosen on dev, which flatters its dev
    gain; its test gain (``kd_gain_test``, on examples no choice has seen) is the check.
    """
    complete = stats.add_intervals(complete_trials(frame))
    if complete.empty or any(name not in complete.columns for name in SIZE):
        return pd.DataFrame()
    keys = SIZE + ([SOURCE] if SOURCE in complete.columns else [])
    rows = []
    for _, group in complete.groupby(keys, sort=True, dropna=False):
        best = _best(group)
        row = best.to_dict()
        row["trials"] = len(group)
        gains = column(group, "kd_gain")
        gains = gains[np.isfinite(gains)]
        row["mean_kd_gain"] = float(gains.mean()) if gains.size else np.nan
        rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True)


def _best(group: pd.DataFrame) -> pd.Series:
    """Most accurate row on dev; ties go to the cheaper, then the earlier trial."""
    ordered = group.assign(_acc=column(group, ACCURACY), _cost=column(group, "flops_per_example"))
    ordered = ordered.sort_values(["_acc", "_cost", "trial"], ascending=[False, True, True],
                                  na_position="last", kind="stable")
    return ordered.iloc[0].drop(["_acc", "_cost"])


def best_under_budgets(frame: pd.DataFrame, fractions=BUDGETS,
                       axis: str = "flops_per_example") -> pd.DataFrame:
    """Per budget, the most accurate complete trial costing at most ``fraction`` x teacher.

    One row per fraction with ``budget`` (the fraction) and ``budget_limit`` (the cost
    limit on ``axis``); the trial columns are empty where no trial fits the budget.
    """
    teacher_name = TEACHER_COLUMNS.get(check_axis(axis))
    reference = teacher_reference(frame)
    teacher_cost = reference.get(teacher_name, np.nan) if teacher_name else np.nan
    complete = stats.add_intervals(complete_trials(frame))
    cost = column(complete, axis)
    rows = []
    for fraction in fractions:
        limit = fraction * teacher_cost
        fits = complete[cost <= limit]
        row = _best(fits).to_dict() if len(fits) else {}
        rows.append({"budget": fraction, "budget_limit": limit, **row})
    return pd.DataFrame(rows)
