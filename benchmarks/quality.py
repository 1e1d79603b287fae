"""How strong can a small student get? Distillation variants on equal budgets, paired by seed.

    python benchmarks/quality.py                                   # seeds 0-4, both students
    python benchmarks/quality.py --students "2x128" --seeds 0 1 2 3 4 5
    python benchmarks/quality.py --set data.select_fraction=0 ...  # checkpoints chosen on dev
    python benchmarks/quality.py --passes 5 ...                    # both arms 5 passes

Everything comes from studies/default.yaml (the builtin teacher, fine-tuned once and
cached; the step-budget schedule with the best checkpoint on the select split; the width
learning-rate rule; T = T_s = 4, alpha = 0.7, the study's loss), with a transfer set built
once (as many copies per training example as the variants need). Per student (2 x 128 and
2 x 384) and seed:

- label-only baseline from random weights (the reference every gain is paired against);
- KD from random weights;
- KD from teacher-pruned weights (at 384 wide: the teacher's layers, as teacher-layers);
- KD from random or teacher-pruned weights on the transfer set (2 copies), or on 10 views
  of every example (``--set transfer.neighbour_prob=...`` for neighbour replacement);
- KD from random or teacher-pruned weights on online views (``transfer.online``: a fresh
  view of every batch, scored by the teacher as the student reads it, by the same rules;
  its baseline reads the same views).

Every distillation has the same rule as its baseline, and the same maximum steps (with a
transfer set: epochs over the labelled examples plus the transfer ones, for both arms).
A longer budget for both arms: ``--passes 5`` (both arms' epochs; the patience in
evaluations is ``--set pipeline.schedule.patience=N``, also both arms'); a stronger
teacher: ``--set teacher.ensemble=3`` (without a transfer-set or online-view variant).
``--plot FILE`` draws each run's test KD gain against its teacher-minus-baseline gap;
``--summarize A.json B.json`` prints the tables (and plot) of earlier runs, training nothing.
Prints, per variant, mean dev accuracy (and its share of the teacher's), mean test gain
over the random-init label-only baseline of the same seed with its standard deviation,
teacher agreement and train FLOPs; then, per variant and arm, the dev-minus-test gap and
the KD gain on dev and on test (what choosing checkpoints on one split does to it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.artifacts import cache_root
from harness.config import default_trial_config
from harness.pipeline import run_trial
from harness.shared import prepare_shared
from harness.study_file import load_study_config

REPO = Path(__file__).resolve().parent.parent
STUDENTS = {"2x128": dict(num_layers=2, hidden_size=128), "2x384": dict(num_layers=2, hidden_size=384)}


@dataclass(frozen=True)
class Variant:
    init: str
    copies: int = 0  # transfer-set copies distilled on
    online: bool = False  # a fresh view of every batch (transfer.online)


# The first one's baseline is the random-init reference.
VARIANTS = {
    "KD, random init": Variant("random"),
    "KD, teacher-pruned init": Variant("teacher-pruned"),
    "KD + transfer set, random init": Variant("random", copies=2),
    "KD + transfer set, teacher-pruned init": Variant("teacher-pruned", copies=2),
    # Ten teacher-labelled views of every example (issue 23's offline views: pass
    # --set transfer.neighbour_prob=0.3 for embedding-neighbour replacement).
    "KD + 10 views, random init": Variant("random", copies=10),
    "KD + 10 views, teacher-pruned init": Variant("teacher-pruned", copies=10),
    "KD + online views, random init": Variant("random", online=True),
    "KD + online views, teacher-pruned init": Variant("teacher-pruned", online=True),
}
REFERENCE = "KD, random init"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--students", nargs="+", choices=list(STUDENTS), default=list(STUDENTS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "quality.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="study-file overrides, as harness.study's")
    parser.add_argument("--passes", type=float, default=None,
                        help="both arms' epochs (pipeline.baseline and pipeline.distill)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="a PNG of each run's test KD gain against its teacher's test "
                             "accuracy minus its baseline's")
    parser.add_argument("--summarize", type=Path, nargs="+", default=None,
                        help="print the tables of these --out files and train nothing")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="earlier --out files whose rows join this run's summary (gains "
                             f"are paired with the {REFERENCE!r} rows of the same seed, from "
                             "this run or these files)")
    args = parser.parse_args()
    if args.summarize:
        files = [json.loads(path.read_text()) for path in args.summarize]
        print_tables([row for file in files for row in file["rows"]],
                     files[0]["teacher"]["dev"]["accuracy"], args.plot)
        return 0
    overrides = ["student.init=teacher-pruned", *args.overrides, *(
        [] if args.passes is None else [f"pipeline.baseline.epochs={args.passes}",
                                        f"pipeline.distill.epochs={args.passes}"])]
    # The transfer set is built once with as many copies as the variants need (a trial
    # uses the first ones); none when no variant distils on it. Online views are a study
    # of their own (they cannot be mixed with copies), sharing the teacher.
    copies = max(VARIANTS[variant].copies for variant in args.variants)
    studies = {False: load_study_config(REPO / "studies" / "default.yaml",
                                        [f"transfer.copies={copies}", *overrides])}
    if any(VARIANTS[variant].online for variant in args.variants):
        studies[True] = load_study_config(REPO / "studies" / "default.yaml", [
            "transfer.copies=0", "transfer.online=true", *overrides])
    shared = {online: prepare_shared(study, torch.device("cpu"), cache_root())
              for online, study in studies.items()}
    teacher = {k: dataclasses.asdict(v)
               for k, v in next(iter(shared.values())).teacher_scores.items()}
    print(f"teacher: dev {teacher['dev']['accuracy']:.4f}, test {teacher['test']['accuracy']:.4f}",
          flush=True)
    rows = []
    for student in args.students:
        for seed in args.seeds:
            for variant in args.variants:
                chosen = VARIANTS[variant]
                study = studies[chosen.online]
                trial = default_trial_config(study, T=4.0, T_s=4.0, alpha=0.7, seed=seed,
                                             init=chosen.init, transfer_copies=chosen.copies,
                                             **STUDENTS[student])
                result = run_trial(study, trial, shared[chosen.online])
                rows.append({"student": student, "variant": variant, "seed": seed,
                             **result.stored_fields()})
                got = result.evaluation
                print(f"{student} {variant:40s} seed {seed}: dev {got.dev_accuracy:.4f} "
                      f"test {got.test_accuracy:.4f} (baseline {got.baseline_test_accuracy:.4f}), "
                      f"agreement {got.teacher_agreement:.4f}, steps {result.distill_steps} "
                      f"(best {result.distill_best_step}), {result.wall_seconds:.0f} s", flush=True)
            args.out.write_text(json.dumps({"teacher": teacher, "rows": rows}, indent=1))
    for earlier in args.merge:
        rows += json.loads(earlier.read_text())["rows"]
    print_tables(rows, teacher["dev"]["accuracy"], args.plot)
    return 0


def print_tables(rows: list[dict], teacher_dev: float, plot: Path | None) -> None:
    print(summary(rows, teacher_dev))
    print(selection_summary(rows))
    print(gain_intervals(rows))
    if plot is not None:
        gap_plot(rows).savefig(plot, dpi=120)


def gain_intervals(rows: list[dict]) -> str:
    """Per student and variant: the KD gain over its own baseline, paired by seed, on dev
    and on test (mean and 95% Student-t interval over seeds, points), with teacher
    agreement, train FLOPs and wall time (the trial's, its baseline's training included
    where it was built then)."""
    from scipy import stats

    def interval(values: list[float]) -> str:
        mean = statistics.mean(values)
        if len(values) < 2:
            return f"{mean:+.2f}"
        half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
        return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"

    def gains(chosen: list[dict], split: str) -> str:
        return interval([100 * (r[f"{split}_accuracy"] - r[f"baseline_{split}_accuracy"])
                         for r in chosen])

    lines = ["| student | variant | seeds | KD gain, dev [95% CI] | KD gain, test [95% CI] | "
             "test acc (baseline) | teacher agreement | train GFLOPs | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for student in STUDENTS:
        for variant in VARIANTS:
            chosen = [r for r in rows if r["student"] == student and r["variant"] == variant]
            if not chosen:
                continue
            lines.append(
                f"| {student} | {variant} | {len(chosen)} | {gains(chosen, 'dev')} | "
                f"{gains(chosen, 'test')} | "
                f"{statistics.mean(r['test_accuracy'] for r in chosen):.4f} "
                f"({statistics.mean(r['baseline_test_accuracy'] for r in chosen):.4f}) | "
                f"{statistics.mean(r['teacher_agreement'] for r in chosen):.4f} | "
                f"{statistics.mean(r['train_flops'] for r in chosen) / 1e9:.0f} | "
                f"{statistics.mean(r['wall_seconds'] for r in chosen):.0f} |")
    return "\n".join(lines)


def summary(rows: list[dict], teacher_dev: float) -> str:
    """Per student and variant, paired by seed with the random-init label-only baseline."""
    lines = ["| student | variant | seeds | dev acc (share of teacher's) | test acc | test gain "
             "over the random-init baseline, paired (points, mean ± sd) | teacher agreement "
             "| train GFLOPs |",
             "|---|---|---|---|---|---|---|---|"]
    for student in STUDENTS:
        reference = {r["seed"]: r for r in rows
                     if r["student"] == student and r["variant"] == REFERENCE}
        if not reference:
            continue
        for init, variant in (("random", REFERENCE), ("teacher-pruned", "KD, teacher-pruned init")):
            base = [r for r in rows if r["student"] == student and r["variant"] == variant
                    and r["seed"] in reference]
            if not base:
                continue
            gains = [100 * (r["baseline_test_accuracy"]
                            - reference[r["seed"]]["baseline_test_accuracy"]) for r in base]
            dev = statistics.mean(r["baseline_dev_accuracy"] for r in base)
            lines.append(f"| {student} | label-only baseline, {init} init | {len(base)} | "
                         f"{dev:.4f} ({dev / teacher_dev:.1%}) | "
                         f"{statistics.mean(r['baseline_test_accuracy'] for r in base):.4f} | "
                         f"{_mean_sd(gains)} | "
                         f"{statistics.mean(r['baseline_teacher_agreement'] for r in base):.4f} | |")
        for variant in VARIANTS:
            chosen = [r for r in rows if r["student"] == student and r["variant"] == variant
                      and r["seed"] in reference]
            if not chosen:
                continue
            gains = [100 * (r["test_accuracy"] - reference[r["seed"]]["baseline_test_accuracy"])
                     for r in chosen]
            dev = statistics.mean(r["dev_accuracy"] for r in chosen)
            lines.append(
                f"| {student} | {variant} | {len(chosen)} | {dev:.4f} ({dev / teacher_dev:.1%}) | "
                f"{statistics.mean(r['test_accuracy'] for r in chosen):.4f} | {_mean_sd(gains)} | "
                f"{statistics.mean(r['teacher_agreement'] for r in chosen):.4f} | "
                f"{statistics.mean(r['train_flops'] for r in chosen) / 1e9:.0f} |")
    return "\n".join(lines)


def selection_summary(rows: list[dict]) -> str:
    """Per student, variant and arm: dev minus test accuracy; per variant the KD gain on
    dev and on test, each paired by seed (points, mean ± sd)."""
    lines = ["| student | variant | seeds | baseline dev - test | KD dev - test | KD gain, dev "
             "| KD gain, test |", "|---|---|---|---|---|---|---|"]
    for student in STUDENTS:
        for variant in VARIANTS:
            chosen = [r for r in rows if r["student"] == student and r["variant"] == variant]
            if not chosen:
                continue
            def points(first: str, second: str) -> str:
                return _mean_sd([100 * (r[first] - r[second]) for r in chosen])
            lines.append(
                f"| {student} | {variant} | {len(chosen)} | "
                f"{points('baseline_dev_accuracy', 'baseline_test_accuracy')} | "
                f"{points('dev_accuracy', 'test_accuracy')} | "
                f"{points('dev_accuracy', 'baseline_dev_accuracy')} | "
                f"{points('test_accuracy', 'baseline_test_accuracy')} |")
    return "\n".join(lines)


def gap_plot(rows: list[dict]):
    """Each run's test KD gain against its teacher-minus-baseline test gap (points), one
    colour per student and variant: does distillation pay more where the teacher is
    further ahead?"""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for student in STUDENTS:
        for variant in VARIANTS:
            chosen = [r for r in rows if r["student"] == student and r["variant"] == variant]
            if chosen:
                axes.scatter([100 * (r["teacher_test_accuracy"] - r["baseline_test_accuracy"])
                              for r in chosen],
                             [100 * (r["test_accuracy"] - r["baseline_test_accuracy"])
                              for r in chosen], label=f"{student}, {variant}", s=18)
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_xlabel("teacher - label-only baseline, test (points)")
    axes.set_ylabel("KD gain, test (points)")
    axes.legend(fontsize=6)
    figure.tight_layout()
    return figure


def _mean_sd(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.2f} ± {spread:.2f}"


if __name__ == "__main__":
    sys.exit(main())
