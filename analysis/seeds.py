"""Configurations confirmed over seeds (``confirm``): per configuration, the mean and 95%
interval over seeds, and the front on those means.

A configuration is a search trial and its repeats (the trials whose ``repeat_of`` names
it, each on a fresh seed); it is known by the search trial's number. Over its ``seeds``
complete fresh runs, every metric of ``METRICS`` gets ``<metric>_mean`` and a Student-t
interval ``<metric>_mean_low`` / ``<metric>_mean_high`` = mean -+ t(0.975, n - 1) * sd /
sqrt(n) (none with one seed). The search run is never averaged in: it was selected as the
best of many noisy runs, so it would carry the winner's curse into the mean; its own
values stay in the row's plain columns. The KD gain is paired by seed: each run's gain is
against the label-only baseline trained on that run's seed.

The single-run front (``analysis.front``) is drawn on search trials alone, so a lucky
repeat cannot enter it; ``confirmed_front`` is drawn on the means, a configuration without
fresh runs standing in with its search run and marked ``confirmed: False``
(``harness.sweep.confirm`` confirms such members in a next round).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from analysis import stats
from analysis.frame import column, complete_trials
from analysis.front import ACCURACY, check_axis, pareto_mask
from harness.sweep.confirm import REPEAT_OF

METRICS = ("dev_accuracy", "test_accuracy", "kd_gain", "kd_gain_test", "teacher_agreement")


def search_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of search trials: every row but the repeats."""
    if REPEAT_OF not in frame.columns:
        return frame
    return frame[frame[REPEAT_OF].isna()].reset_index(drop=True)


def configuration_of(frame: pd.DataFrame) -> np.ndarray:
    """Each row's configuration: ``repeat_of`` for a repeat, its own trial number else."""
    repeat_of = column(frame, REPEAT_OF)
    return np.where(np.isfinite(repeat_of), repeat_of, column(frame, "trial"))


def mean_interval(values, confidence: float = stats.CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of the finite ``values``; a Student-t interval over them (NaN
    bounds with fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.nan, np.nan, np.nan
    mean = float(values.mean())
    if values.size < 2:
        return mean, np.nan, np.nan
    half = (scipy_stats.t.ppf(0.5 + confidence / 2, values.size - 1)
            * values.std(ddof=1) / np.sqrt(values.size))
    return mean, mean - half, mean + half


def by_configuration(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration with a complete search run: that run's fields (its
    parameters, size, compute and scores), ``seeds`` (complete fresh runs) and the means and
    intervals over those of ``METRICS`` (NaN without fresh runs)."""
    complete = stats.add_intervals(complete_trials(frame))  # adds kd_gain_test
    if complete.empty:
        return pd.DataFrame()
    complete["configuration"] = configuration_of(complete)
    first_runs = search_rows(complete).set_index("trial", drop=False)
    rows = []
    for configuration, runs in complete.groupby("configuration", sort=True):
        if configuration not in first_runs.index:
            continue  # repeats of a trial that is not complete: nothing to attach them to
        row = first_runs.loc[configuration].to_dict()
        fresh = runs[runs["trial"] != configuration]
        row["seeds"] = len(fresh)
        for metric in METRICS:
            (row[f"{metric}_mean"], row[f"{metric}_mean_low"],
             row[f"{metric}_mean_high"]) = mean_interval(column(fresh, metric))
        rows.append(row)
    return pd.DataFrame(rows).drop(columns="configuration").reset_index(drop=True)


def confirmed_front(summary: pd.DataFrame, x: str = "flops_per_example") -> pd.DataFrame:
    """The front of configurations (``by_configuration``'s rows) on mean dev accuracy over
    fresh runs against ``x``, cheapest first, a configuration without fresh runs standing in
    with its search run (``confirmed`` False); empty when no configuration has a fresh run."""
    check_axis(x)
    if summary.empty or not (column(summary, "seeds") > 0).any():
        return pd.DataFrame()
    confirmed = column(summary, "seeds") > 0
    accuracy = np.where(confirmed, column(summary, f"{ACCURACY}_mean"),
                        column(summary, ACCURACY))
    on_front = pareto_mask(accuracy, column(summary, x))
    front = summary.assign(confirmed=confirmed)[on_front]
    return front.sort_values([x, "trial"], kind="stable").reset_index(drop=True)


def with_seed_columns(front: pd.DataFrame, summary: pd.DataFrame,
                      confirmed: pd.DataFrame) -> pd.DataFrame:
    """The single-run ``front`` with its configurations' ``seeds``, means and intervals (from
    ``summary``), and ``held``: whether the configuration is on the ``confirmed`` front
    (NaN when nothing was repeated)."""
    if front.empty or summary.empty:
        return front
    added = [c for c in summary.columns if c == "seeds" or c.endswith(
        ("_mean", "_mean_low", "_mean_high"))]
    out = front.merge(summary[["trial", *added]], on="trial", how="left")
    out["held"] = (out["trial"].isin(confirmed["trial"]) if not confirmed.empty
                   else np.nan)
    return out
