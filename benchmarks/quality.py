"""Quality bars: does distillation beat the label-only baseline on the builtin data?

    python benchmarks/quality.py                      # seeds 0 1 2, 2 epochs per phase
    python benchmarks/quality.py --seeds 0 1 2 3 --epochs 3

The builtin teacher (studies/default.yaml's settings) is fine-tuned once (cached). Two
students, each distilled with T = T_s = 4, alpha = 0.7 (with the seed's loss, hard labels
at T_s, and with the classic variant, hard labels at T = 1) and compared with their own
label-only baseline on the same seed, same epochs and learning rate:

- a 2-layer student of the teacher's width initialised from layers 0 and 3 of the teacher
  as loaded, before fine-tuning (DistilBERT-style; its classification head is its own);
- a 2-layer student of width 128 from random init.

Prints the teacher's accuracy and, per student and loss, the mean paired test gain and
the mean gain in agreement with the teacher's test predictions, with their spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

from harness.artifacts import cache_root
from harness.config import default_trial_config
from harness.study_file import load_study_config
from harness.pipeline import run_trial
from harness.shared import prepare_shared

REPO = Path(__file__).resolve().parent.parent
STUDENTS = {  # name -> (size and init, learning rate of baseline and distillation)
    "2x384 teacher-layers": (dict(num_layers=2, hidden_size=384, init="teacher-layers"), 1e-4),
    "2x128 random": (dict(num_layers=2, hidden_size=128, init="random"), 5e-4),
}
LOSSES = {"seed (CE at T_s)": "student", "classic (CE at T=1)": "one"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, help="override every student's learning rate")
    parser.add_argument("--teacher-epochs", type=float,
                        help="override the teacher's fine-tune epochs (studies/default.yaml: 1)")
    parser.add_argument("--students", nargs="+", choices=list(STUDENTS), default=list(STUDENTS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "quality.json")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="earlier --out files whose rows join this run's summary")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    study = load_study_config(REPO / "studies" / "default.yaml")
    if args.teacher_epochs is not None:
        study = dataclasses.replace(study, teacher=dataclasses.replace(
            study.teacher, epochs=args.teacher_epochs))
    shared = prepare_shared(study, torch.device("cpu"), cache_root())
    print(f"teacher: dev {shared.teacher_scores['dev'].accuracy:.4f}, "
          f"test {shared.teacher_scores['test'].accuracy:.4f}", flush=True)
    rows = []
    for student in args.students:
        size, lr = STUDENTS[student]
        lr = args.lr or lr
        for loss, hard_labels in LOSSES.items():
            pipeline = dataclasses.replace(
                study.pipeline, hard_label_temperature=hard_labels,
                baseline=dataclasses.replace(study.pipeline.baseline, epochs=args.epochs, lr=lr),
                distill=dataclasses.replace(study.pipeline.distill, epochs=args.epochs, lr=lr))
            config = dataclasses.replace(study, pipeline=pipeline)
            for seed in args.seeds:
                trial = default_trial_config(config, T=4.0, T_s=4.0, alpha=0.7, lr=lr,
                                             seed=seed, **size)
                result = run_trial(config, trial, shared)
                rows.append({"student": student, "loss": loss, "seed": seed,
                             **result.stored_fields()})
                measured = result.evaluation
                print(f"{student:22s} {loss:20s} seed {seed}: test {measured.test_accuracy:.4f} "
                      f"vs baseline {measured.baseline_test_accuracy:.4f}; agreement "
                      f"{measured.teacher_agreement:.4f} vs "
                      f"{measured.baseline_teacher_agreement:.4f}", flush=True)
    args.out.write_text(json.dumps({"teacher": {k: dataclasses.asdict(v) for k, v in
                                                shared.teacher_scores.items()},
                                    "epochs": args.epochs, "teacher_epochs": study.teacher.epochs,
                                    "rows": rows}, indent=1))
    for earlier in args.merge:
        rows += json.loads(earlier.read_text())["rows"]
    print(summary(rows))
    return 0


def summary(rows: list[dict]) -> str:
    lines = ["| student | loss | test gain (points) | agreement gain (points) | dev gain | positive test gains |",
             "|---|---|---|---|---|---|"]
    for student in STUDENTS:
        for loss in LOSSES:
            chosen = [r for r in rows if r["student"] == student and r["loss"] == loss]
            if not chosen:
                continue
            test = [100 * (r["test_accuracy"] - r["baseline_test_accuracy"]) for r in chosen]
            agree = [100 * (r["teacher_agreement"] - r["baseline_teacher_agreement"])
                     for r in chosen]
            dev = [100 * r["kd_gain"] for r in chosen]
            lines.append(f"| {student} | {loss} | {_mean_sd(test)} | {_mean_sd(agree)} | "
                         f"{_mean_sd(dev)} | {sum(g > 0 for g in test)} of {len(test)} |")
    return "\n".join(lines)


def _mean_sd(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.2f} ± {spread:.2f}"


if __name__ == "__main__":
    sys.exit(main())
