"""Several workers on one study: counting its trials and reaping those of dead workers.

Optuna's RDB storages have heartbeats (``--heartbeat-seconds``): a trial whose worker
stops beating is failed and re-queued by Optuna's retry callback. The journal file
storage (the embedded default) has none, so a killed worker's trial would stay RUNNING
for ever. Each trial records its worker (``worker_identity``), and any worker on the same
host fails and re-queues the RUNNING trials whose process is gone. Optuna creates a trial
and samples it before the objective can record anything, so a trial with no worker
record is reaped once it is older than a grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.trial import TrialState

from harness.sweep.confirm import REPEAT_OF, SEED, is_repeat
from harness.sweep.storage import MAX_RETRIES

log = logging.getLogger(__name__)

# Between creating a trial and the objective's first line, Optuna only samples it (at
# most seconds, even for the GP sampler): a trial this old with no worker is an orphan.
ORPHAN_GRACE_SECONDS = 120.0


@dataclass(frozen=True)
class TrialCounts:
    """Search trials by state, and the front's repeats (``harness.sweep.confirm``) apart."""

    complete: int
    pruned: int
    running: int
    waiting: int
    repeats_done: int  # finished or failed
    repeats_running: int
    repeats_waiting: int

    @property
    def finished(self) -> int:
        """What --n-trials counts: complete or pruned search trials, never failed."""
        return self.complete + self.pruned


def trial_counts(study: optuna.Study) -> TrialCounts:
    trials = study.get_trials(deepcopy=False)
    search = [t.state for t in trials if not is_repeat(t)]
    repeats = [t.state for t in trials if is_repeat(t)]
    return TrialCounts(*(search.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                    TrialState.RUNNING, TrialState.WAITING)),
                       repeats_done=sum(s.is_finished() for s in repeats),
                       repeats_running=repeats.count(TrialState.RUNNING),
                       repeats_waiting=repeats.count(TrialState.WAITING))


class Terminated(KeyboardInterrupt):
    """SIGTERM: Slurm's preemption and ``scancel``, Kubernetes' eviction. A Ctrl-C to every
    handler of one (the running trial is recorded failed, local workers stopped), and the
    trial is queued again at once (``requeue``), so another worker takes it without waiting
    for a heartbeat to expire."""


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises ``Terminated`` in this process (its main thread)."""
    def terminated(signum, frame):
        # A second SIGTERM must not break the handling of the first.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, terminated)


def requeue(study: optuna.Study, trial: optuna.trial.BaseTrial, retries: int) -> None:
    """Queue ``trial``'s parameters (and a repeat's configuration and seed) again."""
    repeat = {k: trial.user_attrs[k] for k in (REPEAT_OF, SEED) if k in trial.user_attrs}
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retries": retries,
                                                  **repeat}, skip_if_exists=False)


def worker_identity() -> dict:
    """This process as a trial's ``worker`` user attribute records it.

    A PID alone is no identity: a later process may get the same number, soon after a
    restart. On Linux the record adds the boot and the process's start time (clock ticks
    since boot), which together tell the recorded process from any later one.
    """
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "boot_id": _boot_id(),
            "started": _start_ticks(pid)}


def reap_dead_local_trials(study: optuna.Study,
                           orphan_grace_seconds: float = ORPHAN_GRACE_SECONDS) -> list[int]:
    """Fail and re-queue RUNNING trials of processes on this host that no longer exist,
    and trials that recorded no worker within ``orphan_grace_seconds``."""
    if _has_heartbeat(study):
        # RDB storages with a heartbeat: Optuna's stale-trial check and retry callback do it.
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9, stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return []
    host, reaped = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _why_dead(trial, host, orphan_grace_seconds)
        if reason is not None and _fail_and_requeue(study, trial, reason):
            reaped.append(trial.number)
    return reaped


def describe_running(study: optuna.Study,
                     orphan_grace_seconds: float = ORPHAN_GRACE_SECONDS) -> str:
    """The RUNNING trials and who runs them, for a worker that waits on them."""
    parts = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is not None:
            parts.append(f"trial {trial.number} (host {worker.get('host')}, "
                         f"pid {worker.get('pid')})")
        elif _has_heartbeat(study):
            parts.append(f"trial {trial.number} (no worker recorded yet)")
        else:
            due = trial.datetime_start + timedelta(seconds=orphan_grace_seconds)
            parts.append(f"trial {trial.number} (no worker recorded; failed and re-queued "
                         f"at {due:%H:%M:%S} unless one appears)")
    return ", ".join(parts)


def _has_heartbeat(study: optuna.Study) -> bool:
    # study._storage: Optuna offers no public handle on the storage of a study, nor on
    # another process's trial; its own fail_stale_trials reaches the storage the same way.
    return bool(getattr(study._storage, "get_heartbeat_interval", lambda: None)())


def _why_dead(trial: optuna.trial.FrozenTrial, host: str,
              orphan_grace_seconds: float) -> str | None:
    """Why the worker of a RUNNING trial is known to be gone; None while it may run."""
    worker = trial.user_attrs.get("worker")
    if worker is None:
        # datetime_start: naive local time of the host that created the trial, and the
        # journal file serves one host, so the comparison is on one clock.
        if datetime.now() - trial.datetime_start < timedelta(seconds=orphan_grace_seconds):
            return None
        return f"its worker died before recording itself (none after {orphan_grace_seconds:g} s)"
    if worker.get("host") != host or _alive(worker):
        return None  # another host's process is not ours to judge
    return f"worker {worker.get('pid')} died (no heartbeat)"


def _fail_and_requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> bool:
    """Mark ``trial`` failed for ``reason`` and queue its parameters again (up to
    MAX_RETRIES times); False if another worker finished or reaped it first."""
    try:
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    retries = trial.user_attrs.get("retries", 0)
    if retries >= MAX_RETRIES:  # e.g. a configuration that the OOM killer always stops
        log.warning("trial %d: %s; marked failed, not re-queued after %d retries",
                    trial.number, reason, retries)
        return True
    requeue(study, trial, retries + 1)
    log.warning("trial %d: %s; marked failed and re-queued", trial.number, reason)
    return True


def _alive(worker: dict) -> bool:
    """Whether the process that a ``worker`` record of this host names still runs."""
    pid = worker.get("pid")
    if not isinstance(pid, int):
        return True  # not a record this module wrote: not ours to judge
    if worker.get("boot_id") not in (None, _boot_id()):
        return False  # recorded before the machine restarted
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    stat = _process_stat(pid)
    if stat is not None and stat.state == "Z":
        return False  # exited, not yet waited for by its parent (a driver's local worker)
    started = worker.get("started")
    # A process with this PID that started at another time is a later one. None: the
    # process just ended, or /proc hides it (hidepid); the next look decides.
    return started is None or stat is None or stat.start_ticks == started


def _boot_id() -> str | None:
    """This boot of the machine (Linux); None elsewhere."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None where unknown."""
    stat = _process_stat(pid)
    return None if stat is None else stat.start_ticks


@dataclass(frozen=True)
class _ProcessStat:
    state: str  # "R", "S", ... "Z" for a zombie
    start_ticks: int


def _process_stat(pid: int) -> _ProcessStat | None:
    """Fields 3 (state) and 22 (start time) of /proc/PID/stat (Linux); None where that
    file cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2, the command name, is in parentheses and may hold spaces or ")": the
    # fields after its last ")" are numbered from 3.
    fields = stat.rsplit(")", 1)[1].split()
    return _ProcessStat(state=fields[3 - 3], start_ticks=int(fields[22 - 3]))
