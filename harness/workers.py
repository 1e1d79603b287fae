"""Several workers on one study: counting its trials and reaping those of dead workers.

Optuna's RDB storages have heartbeats (``--heartbeat-seconds``): a trial whose worker
stops beating is failed and re-queued by Optuna's retry callback. The journal file
storage (the embedded default) has none, so a killed worker's trial would stay RUNNING
for ever. Each trial records its worker's host and PID; any worker on the same host fails
and re-queues the RUNNING trials whose process is gone.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from harness.storage import MAX_RETRIES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialCounts:
    complete: int
    pruned: int
    running: int
    waiting: int

    @property
    def finished(self) -> int:
        """What --n-trials counts: complete or pruned, never failed."""
        return self.complete + self.pruned


def trial_counts(study: optuna.Study) -> TrialCounts:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return TrialCounts(*(states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                    TrialState.RUNNING, TrialState.WAITING)))


def reap_dead_local_trials(study: optuna.Study) -> list[int]:
    """Fail and re-queue RUNNING trials of processes on this host that no longer exist."""
    # study._storage: Optuna offers no public handle on another process's trial; its own
    # fail_stale_trials reaches the storage the same way.
    if getattr(study._storage, "get_heartbeat_interval", lambda: None)():
        # RDB storages with a heartbeat: Optuna's stale-trial check and retry callback do it.
        optuna.storages.fail_stale_trials(study)
        return []
    host, reaped = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", {})
        if worker.get("host") != host or _alive(worker.get("pid")):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason",
                                               f"worker {worker.get('pid')} died (no heartbeat)")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker reaped it first
        reaped.append(trial.number)
        retries = trial.user_attrs.get("retries", 0)
        if retries >= MAX_RETRIES:  # e.g. a configuration that the OOM killer always stops
            log.warning("trial %d: its worker (pid %s) is gone; marked failed, not re-queued "
                        "after %d retries", trial.number, worker.get("pid"), retries)
            continue
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number,
                                                      "retries": retries + 1},
                            skip_if_exists=False)
        log.warning("trial %d: its worker (pid %s) is gone; marked failed and re-queued",
                    trial.number, worker.get("pid"))
    return reaped


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return True  # not ours to judge: a trial started before the worker was recorded
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
