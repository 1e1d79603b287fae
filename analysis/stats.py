"""Confidence intervals for accuracies measured on a fixed set of examples.

A dev or test split of about 1,200 examples has a sampling error of about 1.2 accuracy
points, as large as the effects a distillation sweep studies, so every accuracy the
reports print carries a 95% interval over examples:

- one accuracy: the Wilson score interval (Wilson 1927), which stays inside [0, 1] and
  keeps close to nominal coverage near 0 and 1, unlike the Wald interval;
- a difference of two accuracies: Newcombe's hybrid score ("square-and-add") interval,
  built from the two Wilson intervals. For two models scored on the *same* examples
  (KD student against its label-only baseline) the paired version uses the 2x2 table of
  agreements and the correlation estimate ``phi`` with Newcombe's continuity correction
  (Newcombe 1998, Stat. Med. 17:2635, method 10). With ``phi = 0`` it is the interval
  for two independent samples (Newcombe 1998, Stat. Med. 17:873, method 10).

Both assume independent examples. Where the data groups its examples (the builtin data's
snippets of one movie share a film, a critic pool and a tone), examples of a group are
correlated and those intervals are too narrow; trials then store counts per group
(``dev_clusters``, ``test_clusters``) and ``add_intervals`` uses the cluster-robust interval
instead (``cluster_robust_interval``): the ratio's sandwich variance summed over groups
with the small-sample factor G / (G - 1) (CR1: Liang & Zeger 1986; the default of Stata and
of statsmodels' ``cov_type="cluster"``) and a Student-t quantile on G - 1 degrees of
freedom (Cameron & Miller 2015, J. Human Resources 50:317). It needs no random numbers,
so it is the same on every run. ``interval_method`` names which was used, per row.

The interval functions are vectorised over numpy arrays and return NaN where an input
is NaN. ``add_intervals`` applies them to a study frame (``analysis.frame``, one row per
trial) and adds, beside the stored fields:

- ``<acc>_ci_low`` / ``<acc>_ci_high``: 95% Wilson interval of ``dev_accuracy``,
  ``test_accuracy``, ``baseline_dev_accuracy``, ``baseline_test_accuracy`` over the
  ``dev_examples`` / ``test_examples`` examples;
- ``kd_gain_ci_low`` / ``kd_gain_ci_high``: paired interval of the KD student minus its
  label-only baseline on the same dev examples, from the discordant counts
  (``paired_difference_interval``) or, with groups, from each group's difference of correct
  counts; ``kd_gain_test`` and its interval the same on test (reported, never used to
  choose anything);
- ``int8_dev_change`` / ``int8_test_change`` (where the student was deployed,
  ``harness.deploy``): the int8 model's accuracy minus the fp32 student's, with Newcombe's
  paired interval from the stored discordant counts (``int8_<split>_gained`` / ``_lost``;
  per example, as no per-group counts are stored for the int8 model);
- ``interval_method``: ``"cluster-robust"`` or ``"Wilson/Newcombe"``;
- ``retention_dev`` / ``retention_test``: student accuracy / teacher accuracy;
- ``speedup``: teacher FLOPs per example / student FLOPs per example.
"""

from __future__ import annotations

from statistics import NormalDist

import json

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from analysis.frame import column

