"""Where a trial meets the study: ``objective`` samples a trial configuration, refuses what
must not train (one trial too many, a repeat another worker runs, a student over its
compute budget), runs ``harness.pipeline.run_trial`` and records the result, or why it
failed, in the storage and in W&B.
"""

from __future__ import annotations

import dataclasses
import functools
import traceback
from pathlib import Path

import optuna
import torch

from harness.generative_pipeline import run_generative_trial
from harness.config import StudyConfig, TrialConfig
from harness.generative_shared import GenerativeShared
from harness.pipeline import (TrialHooks, TrialResult, reported_evaluations, run_trial,
                              untrained_cost)
from harness.shared import SharedArtifacts
from harness.student import Student, resolve_student
from harness.sweep import tracking
from harness.sweep.confirm import (DUPLICATE, REPEAT_OF, SEED, is_repeat, refuse_duplicate,
                                   search_trials)
from harness.sweep.deployment import deploy_in_trial
from harness.sweep.provenance import provenance
from harness.sweep.search import (architecture_costs, constraint_violations, objective_values,
                                  over_budget, stop_if_behind, suggest_trial_config)
from harness.sweep.storage import DatabaseConnectionLost
from harness.sweep.workers import Terminated, requeue, worker_identity
from harness.train import Diverged, StepLogger

# Trials refused before training (one too many, a repeat another trial runs): not failures
# of the study's trials, so they never count toward the driver's run of failures.
REFUSED = ("surplus", DUPLICATE)


def objective(trial: optuna.Trial, study_config: StudyConfig,
              shared: SharedArtifacts | GenerativeShared, run_dir: Path, context: dict,
              n_trials: int) -> list[float]:
    """One Optuna trial: sample, run, record. Failures keep their reason in the storage.

    ``context`` (redacted storage URL, device) goes into the W&B config beside the trial's.
    """
    # First, so that a worker killed at any later point can be recognised as dead.
    trial.set_user_attr("worker", worker_identity())
    repeat = is_repeat(trial)
    if repeat:
        refuse_duplicate(trial)
    else:
        refuse_surplus(trial, n_trials)
    trial_config = suggest_trial_config(trial, study_config)
    if repeat:  # the configuration's parameters (queued), on the repeat's own seed
        trial_config = dataclasses.replace(trial_config, seed=trial.user_attrs[SEED])
    trial.set_user_attr("provenance", provenance(shared.device))
    tracking_config = study_config.tracking
    run = tracking.start_trial_run(
        tracking_config.wandb, tracking_config.project, tracking_config.entity,
        tracking_config.tags, run_dir, trial.study.study_name, trial.number,
        "repeat" if repeat else "trial",
        {"trial": dataclasses.asdict(trial_config), "study": dataclasses.asdict(study_config),
         # W&B groups a configuration's runs by this key (the first run's trial number).
         "configuration": trial.user_attrs.get(REPEAT_OF, trial.number), **context})
    if run.run_id:
        trial.set_user_attr("wandb_run_id", run.run_id)
    student_dir = run_dir / "students" / f"trial-{trial.number}"
    try:
        result = run_task_trial(trial, study_config, trial_config, shared, run.log, repeat,
                                student_dir)
    except optuna.TrialPruned as pruned:
        trial.set_user_attr("prune_reason", str(pruned))
        run.finish({"prune_reason": str(pruned)}, "pruned", str(pruned))
        raise
    except BaseException as error:  # recorded, then re-raised for Optuna to mark FAIL
        reason = failure_reason(error)
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("traceback", "".join(traceback.format_exception(error)[-3:])[-2000:])
        if isinstance(error, Terminated):  # preemption, not the trial's fault: no retry counted
            requeue(trial.study, trial, trial.user_attrs.get("retries", 0))
        run.finish({"fail_reason": reason}, "failed", reason)
        raise
    stored = result.stored_fields()
    if study_config.deploy.export == "every-trial":
        stored.update(deploy_in_trial(study_config, shared, trial_config.student_source,
                                      student_dir))
    for key, value in stored.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("student_path", str(student_dir))
    for key, value in constraint_violations(study_config, stored).items():
        trial.set_constraint(key, value)
    run.finish(stored, "complete")
    return objective_values(study_config, stored)


