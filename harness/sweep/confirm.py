"""Confirming the front on fresh seeds: after the search, every configuration on the Pareto
front (and, with ``confirm.best_per_size: k``, the best k of each student size), and a trial
of each student on the label-only front (its baselines against FLOPs: the other side of
the report's "does KD pay" answer), is trained again on ``confirm.seeds`` fresh seeds, each
repeat with its own label-only baseline on its seed. Then the front on the means (fresh
runs only; a configuration without them stands in with its search run) is drawn again,
and its members without fresh runs are confirmed in a next round, until it holds
confirmed configurations only (at most ``confirm.max_rounds`` rounds; a repeat records
its round in ``confirm_round``).

Repeats are ordinary trials of the study, queued with Optuna's ``enqueue_trial`` with the
first run's parameters and the user attributes ``repeat_of`` (the first run's trial
number) and ``seed``. They are not counted in ``--n-trials``, never pruned, and hidden from
the sampler (``SearchOnly``): TPE must not be pulled toward points that were run again
because they were good. Any worker runs them; two workers may queue the same repeat at
once, and then the lowest-numbered live trial of a (configuration, seed) runs it and the
other is refused before training (``fail_reason: duplicate repeat``).
"""

from __future__ import annotations

import dataclasses
import logging

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.config import StudyConfig
from harness.sweep.front import front_trials, pareto_mask

REPEAT_OF = "repeat_of"
SEED = "seed"
ROUND = "confirm_round"
DUPLICATE = "duplicate repeat"
LIVE = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)

log = logging.getLogger(__name__)


def is_repeat(trial: FrozenTrial) -> bool:
    return REPEAT_OF in trial.user_attrs


def search_trials(study: optuna.Study, states=None) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=states) if not is_repeat(t)]


def configurations_to_confirm(study: optuna.Study, study_config: StudyConfig) -> list[FrozenTrial]:
    """The complete search trials whose configurations are confirmed: the front of dev
    accuracy against FLOPs (the report's), a trial of each student on the label-only front,
    the best ``best_per_size`` of each size and, once the repeats queued so far have run,
    the unconfirmed members of the front on the means."""
    complete = [t for t in search_trials(study, (TrialState.COMPLETE,))
                if "dev_accuracy" in t.user_attrs and "flops_per_example" in t.user_attrs]
    chosen = {t.number: t for t in front_trials(complete) + label_only_front(complete)}
    by_size: dict[tuple, list[FrozenTrial]] = {}
    for trial in complete:
        size = tuple(trial.user_attrs.get(k)
                     for k in ("num_layers", "hidden_size", "student_source"))
        by_size.setdefault(size, []).append(trial)
    for trials in by_size.values():
        best = sorted(trials, key=lambda t: (-t.user_attrs["dev_accuracy"], t.number))
        chosen.update((t.number, t) for t in best[:study_config.confirm.best_per_size])
    repeats = [t for t in study.get_trials(deepcopy=False) if is_repeat(t)]
    if repeats and not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in repeats):
        chosen.update((t.number, t) for t in unconfirmed_on_means_front(complete, repeats))
    return sorted(chosen.values(), key=lambda t: t.number)


def label_only_front(complete: list[FrozenTrial]) -> list[FrozenTrial]:
    """The first trial of each student (size, source, init) with its best baseline, where
    that baseline is on the front of baseline dev accuracy against FLOPs (trials of one
    student share their baselines: one trial stands for the student)."""
    best: dict[tuple, FrozenTrial] = {}
    for trial in complete:
        if "baseline_dev_accuracy" not in trial.user_attrs:
            continue
        student = tuple(trial.user_attrs.get(k)
                        for k in ("num_layers", "hidden_size", "student_source", "init"))
        if (student not in best or trial.user_attrs["baseline_dev_accuracy"]
                > best[student].user_attrs["baseline_dev_accuracy"]):
            best[student] = trial
    return front_trials(list(best.values()), "baseline_dev_accuracy")


def unconfirmed_on_means_front(complete: list[FrozenTrial],
                               repeats: list[FrozenTrial]) -> list[FrozenTrial]:
    """The search trials on the front of mean dev accuracy (over complete fresh runs; a
    trial without any stands in with its own run) against FLOPs that have no repeat yet."""
    fresh: dict[int, list[float]] = {}
    for repeat in repeats:
        if repeat.state == TrialState.COMPLETE and "dev_accuracy" in repeat.user_attrs:
            fresh.setdefault(repeat.user_attrs[REPEAT_OF], []).append(
                repeat.user_attrs["dev_accuracy"])
    means = [sum(fresh[t.number]) / len(fresh[t.number]) if t.number in fresh
             else t.user_attrs["dev_accuracy"] for t in complete]
    on_front = pareto_mask(means, [t.user_attrs["flops_per_example"] for t in complete])
    repeated = {t.user_attrs[REPEAT_OF] for t in repeats}
    return [t for t, front in zip(complete, on_front) if front and t.number not in repeated]


