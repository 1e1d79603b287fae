"""The front of dev accuracy against FLOPs per example: what the confirmation repeats
(``harness.sweep.confirm``), which saved students the driver keeps, and (``pareto_mask``)
every front of the report (``analysis.front``, whose docstring gives the dominance rule:
all copies of a non-dominated point are on the front).
"""

from __future__ import annotations

import numpy as np
from optuna.trial import FrozenTrial


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


def front_trials(trials: list[FrozenTrial],
                 accuracy_name: str = "dev_accuracy") -> list[FrozenTrial]:
    """The ``trials`` on the front of dev accuracy (or ``accuracy_name``) against FLOPs, in
    their order; a trial missing either never is."""
    accuracy = [t.user_attrs.get(accuracy_name, np.nan) for t in trials]
    flops = [t.user_attrs.get("flops_per_example", np.nan) for t in trials]
    return [t for t, on_front in zip(trials, pareto_mask(accuracy, flops)) if on_front]
