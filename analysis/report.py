"""A study's Pareto report: the tables in one object, rendered as markdown or plain text.

    report = build_report(load_study_frame("demo", "journal:runs/optuna.journal"))
    print(render_text(report))               # the front, for the terminal
    page = render_markdown(report, storage)  # the pareto.md page

Accuracies are printed in percent with their 95% interval over examples (cluster-robust
where the data groups its examples, Wilson otherwise); KD gains in accuracy points with the
paired interval (see ``analysis.stats``). ``answer_lines`` says, per compute band, whether
distillation pays. ``front_rows``, ``label_only_rows``, ``deployed_rows``, ``size_rows`` and
``budget_rows``
give each table's headers and cells, for a notebook to lay out itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import stats
from analysis.frame import column, complete_trials, state_counts, state_summary
from analysis.front import (AXIS_LABELS, SOURCE, TEACHER_COLUMNS, best_under_budgets, check_axis,
                            default_ref_cost, deployed_front, front_table, hypervolume,
                            kd_gain_by_size, label_only_front, not_deployed, teacher_members,
                            teacher_reference)
from analysis.seeds import (by_configuration, confirmed_front, kd_answer, search_rows,
                            with_seed_columns)
from harness.config import RESIZED_TEACHER


class NoCompleteTrials(ValueError):
    """A study with no complete trial that has both dev accuracy and the compute axis."""


@dataclass(frozen=True)
class Report:
    """Everything the report shows; DataFrames hold the stored fields plus derived columns."""

    study_name: str
    x: str
    counts: dict[str, int]
    summary: str              # "N complete, M pruned, K failed"
    searched: int             # complete search trials: the single-run front's candidates
    front: pd.DataFrame       # single runs, cheapest first, with intervals and
                              # ``indistinguishable`` (and seeds, means and ``held``)
    confirmed: pd.DataFrame   # the front on means over seeds; empty with no repeats
    label_only: pd.DataFrame  # the front of label-only baselines, cheapest first
    deployed: pd.DataFrame    # int8 dev accuracy against int8 latency; empty if none deployed
    not_deployed: list[tuple[int, str]]  # (trial, why) of students that could not deploy
    answer: pd.DataFrame      # per band of the teacher's FLOPs: does KD pay (kd_answer)
    intervals: str            # how intervals over examples were computed, in words
    sizes: pd.DataFrame       # best trial per (num_layers, hidden_size)
    budgets: pd.DataFrame     # best trial per fraction of the teacher's FLOPs
    teacher: dict[str, float]
    teacher_members: tuple[float, ...]  # an ensemble teacher's members' dev accuracies
    hypervolume: float        # in accuracy x axis units, reference (0, ref_cost)
    ref_cost: float


def build_report(frame: pd.DataFrame, x: str = "flops_per_example",
                 study_name: str | None = None) -> Report:
    """The report of one study frame; NoCompleteTrials when there is nothing to rank."""
    check_axis(x)
    name = study_name or frame.attrs.get("study_name", "study")
    search = search_rows(frame)  # the front's repeats are summarised, not ranked
    front = front_table(search, x)
    if front.empty:
        raise NoCompleteTrials(f"study {name!r} has no complete trial with dev_accuracy and "
                               f"{x} ({state_summary(frame)}); nothing to report")
    complete = complete_trials(search)
    costs = column(complete, x)
    ref_cost = default_ref_cost(costs)
    area = hypervolume(column(complete, "dev_accuracy"), costs, 0.0, ref_cost)
    configurations = by_configuration(frame)
    confirmed = confirmed_front(configurations, x)
    return Report(study_name=name, x=x, counts=state_counts(frame),
                  summary=state_summary(frame), searched=len(complete),
                  front=with_seed_columns(front, configurations, confirmed),
                  confirmed=confirmed, label_only=label_only_front(search, x),
                  deployed=deployed_front(search), not_deployed=not_deployed(search),
                  answer=kd_answer(frame, configurations), intervals=interval_method(front),
                  sizes=kd_gain_by_size(search), budgets=best_under_budgets(search),
                  teacher=teacher_reference(frame), teacher_members=teacher_members(frame),
                  hypervolume=area, ref_cost=ref_cost)


def interval_method(front: pd.DataFrame) -> str:
    """The report's intervals over examples, in words (the front's rows decide)."""
    if (front.get("interval_method") == "cluster-robust").all():
        groups = [len(json.loads(front.iloc[0][f"{split}_clusters"])["sizes"])
                  if isinstance(front.iloc[0][f"{split}_clusters"], str) else 0
                  for split in ("dev", "test")]
        return (f"cluster-robust (CR1, Student-t on G - 1) over the data's groups: {groups[0]} "
                f"dev and {groups[1]} test groups, whose examples are correlated")
    if (front.get("interval_method") == "Wilson/Newcombe").all():
        return "Wilson (accuracies) and Newcombe's paired interval (KD gains): examples " \
               "taken as independent, as the data has no groups"
    return "cluster-robust where a trial stored groups, Wilson / Newcombe elsewhere"


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


def _budget_note(row, kd_gain: str) -> str:
    """A KD gain cell, marked where its arms had different budgets (``pipeline.budget:
    unequal``): then it measures extra training as well as distillation."""
    matched = row.get("budget_matched")
    unmatched = matched is not None and not pd.isna(matched) and not bool(matched)
    return f"{kd_gain} not budget-matched" if unmatched else kd_gain


def _interval(row, name, fmt=percent) -> str:
    return fmt(_get(row, name), _get(row, f"{name}_ci_low"), _get(row, f"{name}_ci_high"))


def _size(row) -> str:
    """``"2 x 128"``; a pre-trained student's source after its size: ``"4 x 256 (bert-mini)"``."""
    layers, hidden = _get(row, "num_layers"), _get(row, "hidden_size")
    size = f"{layers:.0f} x {hidden:.0f}" if np.isfinite(layers + hidden) else "n/a"
    source = row.get(SOURCE)
    if isinstance(source, str) and source != RESIZED_TEACHER:
        size += f" ({source.rstrip('/').rsplit('/', 1)[-1]})"
    return size


