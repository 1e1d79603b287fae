"""Render a ``Report`` as the ``pareto.md`` markdown page or as plain text for the terminal."""

from __future__ import annotations

from analysis.front import AXIS_LABELS
from analysis.report import Report, budget_rows, front_rows, number, size_rows
from analysis.stats import CONFIDENCE

NOTES = """\
## How to read this

- The front is chosen on **dev accuracy** (maximised) against the compute axis (minimised).
  Test accuracy is reported beside it and never used to choose anything.
- Accuracies: {conf:.0f}% Wilson score interval over the dev (or test) examples.
- KD gain: the student minus its label-only baseline of the same size, on the same
  examples. Its interval is Newcombe's paired interval (hybrid score, continuity-corrected
  correlation; Newcombe 1998, method 10) built from the discordant counts: examples only
  the KD student got right (b) and only the baseline got right (c); gain = (b - c) / n.
- `~` marks a front member whose dev accuracy is not distinguishable from an adjacent
  front member: the {conf:.0f}% interval of their difference (Newcombe's hybrid score
  interval, treating the two as independent samples, which is conservative) contains 0.
- Exact duplicates (same accuracy and cost) are all kept on the front.
- Per size, the best trial is chosen on dev, which flatters its dev gain; its test gain
  (examples no choice has seen) is the honest check.
- Retention: student accuracy / teacher accuracy. Speed-up: teacher FLOPs per example /
  student FLOPs per example.
"""


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
        f"- Front: dev accuracy against {axis}: {len(report.front)} of "
        f"{report.counts['COMPLETE']} complete trials",
        f"- Hypervolume: {number(report.hypervolume, 4)} (accuracy x {axis}; reference point "
        f"accuracy 0, {number(report.ref_cost)} = 1.1 x the largest; normalised by the "
        f"reference box: {_normalised(report):.4f})",
        "", "## Front (cheapest first)", "", markdown_table(*front_rows(report)), "",
    ]
    if any(report.front["indistinguishable"]):
        lines += ["`~`: not distinguishable from an adjacent front member "
                  "(see How to read this).", ""]
    if not report.sizes.empty:
        lines += ["## KD gain per student size", "", markdown_table(*size_rows(report)), ""]
    lines += ["## Best student under compute budgets", "",
              markdown_table(*budget_rows(report)), "", NOTES.format(conf=100 * CONFIDENCE)]
    return "\n".join(lines)


def render_text(report: Report) -> str:
    """The front and the trial counts, for printing."""
    headers, rows = front_rows(report)
    return "\n".join([
        f"study {report.study_name}: {report.summary}",
        f"Pareto front, dev accuracy vs {AXIS_LABELS[report.x]} "
        f"({len(report.front)} trials; ~ = not distinguishable from a neighbour):",
        text_table(headers, rows),
        f"hypervolume {number(report.hypervolume, 4)} "
        f"(normalised {_normalised(report):.4f}, reference accuracy 0, "
        f"{number(report.ref_cost)})",
    ])


def _normalised(report: Report) -> float:
    """Hypervolume as a share of the box from (0, 0) to (ref_cost, accuracy 1)."""
    return report.hypervolume / report.ref_cost if report.ref_cost > 0 else float("nan")