def run_task_trial(trial: optuna.Trial, study_config: StudyConfig, trial_config: TrialConfig,
                   shared: SharedArtifacts | GenerativeShared, log: StepLogger, repeat: bool,
                   student_dir: Path) -> TrialResult:
    """The trial's pipeline for the study's task. A classifier over its compute budget is
    refused untrained, and a search trial stopped when behind its peers; a generative
    trial runs whole (its constraints are checked on what it measured)."""
    if study_config.generative:
        return run_generative_trial(study_config, trial_config, shared, TrialHooks(log=log),
                                   save_student_to=student_dir)
    student = resolve_student(study_config, trial_config, shared)
    # A repeat is never stopped early: its configuration already made the front.
    transfer_examples = (0 if shared.transfer is None
                         else shared.transfer.examples(trial_config.transfer_copies))
    hooks = TrialHooks(log=log, on_evaluation=None if repeat else early_stop(
        trial, study_config, student, len(student.text.tokens["train"]), transfer_examples))
    refuse_over_budget(trial, study_config, student, shared.device,
                       shared.teacher_cost.flops_per_example)
    return run_trial(study_config, trial_config, shared, hooks, save_student_to=student_dir)


def early_stop(trial: optuna.Trial, study_config: StudyConfig, student: Student,
               train_examples: int, transfer_examples: int):
    """The hook that stops a search trial behind its peers (``harness.sweep.search``),
    comparing it with trials of the same student size (a pre-trained student's own)."""
    return functools.partial(stop_if_behind, trial, study_config,
                             (student.shape.num_layers, student.shape.hidden_size),
                             reported_evaluations(study_config, train_examples,
                                                  transfer_examples))


def refuse_over_budget(trial: optuna.Trial, study_config: StudyConfig, student: Student,
                       device: torch.device, teacher_flops_per_example: int) -> None:
    """Prune, untrained, a student whose architecture breaks a compute constraint; the
    constraint values mark it infeasible, so the sampler learns to avoid its region."""
    if not study_config.objectives.constraints:
        return
    untrained = untrained_cost(student, device, study_config.pipeline.latency_repeats)
    costs = architecture_costs(untrained, teacher_flops_per_example)
    over = over_budget(study_config, costs)
    for metric, excess in over.items():
        trial.set_constraint(metric, excess)
    if over:
        raise optuna.TrialPruned("over budget before training: " + ", ".join(
            f"{metric} {costs[metric]:g} > {study_config.objectives.constraints[metric]:g}"
            for metric in over))


class SurplusTrial(RuntimeError):
    """Workers raced past the asked total; this trial is not run (and not counted)."""


def refuse_surplus(trial: optuna.Trial, n_trials: int) -> None:
    # Trial numbers are given out atomically by the storage, so counting the live trials
    # numbered below this one decides exactly which trial is one too many.
    live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ahead = sum(t.number < trial.number and t.state in live
                for t in search_trials(trial.study))
    if ahead >= n_trials:
        trial.set_user_attr("fail_reason", "surplus")
        raise SurplusTrial(f"the study already has {n_trials} trials finished or running")


def failure_reason(error: BaseException) -> str:
    """The ``fail_reason`` a failed trial stores: a word for the failures a user acts on
    (Ctrl-C or SIGTERM, a diverged loss, a lost database, memory), else the error's type
    and the start of its message."""
    if isinstance(error, Terminated):
        return "interrupted (SIGTERM)"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, Diverged):
        return "diverged"
    if isinstance(error, DatabaseConnectionLost):
        return str(error)
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower():
        return "out of memory"
    return f"{type(error).__name__}: {str(error)[:300]}"
