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

METRICS = ("dev_accuracy", "test_accuracy", "kd_gain", "kd_gain_test", "teacher_agreement",
           "baseline_dev_accuracy", "baseline_test_accuracy")
#: Shares of the teacher's forward FLOPs per example that ``kd_answer`` answers for.
BANDS = (1 / 10, 1 / 3)


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


def kd_answer(frame: pd.DataFrame, summary: pd.DataFrame, bands=BANDS) -> pd.DataFrame:
    """Does distillation pay within each band of compute, on ``frame``'s configurations
    (``summary``: its ``by_configuration``)? One row per band (``band``: a
    share of the teacher's FLOPs per example): among configurations with fresh runs that
    cost at most that share, the best distilled one (``kd_*``: highest mean dev accuracy over
    fresh seeds) and the best label-only one (``label_*``: highest mean baseline dev
    accuracy), their means, and the KD gain between them on dev and on test
    (``gain``/``gain_test`` with ``_low``/``_high``): over the paired per-seed gains where
    both are one configuration, else Welch's interval between the two sets of fresh runs.
    ``verdict`` / ``verdict_test``: "pays" or "costs" where that split's interval excludes
    0, else "not shown"."""
    complete = stats.add_intervals(complete_trials(frame))
    complete = complete.assign(configuration=configuration_of(complete))
    rows = []
    for band in bands:
        row = {"band": band}
        if not summary.empty:
            share = column(summary, "flops_per_example") / column(summary,
                                                                  "teacher_flops_per_example")
            fits = summary[(column(summary, "seeds") > 0) & (share <= band)]
            if not fits.empty:
                kd = fits.iloc[int(np.nanargmax(column(fits, "dev_accuracy_mean")))]
                label = fits.iloc[int(np.nanargmax(column(fits, "baseline_dev_accuracy_mean")))]
                row.update(_answer(complete, kd, label))
        rows.append(row)
    return pd.DataFrame(rows)


def _answer(complete: pd.DataFrame, kd: pd.Series, label: pd.Series) -> dict:
    """One band's row; ``complete``: every complete run with its ``configuration``."""
    def fresh(configuration, metric: str) -> np.ndarray:
        runs = complete[(complete["configuration"] == configuration)
                        & (complete["trial"] != configuration)]
        return column(runs, metric)

    row = {}
    for prefix, chosen, accuracy in (("kd", kd, "dev_accuracy"),
                                     ("label", label, "baseline_dev_accuracy")):
        row.update({f"{prefix}_trial": chosen["trial"], f"{prefix}_seeds": chosen["seeds"],
                    f"{prefix}_num_layers": chosen.get("num_layers"),
                    f"{prefix}_hidden_size": chosen.get("hidden_size"),
                    f"{prefix}_flops_per_example": chosen["flops_per_example"]})
        for split in ("dev", "test"):
            name = accuracy.replace("dev", split)
            row.update({f"{prefix}_{split}_{end}": chosen[f"{name}_mean{suffix}"]
                        for end, suffix in (("mean", ""), ("low", "_low"), ("high", "_high"))})
    for split, gain in (("dev", "gain"), ("test", "gain_test")):
        if kd["trial"] == label["trial"]:  # the gain paired by seed, as by_configuration has it
            paired = "kd_gain" if split == "dev" else "kd_gain_test"
            mean, low, high = (kd[f"{paired}_mean{suffix}"] for suffix in ("", "_low", "_high"))
        else:
            mean, low, high = welch_interval(fresh(kd["trial"], f"{split}_accuracy"),
                                             fresh(label["trial"], f"baseline_{split}_accuracy"))
        row.update({gain: mean, f"{gain}_low": low, f"{gain}_high": high})
    for gain, verdict in (("gain", "verdict"), ("gain_test", "verdict_test")):
        row[verdict] = ("pays" if row[f"{gain}_low"] > 0 else "costs"
                        if row[f"{gain}_high"] < 0 else "not shown")
    return row


def welch_interval(first, second, confidence: float = stats.CONFIDENCE):
    """(difference of means, low, high) of two independent samples: Welch's t interval
    (NaN bounds unless both have two values or more)."""
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    first, second = first[np.isfinite(first)], second[np.isfinite(second)]
    if first.size == 0 or second.size == 0:
        return np.nan, np.nan, np.nan
    difference = float(first.mean() - second.mean())
    if first.size < 2 or second.size < 2:
        return difference, np.nan, np.nan
    a, b = first.var(ddof=1) / first.size, second.var(ddof=1) / second.size
    if a + b == 0:
        return difference, difference, difference
    df = (a + b) ** 2 / (a ** 2 / (first.size - 1) + b ** 2 / (second.size - 1))
    half = scipy_stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(a + b)
    return difference, difference - half, difference + half


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
