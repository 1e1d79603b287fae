"""The search space and search policy: study file -> Optuna samplers, pruners and the
early-stopping rule of multi-objective studies.

Early stopping: Optuna's ``Trial.report``/``should_prune`` raise NotImplementedError in
multi-objective studies, so there:

    stop a trial after evaluation e when its select accuracy (harness.data) is below the
    median select accuracy at evaluation e of the completed trials of the same student size (num_layers,
    hidden_size), once at least ``pruner.n_startup_trials`` such trials exist.

Comparing within a size keeps a small, cheap student from being stopped only for being
small: it competes on the compute axis, not against bigger students' accuracy. In
single-objective studies Optuna's MedianPruner does the same over all trials.
"""

from __future__ import annotations

import statistics

import optuna

from harness.compute import ComputeCost
from harness.config import (OBJECTIVE_DIRECTIONS, RESIZED_TEACHER, SEARCHABLE, PrunerConfig,
                            StudyConfig, TrialConfig, default_trial_config)
from harness.sweep.confirm import SearchOnly, is_repeat


def suggest_trial_config(trial: optuna.Trial, study_config: StudyConfig) -> TrialConfig:
    """Sample every ``search`` entry; the rest of the trial comes from the study file.

    The student's source is sampled first: a pre-trained checkpoint has its own size, so
    the resized teacher's size parameters are not sampled for it.
    """
    sampled = {}
    search = sorted(study_config.search.items(), key=lambda item: item[0] != "student_source")
    for name, param in search:
        source = sampled.get("student_source", study_config.student.source)
        if SEARCHABLE[name].resized_only and source != RESIZED_TEACHER:
            continue
        if param.choices is not None:
            sampled[name] = trial.suggest_categorical(name, list(param.choices))
        elif SEARCHABLE[name].kind is int:
            sampled[name] = trial.suggest_int(name, param.low, param.high,
                                              step=param.step or 1, log=param.log)
        else:
            sampled[name] = trial.suggest_float(name, param.low, param.high,
                                                step=param.step, log=param.log)
    return default_trial_config(study_config, **sampled)


def directions(study_config: StudyConfig) -> list[str]:
    return [OBJECTIVE_DIRECTIONS[metric] for metric in study_config.objectives.metrics]


def objective_values(study_config: StudyConfig, stored: dict) -> list[float]:
    """The objectives of a trial from its stored fields."""
    missing = [metric for metric in study_config.objectives.metrics if metric not in stored]
    if missing:  # int8_bytes of a student that could not be deployed
        raise ValueError(f"no {', '.join(missing)}: {stored.get('deploy_error', 'not measured')}")
    return [float(stored[metric]) for metric in study_config.objectives.metrics]


def constraint_violations(study_config: StudyConfig, stored: dict) -> dict[str, float]:
    """Optuna's convention: a trial is feasible when every value is <= 0."""
    return {metric: float(stored[metric]) - limit
            for metric, limit in study_config.objectives.constraints.items()}


def architecture_costs(untrained: ComputeCost, teacher_flops_per_example: int) -> dict[str, float]:
    """The compute metrics an untrained student already has: FLOPs (also as a share of the
    teacher's), parameters and latency; train_flops is known only after training."""
    return {"flops_per_example": untrained.flops_per_example, "params": untrained.params,
            "latency_ms": untrained.latency_ms,
            "flops_share": untrained.flops_per_example / teacher_flops_per_example}


def over_budget(study_config: StudyConfig, costs: dict[str, float]) -> dict[str, float]:
    """Constraints the untrained student's ``architecture_costs`` already break, by how much."""
    return {metric: float(costs[metric]) - limit
            for metric, limit in study_config.objectives.constraints.items()
            if metric in costs and costs[metric] > limit}


def make_sampler(study_config: StudyConfig, seed: int) -> SearchOnly:
    """The study file's sampler, seeded, blind to the front's repeats
    (``harness.sweep.confirm``)."""
    return SearchOnly(_sampler(study_config, seed))


def _sampler(study_config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    config = study_config.sampler
    if config.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.n_startup_trials,
                                          multivariate=True)
    if config.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=config.n_startup_trials)
    if config.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=config.population_size or 50)
    if config.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    grid = {name: list(param.choices) for name, param in study_config.search.items()}
    return optuna.samplers.GridSampler(grid, seed=seed)


def make_pruner(study_config: StudyConfig) -> optuna.pruners.BasePruner:
    config = study_config.pruner
    if config.name == "median" and len(study_config.objectives.metrics) == 1:
        return optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials,
                                           n_warmup_steps=config.n_warmup_epochs)
    return optuna.pruners.NopPruner()


def should_stop_early(finished: list[optuna.trial.FrozenTrial], size: tuple[int, int],
                      evaluation: int, select_accuracy: float, config: PrunerConfig) -> bool:
    """The multi-objective rule in this module's docstring."""
    if config.name == "none" or evaluation <= config.n_warmup_epochs:
        return False
    peers = [curve(t)[evaluation - 1] for t in finished
             if t.state == optuna.trial.TrialState.COMPLETE and not is_repeat(t)
             and (t.user_attrs.get("num_layers"), t.user_attrs.get("hidden_size")) == size
             and len(curve(t)) >= evaluation]
    enough = peers and len(peers) >= config.n_startup_trials  # no peers: no median to fall below
    return bool(enough) and select_accuracy < statistics.median(peers)


def curve(trial: optuna.trial.FrozenTrial) -> list[float]:
    """A trial's accuracy after each evaluation; trials of studies made before the select
    split stored it (on dev, their rule) as ``epoch_dev_accuracy``."""
    return trial.user_attrs.get("select_accuracies",
                                trial.user_attrs.get("epoch_dev_accuracy", []))


def stop_if_behind(trial: optuna.Trial, study_config: StudyConfig, size: tuple[int, int],
                   last_evaluation: int, evaluation: int, select_accuracy: float) -> None:
    """Raise ``optuna.TrialPruned`` when the trial should stop after ``evaluation``: Optuna's
    pruner with one objective, this module's rule with several."""
    if len(study_config.objectives.metrics) == 1:
        trial.report(select_accuracy, evaluation)
        if trial.should_prune():
            raise optuna.TrialPruned(f"MedianPruner at evaluation {evaluation} "
                                     f"(select accuracy {select_accuracy:.4f})")
        return
    # Stopping at the last evaluation would save nothing and lose a finished result.
    if evaluation >= last_evaluation:
        return
    finished = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if should_stop_early(finished, size, evaluation, select_accuracy, study_config.pruner):
        raise optuna.TrialPruned(f"below the median of size {size} at evaluation {evaluation} "
                                 f"(select accuracy {select_accuracy:.4f})")
