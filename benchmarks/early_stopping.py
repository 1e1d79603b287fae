"""What the multi-objective early-stopping rule saves and what it loses.

    python benchmarks/early_stopping.py [--trials 24] [--epochs 4]

Runs a study (the smoke study, or --study FILE) with every trial trained to the end and
its dev accuracy recorded after each distillation epoch, then replays the rule of
`harness.sweep.search.should_stop_early` over the same sampled configurations in the same
order: a trial the rule stops uses only the epochs before it and leaves the front.
Prints the distillation epochs saved and the hypervolume (dev accuracy vs forward FLOPs)
of the front with and without the rule.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna

from analysis.front import default_ref_cost, hypervolume
from harness.study_file import load_study_config
from harness.sweep.search import curve as accuracy_curve, should_stop_early
from harness.sweep.storage import open_storage
from harness.study import main as run_study_command

REPO = Path(__file__).resolve().parent.parent


def replay(trials: list[optuna.trial.FrozenTrial], epochs: int, pruner) -> tuple[list, int]:
    """(trials the rule lets finish, distillation epochs the rule spends)."""
    kept, spent = [], 0
    for trial in trials:
        curve = accuracy_curve(trial)
        size = (trial.user_attrs["num_layers"], trial.user_attrs["hidden_size"])
        stopped_at = next((epoch for epoch in range(1, epochs)  # never at the last epoch
                           if should_stop_early(kept, size, epoch, curve[epoch - 1], pruner)),
                          None)
        spent += stopped_at or epochs
        if stopped_at is None:
            kept.append(trial)
    return kept, spent


def front_hypervolume(trials, ref_cost: float) -> float:
    accuracy = np.array([t.user_attrs["dev_accuracy"] for t in trials])
    flops = np.array([t.user_attrs["flops_per_example"] for t in trials], dtype=float)
    return hypervolume(accuracy, flops, ref_accuracy=0.0, ref_cost=ref_cost)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=REPO / "studies" / "smoke.yaml")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        storage = f"journal:{folder}/study.journal"
        code = run_study_command([
            "--study", str(args.study), "--n-trials", str(args.trials), "--wandb", "disabled",
            "--workers", "1",
            "--storage", storage, "--study-name", "no-early-stop",
            "--set", "pruner.name=none", "--set", f"pipeline.distill.epochs={args.epochs}",
            "--set", f"pipeline.baseline.epochs={args.epochs}"])
        if code:
            return code
        study = optuna.load_study(study_name="no-early-stop", storage=open_storage(storage))
        trials = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                        key=lambda t: t.number)
    pruner = load_study_config(args.study).pruner
    kept, spent = replay(trials, args.epochs, pruner)
    ref_cost = default_ref_cost(np.array([t.user_attrs["flops_per_example"] for t in trials]))
    full, ruled = front_hypervolume(trials, ref_cost), front_hypervolume(kept, ref_cost)
    total = len(trials) * args.epochs
    print(f"{len(trials)} trials x {args.epochs} distillation epochs; rule: {pruner}")
    print(f"trials stopped early:         {len(trials) - len(kept)}")
    print(f"distillation epochs spent:    {spent} of {total} "
          f"({100 * (1 - spent / total):.1f}% saved)")
    print(f"hypervolume, all to the end:  {full:.6g}")
    print(f"hypervolume, with the rule:   {ruled:.6g} ({100 * (1 - ruled / full):.2f}% lost)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
