"""Tables a researcher reads: intervals, retention, speed-up, KD gain per size, budgets.

Pure functions on the DataFrame of ``analysis.frame`` (one row per trial). Columns they
add, beside the stored fields:

- ``<acc>_ci_low`` / ``<acc>_ci_high``: 95% Wilson interval of ``dev_accuracy``,
  ``test_accuracy``, ``baseline_dev_accuracy``, ``baseline_test_accuracy`` over the
  ``dev_examples`` / ``test_examples`` examples;
- ``kd_gain_ci_low`` / ``kd_gain_ci_high``: paired interval of the KD student minus its
  label-only baseline on the same dev examples, from the discordant counts
  (``analysis.stats.paired_difference_interval``); ``kd_gain_test`` and its interval the
  same on test (reported, never used to choose anything);
- ``retention_dev`` / ``retention_test``: student accuracy / teacher accuracy;
- ``speedup``: teacher FLOPs per example / student FLOPs per example;
- on a front, ``indistinguishable``: True when the 95% interval of the dev-accuracy
  difference to an adjacent front member (next cheaper or next dearer) contains 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import stats
from analysis.front import ACCURACY, check_axis, pareto_front

#: The teacher's value on each compute axis (the teacher has no training-FLOPs figure).
TEACHER_COLUMNS = {"flops_per_example": "teacher_flops_per_example",
                   "params": "teacher_params", "latency_ms": "teacher_latency_ms"}
BUDGETS = (0.5, 0.25, 0.1)
_ACCURACIES = {"dev_accuracy": "dev_examples", "test_accuracy": "test_examples",
               "baseline_dev_accuracy": "dev_examples",
               "baseline_test_accuracy": "test_examples"}
SIZE = ["num_layers", "hidden_size"]


def column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A column as float64; all NaN when the study did not store it."""
    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    values = pd.to_numeric(frame[name], errors="coerce")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def add_intervals(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with the interval, retention and speed-up columns described above."""
    out = frame.copy()
    for name, n_name in _ACCURACIES.items():
        low, high = stats.accuracy_interval(column(out, name), column(out, n_name))
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    for split, suffix in (("dev", ""), ("test", "_test")):
        low, high, gain = _paired_gain(out, split)
        # The dev gain is stored as kd_gain; the test one (and a missing dev one) is derived.
        if suffix or "kd_gain" not in out.columns:
            out[f"kd_gain{suffix}"] = gain
        out[f"kd_gain{suffix}_ci_low"], out[f"kd_gain{suffix}_ci_high"] = low, high
    with np.errstate(invalid="ignore", divide="ignore"):
        out["retention_dev"] = column(out, "dev_accuracy") / column(out, "teacher_dev_accuracy")
        out["retention_test"] = (column(out, "test_accuracy")
                                 / column(out, "teacher_test_accuracy"))
        out["speedup"] = (column(out, "teacher_flops_per_example")
                          / column(out, "flops_per_example"))
    return out


def _paired_gain(frame: pd.DataFrame, split: str):
    """Paired interval of KD minus baseline on ``split``, and the gain ``(b - c) / n``."""
    n = column(frame, f"{split}_examples")
    kd_correct = stats.correct_count(column(frame, f"{split}_accuracy"), n)
    kd_only = column(frame, f"kd_only_correct_{split}")
    base_only = column(frame, f"baseline_only_correct_{split}")
    low, high = stats.paired_difference_interval(kd_correct, kd_only, base_only, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = column(frame, f"{split}_accuracy") - column(frame, f"baseline_{split}_accuracy")
    return low, high, gain


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


def front_table(frame: pd.DataFrame, x: str = "flops_per_example") -> pd.DataFrame:
    """Front of complete trials on dev accuracy vs ``x``, with intervals and marks."""
    check_axis(x)
    return mark_indistinguishable(pareto_front(add_intervals(frame), x))


def teacher_reference(frame: pd.DataFrame) -> dict[str, float]:
    """The teacher's stored numbers (first value found on a complete trial), or {}."""
    names = ["teacher_dev_accuracy", "teacher_test_accuracy", "teacher_flops_per_example",
             "teacher_params", "teacher_latency_ms", "dev_examples", "test_examples"]
    complete = frame[frame["state"] == "COMPLETE"] if "state" in frame.columns else frame
    found = {}
    for name in names:
        values = column(complete, name)
        values = values[np.isfinite(values)]
        if values.size:
            found[name] = float(values[0])
    return found if "teacher_dev_accuracy" in found else {}


def kd_gain_by_size(frame: pd.DataFrame) -> pd.DataFrame:
    """Per student size (num_layers, hidden_size): its best KD trial on dev against its baseline.

    ``trials`` counts the complete trials of that size and ``mean_kd_gain`` averages
    their dev gain. The best of several trials is chosen on dev, which flatters its dev
    gain; its test gain (``kd_gain_test``, on examples no choice has seen) is the check.
    """
    complete = add_intervals(frame[frame["state"] == "COMPLETE"])
    if complete.empty or any(name not in complete.columns for name in SIZE):
        return pd.DataFrame()
    rows = []
    for _, group in complete.groupby(SIZE, sort=True):
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
    complete = add_intervals(frame[frame["state"] == "COMPLETE"])
    cost = column(complete, axis)
    rows = []
    for fraction in fractions:
        limit = fraction * teacher_cost
        fits = complete[cost <= limit]
        row = _best(fits).to_dict() if len(fits) else {}
        rows.append({"budget": fraction, "budget_limit": limit, **row})
    return pd.DataFrame(rows)
