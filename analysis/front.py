"""Pareto front of accuracy (maximised) against a compute cost (minimised), and its hypervolume.

Pure functions on arrays and DataFrames; no Optuna here.

Dominance: point j dominates point i when ``accuracy_j >= accuracy_i`` and
``cost_j <= cost_i`` with at least one of the two strict. Exact duplicates (same accuracy
and same cost) therefore do not dominate each other: **all copies of a non-dominated point
are on the front** (as in Optuna's ``study.best_trials``), so two trials that tie stay
visible in the report. Points whose accuracy or cost is NaN or infinite are never on the
front and never dominate anything.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Compute axes a front can be drawn against; all are "lower is better".
AXES = ("flops_per_example", "params", "latency_ms", "train_flops")
#: How each axis is labelled in tables and plots, with its unit.
AXIS_LABELS = {"flops_per_example": "forward FLOPs per example",
               "params": "parameters (count)",
               "latency_ms": "latency (ms)",
               "train_flops": "training FLOPs (total)"}
ACCURACY = "dev_accuracy"


def check_axis(x: str) -> str:
    """``x`` if it is a known compute axis, else a ValueError naming the valid ones."""
    if x not in AXES:
        raise ValueError(f"unknown compute axis {x!r}; valid axes: {', '.join(AXES)}")
    return x


def pareto_mask(accuracy, cost) -> np.ndarray:
    """Boolean mask of the non-dominated points (higher accuracy, lower cost is better).

    O(n log n): sort by cost; a point is dominated when a strictly cheaper point is at
    least as accurate, or a point of the same cost is strictly more accurate.
    """
    acc = np.asarray(accuracy, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    if acc.shape != cost.shape or acc.ndim != 1:
        raise ValueError("accuracy and cost must be 1-D arrays of the same length")
    valid = np.isfinite(acc) & np.isfinite(cost)
    mask = np.zeros(acc.shape, dtype=bool)
    index = np.flatnonzero(valid)
    if index.size == 0:
        return mask
    order = index[np.argsort(cost[index], kind="stable")]
    sorted_cost, sorted_acc = cost[order], acc[order]
    # Groups of equal cost: their start offsets and each group's best accuracy.
    starts = np.flatnonzero(np.r_[True, sorted_cost[1:] != sorted_cost[:-1]])
    group_best = np.maximum.reduceat(sorted_acc, starts)
    # Best accuracy among strictly cheaper groups (-inf for the cheapest group).
    cheaper_best = np.r_[-np.inf, np.maximum.accumulate(group_best)[:-1]]
    group_of = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, sorted_acc.size]))
    keep = (sorted_acc > cheaper_best[group_of]) & (sorted_acc >= group_best[group_of])
    mask[order] = keep
    return mask


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
    xs, ys = _numeric(out, x), _numeric(out, y)
    candidates = np.isfinite(xs) & np.isfinite(ys)
    if "state" in out.columns:
        candidates &= (out["state"] == "COMPLETE").to_numpy()
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


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64 (NaN where missing or not a number; all NaN if absent)."""
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    values = pd.to_numeric(frame[column], errors="coerce")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)