CONFIDENCE = 0.95
# Each stored accuracy and the example count it is a fraction of.
_ACCURACIES = {"dev_accuracy": "dev_examples", "test_accuracy": "test_examples",
               "baseline_dev_accuracy": "dev_examples",
               "baseline_test_accuracy": "test_examples"}


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided standard normal quantile, 1.959964 for 95%."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes, n, confidence: float = CONFIDENCE):
    """Wilson score interval ``(low, high)`` for ``successes`` out of ``n``.

    centre = (k + z^2/2) / (n + z^2),
    half   = z * sqrt(k (n - k) / n + z^2 / 4) / (n + z^2).
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z = z_value(confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = (k + z * z / 2.0) / (n + z * z)
        half = z * np.sqrt(np.maximum(k * (n - k) / n, 0.0) + z * z / 4.0) / (n + z * z)
    # At k = 0 and k = n the bound is exactly 0 or 1; rounding would leave it a hair off.
    low = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    high = np.where(k == n, 1.0, np.clip(centre + half, 0.0, 1.0))
    bad = ~(n > 0) | (k < 0) | (k > n)  # also true for NaN inputs
    return np.where(bad, np.nan, low), np.where(bad, np.nan, high)


def accuracy_interval(accuracy, n, confidence: float = CONFIDENCE):
    """Wilson interval of an accuracy stored as a fraction of ``n`` examples."""
    return wilson_interval(correct_count(accuracy, n), n, confidence)


def correct_count(accuracy, n):
    """Number of correct examples behind an accuracy (rounded: stored floats lose bits)."""
    return np.round(np.asarray(accuracy, dtype=np.float64) * np.asarray(n, dtype=np.float64))


def _square_and_add(p1, p2, n1, n2, k1, k2, phi, confidence):
    """Newcombe's interval for ``p1 - p2`` from Wilson intervals and a correlation ``phi``."""
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    diff = p1 - p2
    with np.errstate(invalid="ignore"):
        below = np.sqrt(np.maximum(
            (p1 - l1) ** 2 - 2.0 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
        above = np.sqrt(np.maximum(
            (p2 - l2) ** 2 - 2.0 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    return np.clip(diff - below, -1.0, 1.0), np.clip(diff + above, -1.0, 1.0)


def paired_difference_interval(first_correct, first_only, second_only, n,
                               confidence: float = CONFIDENCE):
    """Interval for ``accuracy_1 - accuracy_2`` of two models scored on the same ``n`` examples.

    ``first_correct`` is the number of examples model 1 got right, ``first_only`` (b) the
    examples only model 1 got right and ``second_only`` (c) those only model 2 got right;
    the difference is ``(b - c) / n``. The full 2x2 table follows: both right
    ``a = first_correct - b``, both wrong ``d = n - a - b - c``.
    """
    k1 = np.asarray(first_correct, dtype=np.float64)
    b = np.asarray(first_only, dtype=np.float64)
    c = np.asarray(second_only, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    a = k1 - b
    d = n - a - b - c
    k2 = a + c
    phi = _paired_phi(a, b, c, d, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        low, high = _square_and_add(k1 / n, k2 / n, n, n, k1, k2, phi, confidence)
    bad = (a < 0) | (d < 0) | (b < 0) | (c < 0)  # counts that cannot come from one table
    return np.where(bad, np.nan, low), np.where(bad, np.nan, high)


def _paired_phi(a, b, c, d, n):
    """Newcombe's continuity-corrected correlation of the two paired proportions.

    The numerator ``ad - bc`` is shrunk by ``n/2`` towards 0 when positive (0 when it is
    within ``n/2``), kept as is when negative; phi is 0 when a margin is empty.
    """
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    numerator = np.where(cross > n / 2.0, cross - n / 2.0, np.where(cross < 0, cross, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = numerator / np.sqrt(margins)
    return np.where(margins > 0, phi, 0.0)


def independent_difference_interval(k1, n1, k2, n2, confidence: float = CONFIDENCE):
    """Interval for ``k1/n1 - k2/n2`` treating the two samples as independent."""
    k1, n1, k2, n2 = (np.asarray(v, dtype=np.float64) for v in (k1, n1, k2, n2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return _square_and_add(k1 / n1, k2 / n2, n1, n2, k1, k2, 0.0, confidence)


def cluster_robust_interval(totals, sizes, confidence: float = CONFIDENCE,
                            bounds: tuple[float, float] = (0.0, 1.0)):
    """``(estimate, low, high)`` for ``sum(totals) / sum(sizes)`` when the examples come in
    groups: group g has ``sizes[g]`` examples whose values sum to ``totals[g]`` (correct
    predictions for an accuracy; correct minus the baseline's correct for a paired gain).

    estimate = T / N,  V = G / (G - 1) * sum_g (totals[g] - estimate * sizes[g])^2 / N^2,
    interval = estimate -+ t(G - 1) * sqrt(V), clipped to ``bounds``; NaN bounds with fewer
    than two groups.
    """
    totals = np.asarray(totals, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    groups, n = len(sizes), sizes.sum()
    if groups == 0 or n <= 0:
        return np.nan, np.nan, np.nan
    estimate = totals.sum() / n
    if groups < 2:
        return estimate, np.nan, np.nan
    variance = groups / (groups - 1) * np.sum((totals - estimate * sizes) ** 2) / n ** 2
    half = scipy_stats.t.ppf(0.5 + confidence / 2, groups - 1) * np.sqrt(variance)
    return estimate, max(bounds[0], estimate - half), min(bounds[1], estimate + half)


def add_intervals(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with the interval, retention and speed-up columns described above."""
    out = frame.copy()
    for name, n_name in _ACCURACIES.items():
        low, high = accuracy_interval(column(out, name), column(out, n_name))
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    for split, suffix in (("dev", ""), ("test", "_test")):
        low, high, gain = _paired_gain(out, split)
        # The dev gain is stored as kd_gain; the test one (and a missing dev one) is derived.
        if suffix or "kd_gain" not in out.columns:
            out[f"kd_gain{suffix}"] = gain
        out[f"kd_gain{suffix}_ci_low"], out[f"kd_gain{suffix}_ci_high"] = low, high
    out["interval_method"] = "Wilson/Newcombe"
    for split in ("dev", "test"):
        _cluster_intervals(out, split)
        _int8_change(out, split)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["retention_dev"] = column(out, "dev_accuracy") / column(out, "teacher_dev_accuracy")
        out["retention_test"] = (column(out, "test_accuracy")
                                 / column(out, "teacher_test_accuracy"))
        out["speedup"] = (column(out, "teacher_flops_per_example")
                          / column(out, "flops_per_example"))
    return out


def _cluster_intervals(out: pd.DataFrame, split: str) -> None:
    """Replace, in rows whose trial stored counts per group on ``split``, the intervals over
    that split's examples with cluster-robust ones."""
    name = f"{split}_clusters"
    if name not in out.columns:
        return
    gain = "kd_gain" if split == "dev" else "kd_gain_test"
    for index, stored in out[name].items():
        if not isinstance(stored, (str, dict)):  # no groups in this trial's data
            continue
        counts = json.loads(stored) if isinstance(stored, str) else stored
        sizes, correct = counts["sizes"], np.asarray(counts["correct"])
        baseline = np.asarray(counts["baseline_correct"])
        for accuracy, totals in ((f"{split}_accuracy", correct),
                                 (f"baseline_{split}_accuracy", baseline)):
            _, low, high = cluster_robust_interval(totals, sizes)
            out.loc[index, [f"{accuracy}_ci_low", f"{accuracy}_ci_high"]] = low, high
        _, low, high = cluster_robust_interval(correct - baseline, sizes, bounds=(-1.0, 1.0))
        out.loc[index, [f"{gain}_ci_low", f"{gain}_ci_high"]] = low, high
        out.loc[index, "interval_method"] = "cluster-robust"


def _int8_change(out: pd.DataFrame, split: str) -> None:
    """``int8_<split>_change``: the int8 model's accuracy minus the fp32 student's, with
    Newcombe's paired interval (both score the same examples; the stored counts are per
    example, not per group)."""
    n = column(out, f"{split}_examples")
    int8 = column(out, f"int8_{split}_accuracy")
    low, high = paired_difference_interval(correct_count(int8, n),
                                           column(out, f"int8_{split}_gained"),
                                           column(out, f"int8_{split}_lost"), n)
    out[f"int8_{split}_change"] = int8 - column(out, f"{split}_accuracy")
    out[f"int8_{split}_change_ci_low"], out[f"int8_{split}_change_ci_high"] = low, high


def _paired_gain(frame: pd.DataFrame, split: str):
    """Paired interval of KD minus baseline on ``split``, and the gain ``(b - c) / n``."""
    n = column(frame, f"{split}_examples")
    kd_correct = correct_count(column(frame, f"{split}_accuracy"), n)
    kd_only = column(frame, f"kd_only_correct_{split}")
    base_only = column(frame, f"baseline_only_correct_{split}")
    low, high = paired_difference_interval(kd_correct, kd_only, base_only, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = column(frame, f"{split}_accuracy") - column(frame, f"baseline_{split}_accuracy")
    return low, high, gain