def _alpha(row) -> str:
    """``"0.7"``; a generative student distilled on the teacher's outputs (``kd_level``)
    says so: ``"0.7, sequence-level"``."""
    alpha = number(_get(row, "alpha"))
    return f"{alpha}, sequence-level" if row.get("kd_level") == "sequence" else alpha


# ---- tables ------------------------------------------------------------------------------


def front_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the front table, the teacher first as the reference row."""
    headers = ["trial", "layers x hidden", "T", "T_s", "alpha", AXIS_LABELS[report.x],
               "speed-up (FLOPs)", "dev acc % [95% CI]", "retention, dev %",
               "KD gain, dev, points [95% paired CI]", "test acc % [95% CI] (reported only)",
               "~ neighbour"]
    confirmed = not report.confirmed.empty
    if confirmed:
        headers += ["fresh seeds", "held on the mean"]
    rows = [_teacher_cells(report) + ([""] * 2 if confirmed else [])] if report.teacher else []
    for _, row in report.front.iterrows():
        cells = [f"{_get(row, 'trial'):.0f}", _size(row), number(_get(row, "T")),
                 number(_get(row, "T_s")), _alpha(row),
                 number(_get(row, report.x)), times(_get(row, "speedup")),
                 _interval(row, "dev_accuracy"), percent(_get(row, "retention_dev")),
                 _budget_note(row, _interval(row, "kd_gain", points)),
                 _interval(row, "test_accuracy"), "~" if row["indistinguishable"] else ""]
        if confirmed:
            cells += [f"{_get(row, 'seeds'):.0f}", "yes" if row["held"] else "NO"]
        rows.append(cells)
    return headers, rows


def answer_lines(report: Report) -> list[str]:
    """One line per band of the teacher's FLOPs: the best confirmed distilled student, the
    best label-only one, their means over fresh seeds and the KD gain between them."""
    lines = []
    for _, row in report.answer.iterrows():
        band = f"<= 1/{1 / row['band']:.0f} of the teacher's FLOPs"
        if not np.isfinite(_get(row, "kd_trial")):
            lines.append(f"{band}: no configuration with fresh runs fits")
            continue
        students = []
        for prefix, what in (("kd", "distilled"), ("label", "label-only")):
            size = _size({"num_layers": row[f"{prefix}_num_layers"],
                          "hidden_size": row[f"{prefix}_hidden_size"]})
            students.append(
                f"{what} {size} (trial {_get(row, f'{prefix}_trial'):.0f}, "
                f"{_get(row, f'{prefix}_seeds'):.0f} fresh seeds) dev "
                + percent(*(_get(row, f"{prefix}_dev_{end}") for end in ("mean", "low", "high"))))
        verdicts = {"pays": "KD pays", "costs": "KD costs", "not shown": "no difference shown"}
        lines.append(
            f"{band}: {students[0]} vs {students[1]}: KD gain "
            f"{points(*(_get(row, 'gain' + end) for end in ('', '_low', '_high')))} dev, "
            f"{points(*(_get(row, 'gain_test' + end) for end in ('', '_low', '_high')))} "
            f"test points: {verdicts[row['verdict']]} on dev, "
            f"{verdicts[row['verdict_test']]} on test")
    return lines


def label_only_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the label-only front (single runs, as the search trained them)."""
    headers = ["layers x hidden", "init", "a trial of it", AXIS_LABELS[report.x],
               "label-only dev acc % [95% CI]", "label-only test acc % [95% CI]"]
    rows = [[_size(row), str(row.get("init", "")), f"{_get(row, 'trial'):.0f}",
             number(_get(row, report.x)), _interval(row, "baseline_dev_accuracy"),
             _interval(row, "baseline_test_accuracy")]
            for _, row in report.label_only.iterrows()]
    return headers, rows


