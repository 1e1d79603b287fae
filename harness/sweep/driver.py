"""The scheduling loop every worker runs: search trials until the study holds
``--n-trials`` finished ones (shared by all workers), then the front's repeats
(``harness.sweep.confirm``) until none is left; between trials, wait for other workers'
trials and reap those of dead workers (``harness.sweep.workers``).
"""

from __future__ import annotations

import logging
import shutil
import time
from enum import Enum
from pathlib import Path

import optuna
from tqdm.auto import tqdm

from harness.config import StudyConfig
from harness.generative_shared import GenerativeShared
from harness.shared import SharedArtifacts
from harness.sweep.confirm import front_numbers, plan_repeats, queue_repeats
from harness.sweep.objective import REFUSED, objective
from harness.sweep.workers import (ORPHAN_GRACE_SECONDS, TrialCounts, describe_running,
                                   reap_dead_local_trials, trial_counts)

log = logging.getLogger("harness.study")

MAX_CONSECUTIVE_FAILURES = 5
FAIL = optuna.trial.TrialState.FAIL


class Step(Enum):
    RUN = "run a trial"
    WAIT = "wait for trials other workers run"
    DONE = "stop: the search and the confirmation are over"


class StudyAborted(RuntimeError):
    """Every recent trial failed: stop rather than fail for ever."""


def run_study(study: optuna.Study, study_config: StudyConfig,
              shared: SharedArtifacts | GenerativeShared, n_trials: int, run_dir: Path,
              context: dict,
              orphan_grace_seconds: float = ORPHAN_GRACE_SECONDS, progress: bool = True) -> None:
    """Run trials until the study holds ``n_trials`` finished search trials, then confirm
    the front: queue its repeats and run them until none is left.

    A trial that recorded no worker for ``orphan_grace_seconds`` is failed and re-queued.
    """
    reap_dead_local_trials(study, orphan_grace_seconds)
    states: list[optuna.trial.TrialState | None] = []  # this worker's trials; None: refused
    waiting_on, front_size = "", 0
    with tqdm(total=n_trials, desc="trials", unit="trial", disable=not progress) as bar:
        while True:
            counts = trial_counts(study)
            show_progress(bar, counts, n_trials, front_size)
            step = next_step(study, study_config, counts, n_trials)
            if step is Step.DONE:
                return
            if step is Step.RUN:
                states.append(run_one_trial(study, study_config, shared, run_dir, context,
                                            n_trials))
                front_size = keep_front_students(study, run_dir)
                abort_after_repeated_failures(states)
            else:
                waiting_on = wait_for_other_workers(study, orphan_grace_seconds, waiting_on)


def next_step(study: optuna.Study, study_config: StudyConfig, counts: TrialCounts,
              n_trials: int) -> Step:
    """What this worker does next, given the study's ``counts``. While the search lacks
    finished trials, run one unless the trials running elsewhere already make up the total
    (and none is queued); after the search (or when a grid is exhausted), queue the front's
    repeats and run those."""
    if counts.finished < n_trials and not grid_exhausted(study):
        return Step.RUN if counts.finished + counts.running < n_trials or counts.waiting \
            else Step.WAIT
    if queue_repeats(study, study_config):
        counts = trial_counts(study)
        log.info("confirming the front on %d fresh seeds: %d repeats to run",
                 study_config.confirm.seeds, counts.repeats_waiting + counts.repeats_running)
    if counts.repeats_waiting:
        return Step.RUN
    return Step.WAIT if counts.repeats_running else Step.DONE


def grid_exhausted(study: optuna.Study) -> bool:
    """A grid sampler has run every point: the search stops short of ``--n-trials``."""
    grid = getattr(study.sampler, "inner", study.sampler)  # SearchOnly wraps the study's own
    return isinstance(grid, optuna.samplers.GridSampler) and grid.is_exhausted(study)


def show_progress(bar: tqdm, counts: TrialCounts, n_trials: int, front_size: int) -> None:
    bar.n = min(counts.finished, n_trials)
    open_repeats = counts.repeats_waiting + counts.repeats_running
    bar.set_postfix(front=front_size, **({"repeats_left": open_repeats} if open_repeats else {}))
    bar.refresh()


def run_one_trial(study: optuna.Study, study_config: StudyConfig,
                  shared: SharedArtifacts | GenerativeShared, run_dir: Path, context: dict,
                  n_trials: int) -> optuna.trial.TrialState | None:
    """One trial through Optuna (its failure is caught and recorded there); its state, or
    None for a trial refused before training."""
    ran: list[optuna.trial.FrozenTrial] = []
    study.optimize(lambda trial: objective(trial, study_config, shared, run_dir, context, n_trials),
                   n_trials=1, catch=(Exception,), callbacks=[lambda _, trial: ran.append(trial)])
    return None if ran[0].user_attrs.get("fail_reason") in REFUSED else ran[0].state


def abort_after_repeated_failures(states: list[optuna.trial.TrialState | None]) -> None:
    ran = [state for state in states if state is not None]
    if ran[-MAX_CONSECUTIVE_FAILURES:] == [FAIL] * MAX_CONSECUTIVE_FAILURES:
        raise StudyAborted(f"the last {MAX_CONSECUTIVE_FAILURES} trials failed; see their "
                           "fail_reason in the storage")


def wait_for_other_workers(study: optuna.Study, orphan_grace_seconds: float,
                           announced: str) -> str:
    """Sleep a little, in case one of those workers dies and its trial returns; say what
    is waited on once, and again when it changes."""
    running = describe_running(study, orphan_grace_seconds)
    if running != announced:
        log.info("waiting for trials running in other workers: %s", running)
    time.sleep(2)
    reap_dead_local_trials(study, orphan_grace_seconds)
    return running


def keep_front_students(study: optuna.Study, run_dir: Path) -> int:
    """Delete saved students of finished trials on neither the study's own front (its
    objectives and constraints) nor the printed one (dev accuracy against FLOPs, search
    trials only); returns the printed front's size."""
    # Finished first: a trial that finishes between the two reads is kept, not deleted.
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    kept, printed = front_numbers(study)
    folder = run_dir / "students"
    for path in folder.glob("trial-*") if folder.is_dir() else ():
        number = int(path.name.removeprefix("trial-"))
        if number in finished and number not in kept:
            shutil.rmtree(path, ignore_errors=True)
    return len(printed)


def work_left(study: optuna.Study, study_config: StudyConfig, n_trials: int) -> bool:
    """Whether a worker starting now could find a trial to run (a finished study re-run
    for its report starts no local workers)."""
    counts = trial_counts(study)
    return (counts.finished < n_trials or counts.waiting > 0 or counts.repeats_waiting > 0
            or bool(plan_repeats(study, study_config).repeats))
