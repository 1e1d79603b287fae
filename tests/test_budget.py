"""Equal budgets by construction (harness.budget): the distilled arm's phases together train
as many optimiser steps as the label-only baseline, or the study is refused before any
training; ``pipeline.budget: unequal`` lets it run and marks every trial."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import optuna
import pytest

from harness.budget import (arm_steps, baseline_budget, check_equal_budgets, equal_budgets,
                            on_labelled_passes)
from harness.config import ConfigError, PhaseConfig, PipelineConfig, ScheduleConfig
from harness.study import main
from harness.study_file import load_study_config
from harness.sweep.storage import open_storage
from harness.train import train_settings

from .conftest import REPO, SMOKE

STUDY_FILES = sorted((REPO / "studies").glob("*.yaml"))


def pipeline(baseline: float, distill: float, intermediate: float = 0.0, finetune: float = 0.0,
             min_steps: int = 0, batch_size: int = 32) -> PipelineConfig:
    return PipelineConfig(baseline=PhaseConfig(baseline), distill=PhaseConfig(distill),
                          intermediate=PhaseConfig(intermediate), finetune=PhaseConfig(finetune),
                          batch_size=batch_size, schedule=ScheduleConfig(min_steps=min_steps))


@pytest.mark.parametrize("settings, examples, expected", [
    # 1000 examples in batches of 32: 32 steps an epoch (the last batch short).
    (pipeline(2, 2), 1000, (64, 64)),
    (pipeline(2, 1, intermediate=1), 1000, (64, 64)),
    (pipeline(1, 2), 1000, (32, 64)),
    (pipeline(2, 2, finetune=0.5), 1000, (64, 80)),
    # min_steps is a floor per phase: two short phases train more than one long one.
    (pipeline(2, 1, intermediate=1, min_steps=50), 1000, (64, 100)),
    (pipeline(2, 2, min_steps=600), 8530, (600, 600)),
])
def test_each_arms_steps_from_its_phases(settings, examples, expected):
    assert arm_steps(settings, examples) == expected
    per_epoch = math.ceil(examples / settings.batch_size)
    floor = settings.schedule.min_steps
    by_hand = [max(floor, math.ceil(phase.epochs * per_epoch))
               for phase in (settings.intermediate, settings.distill, settings.finetune)
               if phase.epochs > 0]
    assert arm_steps(settings, examples)[1] == sum(by_hand)


@pytest.mark.parametrize("settings, transfer, expected", [
    # 100 labelled and 60 transfer examples in batches of 8: 13 steps a pass over the labelled
    # examples, 20 over both. Distillation's epochs pass over both; the other phases over the
    # labelled ones; the baseline of a matched study trains the distilled arm's steps.
    (pipeline(2, 2, batch_size=8), 60, (26, 40, 40)),
    (pipeline(2, 1, finetune=1, batch_size=8), 60, (26, 33, 33)),
    (pipeline(3, 1, intermediate=1, finetune=1, batch_size=8), 60, (39, 46, 46)),
    (pipeline(2, 2, min_steps=45, batch_size=8), 60, (45, 45, 45)),
    (dataclasses.replace(pipeline(2, 2, batch_size=8), budget="unequal"), 60, (26, 40, None)),
    (pipeline(2, 2, batch_size=8), 0, (26, 26, None)),
])
def test_a_transfer_set_adds_its_examples_to_distillation_and_the_baseline_follows(
        settings, transfer, expected):
    baseline, distilled, budget = expected
    assert arm_steps(settings, 100, transfer) == (baseline, distilled)
    assert baseline_budget(settings, 100, transfer) == budget
    assert equal_budgets(settings, 100, transfer) == (settings.budget == "matched")


def test_with_a_transfer_set_both_arms_evaluate_at_the_same_steps():
    # 1,000 labelled and 2,000 transfer examples in batches of 32, 2 epochs: 188 steps each.
    settings = train_settings(pipeline(2, 2), 2, 1e-3, seed=0)
    distill = on_labelled_passes(settings, 1000, 2000)
    baseline = dataclasses.replace(settings, steps=baseline_budget(pipeline(2, 2), 1000, 2000))
    assert distill.total_steps(3000) == baseline.total_steps(1000) == 188
    assert distill.steps_between_evaluations(3000) == baseline.steps_between_evaluations(1000) == 32
    assert distill.evaluations(3000) == baseline.evaluations(1000) == 6
    assert on_labelled_passes(settings, 1000, 0) is settings
    every = dataclasses.replace(settings, eval_every=50)
    assert on_labelled_passes(every, 1000, 2000) is every


def test_an_unequal_budget_is_refused_naming_the_keys_and_both_counts():
    with pytest.raises(ConfigError) as refused:
        check_equal_budgets(pipeline(1, 1, intermediate=1), 1000)
    message = str(refused.value)
    assert message.startswith("pipeline.baseline.epochs: ")
    assert "32 steps" in message and "64" in message and "pipeline.budget: unequal" in message
    assert "pipeline.intermediate.epochs + pipeline.distill.epochs" in message
    check_equal_budgets(dataclasses.replace(pipeline(1, 1, intermediate=1), budget="unequal"),
                        1000)


@pytest.mark.parametrize("path", STUDY_FILES, ids=[p.stem for p in STUDY_FILES])
def test_every_shipped_study_gives_both_arms_one_budget(path):
    config = load_study_config(path)
    # From a few hundred examples (the smoke study's) to MNLI's 393k.
    for examples in (1200, 3668, 8530, 67349, 392702):
        baseline, distilled = arm_steps(config.pipeline, examples)
        assert baseline == distilled, (path.name, examples, baseline, distilled)


# The phase settings of the five studies shipped before the budgets were checked.
OLD_SETTINGS = {
    "distilbert-style, budget-single-objective": ["pipeline.baseline.epochs=1"],
    "sst2-bert-base, glue-mnli-roberta": ["pipeline.baseline.epochs=2",
                                          "pipeline.distill.epochs=3"],
    "tinybert-style": ["pipeline.baseline.epochs=1", "pipeline.distill.epochs=1",
                       "pipeline.intermediate.epochs=1"],
    "a fine-tune phase": ["pipeline.finetune.epochs=1"],
}


@pytest.mark.parametrize("overrides", OLD_SETTINGS.values(), ids=OLD_SETTINGS.keys())
def test_the_old_unequal_settings_stop_before_training_with_one_line(overrides, in_tmp, capsys):
    journal = in_tmp / "study.journal"
    sets = [part for override in overrides for part in ("--set", override)]
    code = main(["--study", str(SMOKE), "--workers", "1", "--n-trials", "1", "--wandb",
                 "disabled", "--storage", f"journal:{journal}", *sets])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert error.startswith("error: pipeline.baseline.epochs: ") and "budget" in error
    assert not journal.exists() and not Path("runs").exists()


@pytest.mark.slow
def test_an_unequal_study_runs_and_marks_its_kd_gains(in_tmp, capsys):
    storage = f"journal:{in_tmp / 'study.journal'}"
    code = main(["--study", str(SMOKE), "--workers", "1", "--n-trials", "1", "--wandb",
                 "disabled", "--storage", storage, "--study-name", "unequal",
                 "--set", "pipeline.baseline.epochs=1", "--set", "pipeline.budget=unequal"])
    assert code == 0
    (trial,) = optuna.load_study(study_name="unequal", storage=open_storage(storage)).trials
    assert trial.user_attrs["budget_matched"] is False
    assert trial.user_attrs["baseline_steps"] < trial.user_attrs["distill_steps"]
    assert "not budget-matched" in capsys.readouterr().out
    matched = main(["--study", str(SMOKE), "--workers", "1", "--n-trials", "1", "--wandb",
                    "disabled", "--storage", storage, "--study-name", "matched"])
    assert matched == 0 and "not budget-matched" not in capsys.readouterr().out
    (trial,) = optuna.load_study(study_name="matched", storage=open_storage(storage)).trials
    assert trial.user_attrs["budget_matched"] is True