def confirmed_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the front on means over seeds (intervals over seeds)."""
    headers = ["configuration (trial)", "layers x hidden", "T", "T_s", "alpha",
               AXIS_LABELS[report.x], "fresh seeds", "dev acc %, mean [95% CI over seeds]",
               "search run dev acc %",
               "KD gain, dev, points, mean [95% CI]", "KD gain, test, points, mean [95% CI]",
               "test acc %, mean [95% CI]", "teacher agreement %, mean",
               "on the single-run front"]
    single = set(report.front["trial"])
    rows = [[f"{_get(row, 'trial'):.0f}", _size(row), number(_get(row, "T")),
             number(_get(row, "T_s")), _alpha(row),
             number(_get(row, report.x)), f"{_get(row, 'seeds'):.0f}",
             _mean(row, "dev_accuracy") if row["confirmed"] else "unconfirmed",
             percent(_get(row, "dev_accuracy")), _budget_note(row, _mean(row, "kd_gain", points)),
             _budget_note(row, _mean(row, "kd_gain_test", points)), _mean(row, "test_accuracy"),
             percent(_get(row, "teacher_agreement_mean")),
             "yes" if row["trial"] in single else "no"]
            for _, row in report.confirmed.iterrows()]
    return headers, rows


def _mean(row, name, fmt=percent) -> str:
    return fmt(_get(row, f"{name}_mean"), _get(row, f"{name}_mean_low"),
               _get(row, f"{name}_mean_high"))


def _teacher_cells(report: Report) -> list[str]:
    teacher = report.teacher
    cost = teacher.get(TEACHER_COLUMNS.get(report.x, ""), np.nan)
    cells = []
    for split in ("dev", "test"):
        acc, n = teacher.get(f"teacher_{split}_accuracy", np.nan), teacher.get(
            f"{split}_examples", np.nan)
        low, high = stats.accuracy_interval(acc, n)
        cells.append(percent(acc, float(low), float(high)))
    members = report.teacher_members
    name = "teacher (reference)" if not members else (
        f"teacher: ensemble of {len(members)} (reference; members' dev acc "
        f"{', '.join(percent(m) for m in members)})")
    return [name, "", "", "", "", number(cost), "1x", cells[0], "100.0",
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


def deployed_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the deployed front (ONNX Runtime on the CPU, one thread)."""
    return deployed_table(report.deployed)


