"""Both arms' budgets: the distilled arm (intermediate matching, distillation and fine-tune
phases, one after the other) and its label-only baseline train for the same maximum number
of optimiser steps, or ``kd_gain`` measures extra training as well as distillation. The
steps follow from each phase's epochs, the schedule's ``min_steps`` floor (once per phase)
and the size of the training split, so the check runs once the data is loaded, before the
teacher trains.
"""

from __future__ import annotations

from harness.config import ConfigError, PipelineConfig
from harness.train import TrainSettings, train_settings

DISTILLED_PHASES = ("intermediate", "distill", "finetune")


def phase_settings(pipeline: PipelineConfig, names: tuple[str, ...]) -> list[TrainSettings]:
    """The settings of the phases ``names`` that the study turns on (epochs > 0)."""
    phases = [getattr(pipeline, name) for name in names]
    return [train_settings(pipeline, phase.epochs, phase.lr, seed=0) for phase in phases
            if phase.epochs > 0]


def arm_steps(pipeline: PipelineConfig, train_examples: int) -> tuple[int, int]:
    """(baseline, distilled arm) maximum optimiser steps on ``train_examples`` examples."""
    baseline, distilled = (phase_settings(pipeline, names)
                           for names in (("baseline",), DISTILLED_PHASES))
    return tuple(sum(settings.total_steps(train_examples) for settings in arm)
                 for arm in (baseline, distilled))


def equal_budgets(pipeline: PipelineConfig, train_examples: int) -> bool:
    baseline, distilled = arm_steps(pipeline, train_examples)
    return baseline == distilled


def check_equal_budgets(pipeline: PipelineConfig, train_examples: int) -> None:
    """Refuse a study whose distilled arm would train more (or fewer) steps than its
    baseline, unless it says ``pipeline.budget: unequal``."""
    if pipeline.budget == "unequal":
        return
    baseline, distilled = arm_steps(pipeline, train_examples)
    if baseline != distilled:
        phases = " + ".join(f"pipeline.{name}.epochs" for name in DISTILLED_PHASES
                            if getattr(pipeline, name).epochs > 0)
        raise ConfigError(
            f"pipeline.baseline.epochs: the label-only baseline would train {baseline} steps "
            f"and the distilled arm ({phases}) {distilled} on {train_examples} training "
            "examples, so kd_gain would measure the extra training too; give both arms the "
            "same budget (pipeline.schedule.min_steps counts once per phase), or set "
            "pipeline.budget: unequal")