def queue_repeats(study: optuna.Study, study_config: StudyConfig) -> int:
    """Queue the repeats the configurations to confirm still lack; how many were queued."""
    plan = plan_repeats(study, study_config)
    if plan.capped:
        log.warning("confirm.max_rounds (%d) binds: %d configurations on the front on the "
                    "means stay unconfirmed", study_config.confirm.max_rounds, plan.capped)
    for first, seed in plan.repeats:
        study.enqueue_trial(first.params, user_attrs={REPEAT_OF: first.number, SEED: seed,
                                                      ROUND: plan.round},
                            skip_if_exists=False)
    return len(plan.repeats)


@dataclasses.dataclass(frozen=True)
class RepeatPlan:
    repeats: list[tuple[FrozenTrial, int]]  # (first run, seed) to queue now
    round: int
    capped: int  # configurations left unconfirmed because confirm.max_rounds binds


def plan_repeats(study: optuna.Study, study_config: StudyConfig) -> RepeatPlan:
    """The repeats to queue now and their confirmation round; none once the round they
    would open is past ``confirm.max_rounds`` (so a finished study re-run has no work left).

    A (configuration, seed) that has any trial, whatever its state, is not queued again: a
    live one will finish, a reaped one was re-queued by the reaper, and one that failed on
    its own (diverged) would fail again.
    """
    missing = missing_repeats(study, study_config)
    repeats = [t for t in study.get_trials(deepcopy=False) if is_repeat(t)]
    # More seeds for configurations already confirmed (a larger confirm.seeds on a re-run)
    # join the last round; a configuration confirmed for the first time opens the next.
    new = {first.number for first, _ in missing} - {t.user_attrs[REPEAT_OF] for t in repeats}
    this_round = max((t.user_attrs.get(ROUND, 1) for t in repeats), default=0) + bool(new)
    if new and this_round > study_config.confirm.max_rounds:
        return RepeatPlan([], this_round, len(new))
    return RepeatPlan(missing, this_round, 0)


def missing_repeats(study: optuna.Study, study_config: StudyConfig) -> list[tuple[FrozenTrial, int]]:
    """(first run, seed) of every repeat the configurations to confirm lack, most compute
    first: several workers then end the confirmation together, the small repeats filling
    in around the large ones (longest-processing-time order)."""
    if study_config.confirm.seeds <= 0:
        return []
    have = {(t.user_attrs[REPEAT_OF], t.user_attrs[SEED])
            for t in study.get_trials(deepcopy=False) if is_repeat(t)}
    missing = []
    for first in sorted(configurations_to_confirm(study, study_config),
                        key=lambda t: (-t.user_attrs["flops_per_example"], t.number)):
        first_seed = first.user_attrs.get(SEED, study_config.seed)
        missing += [(first, seed)
                    for seed in range(first_seed + 1, first_seed + 1 + study_config.confirm.seeds)
                    if (first.number, seed) not in have]
    return missing


class DuplicateRepeat(RuntimeError):
    """Another trial runs this (configuration, seed); this one is not run."""


def refuse_duplicate(trial: optuna.Trial) -> None:
    """Trial numbers are given out atomically by the storage, so "the lowest-numbered live
    trial of a (configuration, seed) runs it" picks exactly one of its copies."""
    key = (trial.user_attrs[REPEAT_OF], trial.user_attrs[SEED])
    earlier = [t for t in trial.study.get_trials(deepcopy=False, states=LIVE)
               if t.number < trial.number and is_repeat(t)
               and (t.user_attrs[REPEAT_OF], t.user_attrs[SEED]) == key]
    if earlier:
        trial.set_user_attr("fail_reason", DUPLICATE)
        raise DuplicateRepeat(f"trial {earlier[0].number} runs configuration {key[0]} on "
                              f"seed {key[1]}")


class _SearchView:
    """The study as a sampler sees it: its search trials only."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name):
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
                if not is_repeat(t)]

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False,
                    **kwargs) -> list[FrozenTrial]:
        # Optuna's samplers read trials through this private method (with its cache).
        return [t for t in self._study._get_trials(deepcopy=deepcopy, states=states,
                                                   use_cache=use_cache, **kwargs)
                if not is_repeat(t)]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class SearchOnly(optuna.samplers.BaseSampler):
    """``inner`` sampling as if the study held its search trials only (no repeats).

    Written by hand: Optuna has no way to keep some finished trials out of a sampler's
    history; this passes every sampler hook a view of the study without them.
    """

    def __init__(self, inner: optuna.samplers.BaseSampler):
        self.inner = inner

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(_SearchView(study), trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(_SearchView(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(_SearchView(study), trial, param_name,
                                             param_distribution)

    def before_trial(self, study, trial):
        self.inner.before_trial(_SearchView(study), trial)

    def after_trial(self, study, trial, state, values):
        self.inner.after_trial(_SearchView(study), trial, state, values)

    def reseed_rng(self):
        self.inner.reseed_rng()


def front_numbers(study: optuna.Study) -> tuple[set[int], set[int]]:
    """The search trials whose students are kept (on the study's own front or the printed
    one), and those of the printed front alone."""
    best = {t.number for t in study.best_trials if not is_repeat(t)}
    printed = {t.number for t in front_trials(search_trials(
        study, (optuna.trial.TrialState.COMPLETE,)))}
    return best | printed, printed
