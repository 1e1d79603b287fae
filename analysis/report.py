"""A study's Pareto report: the tables in one object, rendered as markdown or plain text.

    report = build_report(load_study_frame("demo", "journal:runs/optuna.journal"))
    print(render_text(report))

Accuracies are printed in percent with their 95% Wilson interval; KD gains in accuracy
points with the paired interval (see ``analysis.stats``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import stats, tables
from analysis.frame import state_counts, state_summary
from analysis.front import AXIS_LABELS, check_axis, default_ref_cost, hypervolume


class NoCompleteTrials(ValueError):
    """A study with no complete trial that has both dev accuracy and the compute axis."""


@dataclass(frozen=True)
class Report:
    """Everything the report shows; DataFrames hold the stored fields plus derived columns."""

    study_name: str
    x: str
    counts: dict[str, int]
    summary: str              # "N complete, M pruned, K failed"
    front: pd.DataFrame       # cheapest first, with intervals and ``indistinguishable``
    sizes: pd.DataFrame       # best trial per (num_layers, hidden_size)
    budgets: pd.DataFrame     # best trial per fraction of the teacher's FLOPs
    teacher: dict[str, float]
    hypervolume: float        # in accuracy x axis units, reference (0, ref_cost)
    ref_cost: float


def build_report(frame: pd.DataFrame, x: str = "flops_per_example",
                 study_name: str | None = None) -> Report:
    """The report of one study frame; NoCompleteTrials when there is nothing to rank."""
    check_axis(x)
    name = study_name or frame.attrs.get("study_name", "study")
    front = tables.front_table(frame, x)
    if front.empty:
        raise NoCompleteTrials(f"study {name!r} has no complete trial with dev_accuracy and "
                               f"{x} ({state_summary(frame)}); nothing to report")
    complete = frame[frame["state"] == "COMPLETE"]
    costs = tables.column(complete, x)
    ref_cost = default_ref_cost(costs)
    area = hypervolume(tables.column(complete, "dev_accuracy"), costs, 0.0, ref_cost)
    return Report(study_name=name, x=x, counts=state_counts(frame),
                  summary=state_summary(frame), front=front,
                  sizes=tables.kd_gain_by_size(frame),
                  budgets=tables.best_under_budgets(frame),
                  teacher=tables.teacher_reference(frame), hypervolume=area, ref_cost=ref_cost)


# ---- cell formatting -------------------------------------------------------------------


def percent(value, low=np.nan, high=np.nan) -> str:
    """``"80.3 [78.0, 82.5]"``: an accuracy in percent with its interval (if known)."""
    if not np.isfinite(value):
        return "n/a"
    text = f"{100 * value:.1f}"
    return text + (f" [{100 * low:.1f}, {100 * high:.1f}]" if np.isfinite(low) else "")


def points(value, low=np.nan, high=np.nan) -> str:
    """``"+2.6 [+0.9, +4.3]"``: a difference in accuracy points with its interval."""
    if not np.isfinite(value):
        return "n/a"
    text = f"{100 * value:+.1f}"
    return text + (f" [{100 * low:+.1f}, {100 * high:+.1f}]" if np.isfinite(low) else "")


def number(value, digits: int = 3) -> str:
    """A compact number: ``5.45e+09`` for large values, ``0.731`` for small ones."""
    if value is None or not np.isfinite(value):
        return "n/a"
    if abs(value) >= 1e4:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def times(value) -> str:
    """``"4.01x"``: a speed-up factor."""
    return f"{number(value)}x" if np.isfinite(value) else "n/a"


def _get(row, name) -> float:
    value = pd.to_numeric(pd.Series([row.get(name, np.nan)]), errors="coerce").iloc[0]
    return float(value) if pd.notna(value) else np.nan


def _interval(row, name, fmt=percent) -> str:
    return fmt(_get(row, name), _get(row, f"{name}_ci_low"), _get(row, f"{name}_ci_high"))


def _size(row) -> str:
    layers, hidden = _get(row, "num_layers"), _get(row, "hidden_size")
    return f"{layers:.0f} x {hidden:.0f}" if np.isfinite(layers + hidden) else "n/a"


# ---- tables ------------------------------------------------------------------------------


def front_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the front table, the teacher first as the reference row."""
    headers = ["trial", "layers x hidden", "T", "T_s", "alpha", AXIS_LABELS[report.x],
               "speed-up (FLOPs)", "dev acc % [95% CI]", "retention, dev %",
               "KD gain, dev, points [95% paired CI]", "test acc % [95% CI] (reported only)",
               "~ neighbour"]
    rows = [_teacher_cells(report)] if report.teacher else []
    for _, row in report.front.iterrows():
        rows.append([f"{_get(row, 'trial'):.0f}", _size(row), number(_get(row, "T")),
                     number(_get(row, "T_s")), number(_get(row, "alpha")),
                     number(_get(row, report.x)), times(_get(row, "speedup")),
                     _interval(row, "dev_accuracy"), percent(_get(row, "retention_dev")),
                     _interval(row, "kd_gain", points), _interval(row, "test_accuracy"),
                     "~" if row["indistinguishable"] else ""])
    return headers, rows


def _teacher_cells(report: Report) -> list[str]:
    teacher = report.teacher
    cost = teacher.get(tables.TEACHER_COLUMNS.get(report.x, ""), np.nan)
    cells = []
    for split in ("dev", "test"):
        acc, n = teacher.get(f"teacher_{split}_accuracy", np.nan), teacher.get(
            f"{split}_examples", np.nan)
        low, high = stats.accuracy_interval(acc, n)
        cells.append(percent(acc, float(low), float(high)))
    return ["teacher (reference)", "", "", "", "", number(cost), "1x", cells[0], "100.0",
            "", cells[1], ""]


def size_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the KD-gain-per-size table."""
    headers = ["layers x hidden", "complete trials", "best trial (on dev)",
               "baseline dev acc % [95% CI]", "KD dev acc % [95% CI]",
               "KD gain, dev, points [95% paired CI]", "KD gain, test, points [95% paired CI]",
               "mean KD gain, dev, points"]
    rows = [[_size(row), f"{_get(row, 'trials'):.0f}", f"{_get(row, 'trial'):.0f}",
             _interval(row, "baseline_dev_accuracy"), _interval(row, "dev_accuracy"),
             _interval(row, "kd_gain", points), _interval(row, "kd_gain_test", points),
             points(_get(row, "mean_kd_gain"))] for _, row in report.sizes.iterrows()]
    return headers, rows


def budget_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the best-student-under-budget table."""
    headers = ["budget (share of teacher FLOPs)", "FLOPs limit", "trial", "layers x hidden",
               "forward FLOPs per example", "dev acc % [95% CI]", "retention, dev %",
               "test acc % [95% CI] (reported only)"]
    rows = []
    for _, row in report.budgets.iterrows():
        if not np.isfinite(_get(row, "trial")):
            rows.append([f"{100 * row['budget']:.0f}%", number(_get(row, "budget_limit")),
                         "none fits", "", "", "", "", ""])
            continue
        rows.append([f"{100 * row['budget']:.0f}%", number(_get(row, "budget_limit")),
                     f"{_get(row, 'trial'):.0f}", _size(row),
                     number(_get(row, "flops_per_example")), _interval(row, "dev_accuracy"),
                     percent(_get(row, "retention_dev")), _interval(row, "test_accuracy")])
    return headers, rows
