"""Both arms' budgets: the distilled arm (intermediate matching, distillation and fine-tune
phases, one after the other) and its label-only baseline train for the same maximum number
of optimiser steps, or ``kd_gain`` measures extra training as well as distillation. The
steps follow from each phase's epochs, the schedule's ``min_steps`` floor (once per phase)
and the size of the training split, so the check runs once the data is loaded, before the
teacher trains.
"""

from __future__ import annotations

from harness.config import ConfigError, PipelineConfig
from harness.train import train_settings

DISTILLED_PHASES = ("intermediate", "distill", "finetune")


def arm_steps(pipeline: PipelineConfig, train_examples: int) -> tuple[int, int]:
    """(baseline, distilled arm) maximum optimiser steps on ``train_examples`` examples."""
    def steps(name: str) -> int:
        phase = getattr(pipeline, name)
        if phase.epochs <= 0:  # a phase the study turns off trains no step
            return 0
        return train_settings(pipeline, phase.epochs, phase.lr, seed=0).total_steps(train_examples)

    return steps("baseline"), sum(steps(name) for name in DISTILLED_PHASES)


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
