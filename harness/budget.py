"""Both arms' budgets: the distilled arm (intermediate matching, distillation and fine-tune
phases, one after the other) and its label-only baseline train for the same maximum number
of optimiser steps, or ``kd_gain`` measures extra training as well as distillation. The
steps follow from each phase's epochs, the schedule's ``min_steps`` floor (once per phase)
and the size of the training split, so the check runs once the data is loaded, before the
teacher trains.

With a teacher-labelled transfer set the distillation phase makes its ``epochs`` passes
over the labelled examples and the transfer examples on top (each labelled example is seen
as often as without the set), and the baseline of a matched study gets the distilled arm's
steps as its budget (``baseline_budget``): it trains as long, stopping on its own select
split where its schedule says so.
"""

from __future__ import annotations

import dataclasses
import math

from harness.config import ConfigError, PipelineConfig
from harness.train import TrainSettings, train_settings

DISTILLED_PHASES = ("intermediate", "distill", "finetune")


def phase_settings(pipeline: PipelineConfig,
                   names: tuple[str, ...]) -> dict[str, TrainSettings]:
    """The settings of the phases ``names`` that the study turns on (epochs > 0)."""
    phases = {name: getattr(pipeline, name) for name in names}
    return {name: train_settings(pipeline, phase.epochs, phase.lr, seed=0)
            for name, phase in phases.items() if phase.epochs > 0}


def phase_examples(name: str, train_examples: int, transfer_examples: int) -> int:
    """The examples phase ``name`` trains on: the transfer set joins distillation alone."""
    return train_examples + (transfer_examples if name == "distill" else 0)


def arm_steps(pipeline: PipelineConfig, train_examples: int,
              transfer_examples: int = 0) -> tuple[int, int]:
    """(baseline, distilled arm) maximum optimiser steps, each phase's from its own epochs,
    on ``train_examples`` labelled and ``transfer_examples`` transfer examples."""
    baseline, distilled = (
        sum(settings.total_steps(phase_examples(name, train_examples, transfer_examples))
            for name, settings in phase_settings(pipeline, names).items())
        for names in (("baseline",), DISTILLED_PHASES))
    return baseline, distilled


def on_labelled_passes(settings: TrainSettings, train_examples: int,
                       transfer_examples: int) -> TrainSettings:
    """``settings`` for a phase that trains on transfer examples too, evaluating (where its
    schedule says every epoch) once a pass over the labelled examples, as its baseline
    does, so that both arms choose among the same steps."""
    if transfer_examples == 0 or settings.eval_every is not None:
        return settings
    return dataclasses.replace(settings,
                               eval_every=math.ceil(train_examples / settings.batch_size))


def baseline_budget(pipeline: PipelineConfig, train_examples: int,
                    transfer_examples: int) -> int | None:
    """The baseline's budget in steps where its epochs do not give it: the distilled arm's,
    in a matched study distilling on a transfer set; None otherwise."""
    if transfer_examples == 0 or pipeline.budget == "unequal":
        return None
    return arm_steps(pipeline, train_examples, transfer_examples)[1]


def equal_budgets(pipeline: PipelineConfig, train_examples: int,
                  transfer_examples: int = 0) -> bool:
    baseline, distilled = arm_steps(pipeline, train_examples, transfer_examples)
    budget = baseline_budget(pipeline, train_examples, transfer_examples)
    return (baseline if budget is None else budget) == distilled


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
