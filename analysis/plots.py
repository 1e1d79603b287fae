"""Accuracy-versus-compute plots (matplotlib; figures render with Agg, no display needed).

- ``plot_front``: every complete trial, the Pareto front as a step line with its 95%
  intervals, the front confirmed over seeds with intervals over seeds (if the study has
  repeats), the teacher and the label-only baselines marked, on a log compute axis;
- ``plot_comparison``: the fronts of several studies on one axis;
- ``plot_kd_gain_vs_params``: KD gain against T, T_s and alpha;
- ``png_bytes``: a figure as PNG bytes, for writing atomically.

Each takes the study DataFrame of ``analysis.frame`` and returns a ``Figure``; only
COMPLETE rows are drawn. Figures are built with ``matplotlib.figure.Figure``, not pyplot,
so no GUI backend is touched, nothing global holds them, and ``fig.savefig`` renders
with Agg. In a notebook, ``display(fig)`` shows one.
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from analysis import stats
from analysis.frame import column, complete_trials
from analysis.front import (AXIS_LABELS, TEACHER_COLUMNS, check_axis, label_only_front,
                            pareto_front, teacher_reference)
from analysis.seeds import by_configuration, confirmed_front, search_rows

Y_LABEL = "dev accuracy"


def _draw_front(ax, frame: pd.DataFrame, x: str, color, label: str) -> None:
    """Trials as points, the front as a step line with interval bars."""
    complete = complete_trials(frame)
    ax.scatter(column(complete, x), column(complete, "dev_accuracy"), s=18,
               color=color, alpha=0.35, label=f"{label}: trials ({len(complete)})")
    front = pareto_front(stats.add_intervals(frame), x)  # cluster-robust where grouped
    xs, ys = column(front, x), column(front, "dev_accuracy")
    low, high = column(front, "dev_accuracy_ci_low"), column(front, "dev_accuracy_ci_high")
    # The front is attained from each member's cost up to the next member's: steps "post".
    ax.step(xs, ys, where="post", color=color, linewidth=1.8,
            label=f"{label}: Pareto front (95% intervals)")
    ax.errorbar(xs, ys, yerr=_yerr(ys, low, high), fmt="o", color=color, markersize=5,
                capsize=3)


def _yerr(ys, low, high):
    """Error-bar lengths (zero where the interval is unknown)."""
    return np.nan_to_num(np.vstack([ys - low, high - ys]), nan=0.0)


def _draw_teacher(ax, frame: pd.DataFrame, x: str, color="black", label="teacher") -> None:
    teacher = teacher_reference(frame)
    cost = teacher.get(TEACHER_COLUMNS.get(x, ""), np.nan)
    acc = teacher.get("teacher_dev_accuracy", np.nan)
    if not np.isfinite(acc):
        return
    low, high = stats.accuracy_interval(acc, teacher.get("dev_examples", np.nan))
    ax.axhline(acc, color=color, linestyle=":", linewidth=1, label=f"{label} dev accuracy")
    if np.isfinite(cost):
        ax.errorbar([cost], [acc], yerr=_yerr(np.array([acc]), low, high), fmt="*",
                    color=color, markersize=14, capsize=3)


def _draw_baselines(ax, frame: pd.DataFrame, x: str) -> None:
    """Label-only baselines: one point per distinct (cost, baseline accuracy), and their
    front as a step line: what distillation has to beat at each cost."""
    complete = complete_trials(frame)
    points = pd.DataFrame({"x": column(complete, x),
                           "y": column(complete, "baseline_dev_accuracy")})
    points = points.dropna().drop_duplicates()
    if points.empty:
        return
    ax.scatter(points["x"], points["y"], marker="x", s=40, color="tab:red",
               label="label-only baseline (same size)")
    front = label_only_front(search_rows(frame), x)
    if not front.empty:
        ax.step(column(front, x), column(front, "baseline_dev_accuracy"), where="post",
                color="tab:red", linewidth=1.4, linestyle="--", label="label-only front")


def _finish(ax, x: str, title: str | None) -> None:
    ax.set_xscale("log")
    ax.set_xlabel(f"{AXIS_LABELS[x]} (log scale)")
    ax.set_ylabel(Y_LABEL)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title)


def _draw_confirmed(ax, frame: pd.DataFrame, x: str) -> None:
    """The front on means over fresh seeds, with the Student-t intervals over them; a member
    without fresh runs (unconfirmed) has no mean to draw."""
    confirmed = confirmed_front(by_configuration(frame), x)
    if confirmed.empty:
        return
    confirmed = confirmed[confirmed["confirmed"]]
    xs, ys = column(confirmed, x), column(confirmed, "dev_accuracy_mean")
    low, high = (column(confirmed, "dev_accuracy_mean_low"),
                 column(confirmed, "dev_accuracy_mean_high"))
    ax.step(xs, ys, where="post", color="tab:green", linewidth=1.8,
            label="confirmed front: mean over fresh seeds (95% intervals over seeds)")
    ax.errorbar(xs, ys, yerr=_yerr(ys, low, high), fmt="s", color="tab:green",
                markersize=5, capsize=3)


def plot_front(frame: pd.DataFrame, x: str = "flops_per_example",
               title: str | None = None) -> Figure:
    """Accuracy vs ``x`` for one study: trials, the single-run front, the front confirmed
    over seeds (when the study has repeats), teacher and baselines."""
    check_axis(x)
    fig = Figure(figsize=(9, 6), dpi=100, layout="constrained")
    ax = fig.subplots()
    _draw_baselines(ax, frame, x)
    _draw_front(ax, search_rows(frame), x, "tab:blue", "KD student")
    _draw_confirmed(ax, frame, x)
    _draw_teacher(ax, frame, x)
    _finish(ax, x, title or _title(frame, "Pareto front (chosen on dev accuracy)"))
    return fig


def plot_comparison(frames: dict[str, pd.DataFrame], x: str = "flops_per_example",
                    title: str | None = None) -> Figure:
    """The fronts of several studies (label -> study frame) on one log axis."""
    check_axis(x)
    if not frames:
        raise ValueError("plot_comparison needs at least one study frame")
    fig = Figure(figsize=(9, 6), dpi=100, layout="constrained")
    ax = fig.subplots()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, frame), color in zip(frames.items(), colors * len(frames)):
        _draw_front(ax, frame, x, color, label)
        _draw_teacher(ax, frame, x, color=color, label=f"{label}: teacher")
    _finish(ax, x, title or "Pareto fronts: " + " vs ".join(frames))
    return fig


def plot_kd_gain_vs_params(frame: pd.DataFrame, params=("T", "T_s", "alpha")) -> Figure:
    """KD gain (dev, with its paired 95% interval) against each parameter, coloured by size."""
    complete = stats.add_intervals(complete_trials(frame))
    fig = Figure(figsize=(4.5 * len(params), 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(params), sharey=True, squeeze=False)
    gain = column(complete, "kd_gain")
    size = column(complete, "flops_per_example")
    for ax, name in zip(axes[0], params):
        values = column(complete, name)
        ax.errorbar(values, gain, fmt="none", ecolor="grey", alpha=0.4,
                    yerr=_yerr(gain, column(complete, "kd_gain_ci_low"),
                               column(complete, "kd_gain_ci_high")))
        points = ax.scatter(values, gain, c=np.log10(size), cmap="viridis", s=24)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel(name)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("KD gain over label-only baseline (dev, accuracy)")
    fig.colorbar(points, ax=axes[0].tolist(), label="log10 forward FLOPs per example")
    return fig


def _title(frame: pd.DataFrame, what: str) -> str:
    name = frame.attrs.get("study_name")
    return f"{what}: {name}" if name else what


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