def deployed_table(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of deployed students (rows with ``analysis.stats``' intervals)."""
    headers = ["trial", "layers x hidden", "fp32 dev acc %", "int8 dev acc %",
               "int8 - fp32, dev, points [95% paired CI]", "int8 agreement, dev %",
               "fp32 / int8 bytes", "int8 latency ms (p90)", "fp32 ORT latency ms",
               "torch eager latency ms", "fp32 / int8 examples/s at batch 32",
               "int8 test acc % (reported only)"]
    rows = [[f"{_get(row, 'trial'):.0f}", _size(row), percent(_get(row, "dev_accuracy")),
             percent(_get(row, "int8_dev_accuracy")),
             _interval(row, "int8_dev_change", points),
             percent(_get(row, "int8_dev_agreement")),
             f"{number(_get(row, 'onnx_bytes'))} / {number(_get(row, 'int8_bytes'))}",
             f"{number(_get(row, 'int8_latency_ms'))} ({number(_get(row, 'int8_latency_p90_ms'))})",
             number(_get(row, "onnx_latency_ms")), number(_get(row, "eager_latency_ms")),
             f"{number(_get(row, 'onnx_examples_per_second'))} / "
             f"{number(_get(row, 'int8_examples_per_second'))}",
             percent(_get(row, "int8_test_accuracy"))]
            for _, row in frame.iterrows()]
    return headers, rows


def deployed_lines(report: Report) -> list[str]:
    """The deployed front's table and the students that could not be deployed."""
    lines = [f"- trial {trial}: not deployed: {reason}" for trial, reason in report.not_deployed]
    if report.deployed.empty:
        return lines
    where = report.deployed.iloc[0].get("deploy_provenance")
    where = json.loads(where) if isinstance(where, str) else {}
    return [f"Measured on {where.get('cpu', 'n/a')} ({', '.join(where.get('cpu_features', []))}"
            f"; ONNX Runtime {where.get('onnxruntime', 'n/a')}), batch 1 at "
            f"{number(_get(report.deployed.iloc[0], 'deploy_length'))} tokens, one thread, "
            "alone on the machine.", "", markdown_table(*deployed_rows(report)), "", *lines]


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


# ---- rendering ---------------------------------------------------------------------------

#: The "How to read this" section that ends pareto.md; the notebook shows it too.
NOTES = """\
## How to read this

- The front is chosen on **dev accuracy** (maximised) against the compute axis (minimised).
  Test accuracy is reported beside it and never used to choose anything.
- Accuracies: {conf:.0f}% interval over the dev (or test) examples. Where the data groups
  its examples (the builtin data: snippets of one movie), examples of a group are
  correlated and the interval is cluster-robust: the sandwich variance summed over groups
  with the factor G / (G - 1) (CR1), Student-t on G - 1 degrees of freedom. Otherwise the
  Wilson score interval. The report's header says which was used.
- KD gain: the student minus its label-only baseline of the same size, on the same
  examples. Its interval is cluster-robust on the per-group differences where the data has
  groups, else Newcombe's paired interval (hybrid score, continuity-corrected correlation;
  Newcombe 1998, method 10) built from the discordant counts: examples only the KD student
  got right (b) and only the baseline got right (c); gain = (b - c) / n.
- Does KD pay, per band of the teacher's FLOPs: among configurations with fresh runs that
  fit the band, the best on mean dev accuracy distilled and the best on mean label-only
  dev accuracy; the KD gain between them is paired by seed where they are one
  configuration, else Welch's interval between their fresh runs. "KD pays" / "KD costs"
  where a split's interval excludes 0, said for dev and for test. Both students were
  chosen as the best of a band on their dev means, which leans those means up (less than
  a single run's: each is already a mean over fresh seeds); the test means were not
  chosen on, though a lucky seed helps dev and test alike. The candidates are the
  configurations confirmed on fresh seeds: the distilled front's, the label-only front's
  (one trial per student) and those the rounds added.
- Label-only front: per student, its best label-only baseline, as the search trained it
  (single runs); the distilled front has to beat it at each cost.
- `~` marks a front member whose dev accuracy is not distinguishable from an adjacent
  front member: the {conf:.0f}% interval of their difference (Newcombe's hybrid score
  interval, treating the two as independent samples) contains 0. It ignores the data's
  groups, so where examples are correlated it can be too narrow. The teacher row's
  interval is Wilson's: no per-group counts are stored for the teacher.
- Exact duplicates (same accuracy and cost) are all kept on the front.
- Confirmed front (when the study confirms with `confirm.seeds` > 0): each configuration
  of the single-run front was trained again on `confirm.seeds` fresh seeds, each run
  against its own label-only baseline on its seed; means over the fresh runs only, with a
  Student-t {conf:.0f}% interval over them. The search run is shown beside, never averaged
  in: the single-run front picks the best of many noisy runs, so its members' single
  numbers are biased upward. `held` says whether a member stays on the front drawn on the
  means; a member of that front with no fresh run (marked "unconfirmed") stands in with
  its search run, and the study confirms it in a next round (`confirm.max_rounds`).
- Per size, the best trial is chosen on dev, which flatters its dev gain; its test gain
  (examples no choice has seen) is the honest check.
- Deployed front (`deploy.export`): each front student exported to ONNX (checked against
  torch on every dev example), quantized by ONNX Runtime's dynamic int8 and scored on dev
  and test; the front is int8 dev accuracy against int8 latency at batch 1 on one thread.
  int8 - fp32 is paired over the same examples (Newcombe), treating them as independent.
  Latency is measured, not searched: it depends on the machine and on what else runs.
- Retention: student accuracy / teacher accuracy. Speed-up: teacher FLOPs per example /
  student FLOPs per example.
""".format(conf=100 * stats.CONFIDENCE)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table (pipes in cells escaped)."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(headers), line(["---"] * len(headers))] + [line(r) for r in rows])


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain table with aligned columns, for the terminal."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in [headers] + rows]
    return "\n".join(lines)


def render_markdown(report: Report, storage: str | None = None) -> str:
    """The ``pareto.md`` page. ``storage`` must already be redacted."""
    axis = AXIS_LABELS[report.x]
    lines = [f"# Pareto report: {report.study_name}", ""]
    if storage:
        lines.append(f"- Storage: `{storage}`")
    lines += [
        f"- Trials: {report.summary} (failed, pruned and unfinished trials are left out)",
        f"- Intervals over examples: {report.intervals}",
        f"- Front: dev accuracy against {axis}: {len(report.front)} of "
        f"{report.searched} complete search trials (repeats over seeds are summarised apart)",
        f"- Hypervolume: {number(report.hypervolume, 4)} (accuracy x {axis}; reference point "
        f"accuracy 0, {number(report.ref_cost)} = 1.1 x the largest; normalised by the "
        f"reference box: {_normalised(report):.4f})",
        "", "## Front (cheapest first)", "", markdown_table(*front_rows(report)), "",
    ]
    if any(report.front["indistinguishable"]):
        lines += ["`~`: not distinguishable from an adjacent front member "
                  "(see How to read this).", ""]
    if not report.confirmed.empty:
        held = int(report.front["held"].sum())
        lines += ["## Front confirmed over seeds (mean of each configuration's runs)", "",
                  f"{held} of the {len(report.front)} single-run front members hold their "
                  "place on the means; `NO` above marks those dominated there.", "",
                  markdown_table(*confirmed_rows(report)), ""]
    if not report.answer.empty:
        lines += ["## Does distillation pay? (fresh-seed means, per band of the teacher's "
                  "FLOPs)", "", *[f"- {line}" for line in answer_lines(report)], ""]
    if not report.label_only.empty:
        lines += ["## Label-only front (the best baseline of each student)", "",
                  markdown_table(*label_only_rows(report)), ""]
    if not report.deployed.empty or report.not_deployed:
        lines += ["## Deployed front (ONNX Runtime int8 on the CPU)", "",
                  *deployed_lines(report), ""]
    if not report.sizes.empty:
        lines += ["## KD gain per student size", "", markdown_table(*size_rows(report)), ""]
    lines += ["## Best student under compute budgets", "",
              markdown_table(*budget_rows(report)), "", NOTES]
    return "\n".join(lines)


def render_text(report: Report) -> str:
    """The front and the trial counts, for printing."""
    headers, rows = front_rows(report)
    lines = [
        f"study {report.study_name}: {report.summary}",
        f"Pareto front, dev accuracy vs {AXIS_LABELS[report.x]} "
        f"({len(report.front)} trials; ~ = not distinguishable from a neighbour):",
        text_table(headers, rows),
        f"hypervolume {number(report.hypervolume, 4)} "
        f"(normalised {_normalised(report):.4f}, reference accuracy 0, "
        f"{number(report.ref_cost)})",
    ]
    if not report.confirmed.empty:
        lines += [f"Front on the means over seeds ({len(report.confirmed)} configurations):",
                  text_table(*confirmed_rows(report))]
    if not report.answer.empty:
        lines += ["Does distillation pay? (means over fresh seeds)", *answer_lines(report)]
    if not report.deployed.empty:
        lines += ["Deployed front, int8 dev accuracy vs ONNX Runtime int8 latency:",
                  text_table(*deployed_rows(report))]
    lines += [f"trial {trial}: not deployed: {reason}" for trial, reason in report.not_deployed]
    lines.append(f"intervals over examples: {report.intervals}")
    return "\n".join(lines)


def _normalised(report: Report) -> float:
    """Hypervolume as a share of the box from (0, 0) to (ref_cost, accuracy 1)."""
    return report.hypervolume / report.ref_cost if report.ref_cost > 0 else float("nan")
