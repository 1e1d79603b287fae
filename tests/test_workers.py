"""Several worker processes on one study: exact totals, crashed workers, shared artifacts,
trials orphaned before their worker is recorded, reused PIDs, and workers that create
the same study at once.

PostgreSQL tests use the real server on loopback and skip without it; the journal-file
(embedded default) tests always run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch

from harness.config import ConfigError
from harness.study_file import load_study_config
from harness.sweep.confirm import REPEAT_OF, SEED, is_repeat
from harness.sweep.driver import run_study
from harness.sweep.local_workers import plan_workers
from harness.sweep.objective import REFUSED
from harness.sweep.search import directions, make_sampler
from harness.sweep.storage import open_storage
from harness.sweep.study_record import config_fingerprint, open_study
from harness.sweep.workers import describe_running, reap_dead_local_trials, worker_identity

from .conftest import REPO, SMOKE, THREADS
from .test_storage import fresh_database, run_together

COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                           optuna.trial.TrialState.RUNNING)
# Trials long enough to be killed mid-way; every worker of a study runs the same settings.
SLOW = ("--set", "pipeline.distill.epochs=8", "--set", "pipeline.budget=unequal")


def start_worker(cwd: Path, storage: str, name: str, n_trials: int, *extra: str,
                 cache: Path | None = None) -> subprocess.Popen:
    # Tests start workers in pairs: they share this process's cores (see conftest.THREADS).
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(max(1, THREADS // 2))}
    if cache is not None:
        env["KD_HARNESS_CACHE"] = str(cache)
    command = [sys.executable, "-m", "harness.study", "--study", str(SMOKE), "--n-trials",
               str(n_trials), "--wandb", "disabled", "--storage", storage, "--study-name", name,
               "--heartbeat-seconds", "1", "--workers", "1", *extra]
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
            # "provenance" is stored after the parameters are sampled: a victim killed
            # earlier leaves a failed trial without parameters to compare its retry with.
            if any(t.state == optuna.trial.TrialState.RUNNING and "provenance" in t.user_attrs
                   for t in study.trials):
                return
        except KeyError:
            pass  # the study does not exist yet
        time.sleep(0.5)
    pytest.fail("no trial started")


def states(storage: str, name: str) -> list[optuna.trial.TrialState]:
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    return [t.state for t in study.trials]


def test_two_workers_on_postgres_finish_exactly_n(tmp_path, postgres_url, smoke_shared):
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    workers = [start_worker(tmp_path, postgres_url, name, 4) for _ in range(2)]
    finish(*workers)
    assert states(postgres_url, name).count(COMPLETE) == 4
    assert len(states(postgres_url, name)) == 4  # nothing run twice, nothing failed


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
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
    assert len(retries) == 1 and retries[0].state == COMPLETE
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


class _Deadline(BaseException):
    """Not an Exception: Optuna's catch=(Exception,) must not swallow it mid-trial."""


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (rather than hang) a block that should end within ``seconds``."""
    def expire(signum, frame):
        raise _Deadline(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# Optuna creates a trial RUNNING and samples it before the objective records its worker:
# a worker killed in between leaves a trial like this one.
ASK_AND_EXIT = """
import sys, optuna
from harness.sweep.storage import open_storage
optuna.load_study(study_name=sys.argv[2], storage=open_storage(sys.argv[1])).ask()
"""


def test_a_trial_orphaned_before_its_worker_was_recorded_is_reaped_and_rerun(
        tmp_path, smoke_config, smoke_shared):
    storage = f"journal:{tmp_path / 'study.journal'}"
    study = open_study(open_storage(storage), "orphan", smoke_config)
    subprocess.run([sys.executable, "-c", ASK_AND_EXIT, storage, "orphan"], check=True,
                   timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    with deadline(240):  # before the fix: waited for the orphan for ever
        run_study(study, smoke_config, smoke_shared, 1, tmp_path / "runs", {},
                  orphan_grace_seconds=1)
    orphan, rerun = optuna.load_study(study_name="orphan", storage=open_storage(storage)).trials
    assert orphan.state == FAIL and "died" in orphan.user_attrs["fail_reason"]
    assert rerun.state == COMPLETE and rerun.user_attrs["retry_of"] == orphan.number


def test_the_wait_names_each_running_trial_its_worker_and_when_an_orphan_is_reaped(tmp_path):
    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 's.journal'}"))
    study.ask().set_user_attr("worker", worker_identity())
    orphan = study.ask()
    due = orphan.datetime_start.timestamp() + 120
    assert describe_running(study, orphan_grace_seconds=120) == (
        f"trial 0 (host {socket.gethostname()}, pid {os.getpid()}), trial 1 (no worker "
        f"recorded; failed and re-queued at {time.strftime('%H:%M:%S', time.localtime(due))}"
        " unless one appears)")


def test_a_reused_pid_or_a_record_from_another_boot_is_a_dead_worker(tmp_path):
    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 's.journal'}"))
    me = worker_identity()
    records = [me,  # alive
               {**me, "started": me["started"] + 1},  # this PID, but another process
               {**me, "boot_id": "00000000-0000-0000-0000-000000000000"}]  # before a restart
    for record in records:
        study.ask().set_user_attr("worker", record)
    assert reap_dead_local_trials(study) == [1, 2]
    assert [t.state for t in study.trials[:3]] == [RUNNING, FAIL, FAIL]


def _open_study_as_new_worker(barrier, storage_url: str, study_name: str,
                              overrides: tuple[str, ...] = ()) -> dict:
    """A worker starting on ``study_name``: open_study, then its first random suggestion,
    and the fingerprints it wrote; a refusal is returned, not raised."""
    storage = open_storage(storage_url, heartbeat_seconds=60)
    written, write = [], storage.set_study_user_attr

    def counting_write(study_id, key, value):
        if key == "config_sha256":
            written.append(value)
        write(study_id, key, value)

    storage.set_study_user_attr = counting_write  # this process's storage object only
    config = load_study_config(SMOKE, list(overrides))
    barrier.wait(timeout=60)
    try:
        study = open_study(storage, study_name, config)
    except ConfigError as refused:
        return {"refused": str(refused), "written": written}
    return {"x": study.ask().suggest_float("x", 0.0, 1.0), "written": written}


@pytest.fixture(params=["journal", "new-postgres-database", "postgres"])
def storage_for_a_new_study(request, tmp_path):
    """A journal file, a brand-new PostgreSQL database, or the shared test database."""
    if request.param == "journal":
        yield f"journal:{tmp_path / 'race.journal'}"
    elif request.param == "postgres":
        yield request.getfixturevalue("postgres_url")
    else:
        with fresh_database(request.getfixturevalue("postgres_url")) as url:
            yield url


def test_workers_creating_a_study_together_record_it_once_and_sample_apart(
        storage_for_a_new_study, smoke_config):
    name = f"together-{uuid.uuid4().hex[:8]}"
    first, second = run_together(_open_study_as_new_worker, [(storage_for_a_new_study, name)] * 2)
    assert len(first["written"] + second["written"]) == 1, (first, second)
    stored = optuna.load_study(study_name=name, storage=open_storage(storage_for_a_new_study))
    assert stored.user_attrs["config_sha256"] == config_fingerprint(smoke_config)
    assert first["x"] != second["x"]
    # The creator keeps the study's seed, so a study run by one worker is reproducible.
    alone = optuna.create_study(sampler=make_sampler(smoke_config, smoke_config.seed))
    assert alone.ask().suggest_float("x", 0.0, 1.0) in (first["x"], second["x"])


def test_workers_creating_a_study_together_from_two_configurations_one_is_refused(
        storage_for_a_new_study):
    name = f"mixed-{uuid.uuid4().hex[:8]}"
    results = run_together(_open_study_as_new_worker,
                           [(storage_for_a_new_study, name, ("seed=0",)),
                            (storage_for_a_new_study, name, ("seed=1",))])
    refused = [result["refused"] for result in results if "refused" in result]
    assert len(refused) == 1 and "another configuration" in refused[0], results
    assert sum(len(result["written"]) for result in results) == 1


def test_a_study_that_records_no_configuration_is_refused_after_a_bounded_wait(tmp_path,
                                                                                smoke_config):
    storage = open_storage(f"journal:{tmp_path / 's.journal'}")
    optuna.create_study(storage=storage, study_name="foreign", directions=directions(smoke_config))
    with pytest.raises(ConfigError, match="records no configuration"):
        open_study(storage, "foreign", smoke_config, fingerprint_wait_seconds=0.5)


@pytest.mark.parametrize(("asked", "device", "cores", "expected"), [
    (None, "cpu", 2, (2, 1)), (None, "cpu", 1, (1, 1)), (None, "cpu", 16, (4, 4)),
    (None, "cuda", 16, (1, 16)), (3, "cpu", 2, (3, 1)), (1, "cpu", 8, (1, 8))])
def test_workers_default_to_one_per_core_on_a_cpu_and_share_its_threads(asked, device, cores,
                                                                         expected):
    plan = plan_workers(asked, torch.device(device), cores)
    assert (plan.workers, plan.threads) == expected


def local_workers_threads() -> int:
    # start_worker's OMP_NUM_THREADS, shared by the driver and the worker it starts
    return max(1, max(1, THREADS // 2) // 2)


@pytest.mark.slow
def test_local_workers_share_one_study_and_the_driver_reports_it_once(tmp_path, smoke_shared):
    storage = f"journal:{tmp_path / 'study.journal'}"
    driver = start_worker(tmp_path, storage, "local", 8, "--workers", "2", "--confirm-seeds", "1")
    output = finish(driver)[0]
    # Workers may race past the total or queue a repeat twice: refused before training.
    trials = [t for t in load(storage, "local") if t.user_attrs.get("fail_reason") not in REFUSED]
    search = [t for t in trials if not is_repeat(t)]
    assert len(search) == 8 and all(t.state.is_finished() and t.state != FAIL for t in search)
    repeats = [(t.user_attrs[REPEAT_OF], t.user_attrs[SEED]) for t in trials if is_repeat(t)]
    assert repeats and len(set(repeats)) == len(repeats)
    assert all(t.state == COMPLETE for t in trials if is_repeat(t))
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert driver.pid in pids and len(pids) == 2, "the started worker ran no trial"
    assert {t.user_attrs["provenance"]["torch_threads"] for t in trials} == {
        local_workers_threads()}
    assert output.count("Pareto report: python -m analysis.pareto") == 1
    (log,) = tmp_path.glob("runs/local-*/workers/worker-2.log")
    assert "Pareto report" not in log.read_text()
    assert "2 workers of" in output
    # Re-run for its report, the finished study starts no worker.
    logged = log.read_text()
    again = finish(start_worker(tmp_path, storage, "local", 8, "--workers", "2",
                                "--confirm-seeds", "1"))[0]
    assert "workers of" not in again and "Pareto report" in again
    assert log.read_text() == logged


@pytest.mark.slow
def test_ctrl_c_to_the_driver_stops_its_local_workers(tmp_path, smoke_shared):
    storage = f"journal:{tmp_path / 'study.journal'}"
    driver = start_worker(tmp_path, storage, "local", 4, "--workers", "2",
                          "--set", "pipeline.distill.epochs=200",
                          "--set", "pipeline.budget=unequal")
    try:
        deadline = time.monotonic() + 120
        while len([t for t in load(storage, "local") if t.state == RUNNING
                   and "provenance" in t.user_attrs]) < 2:
            assert time.monotonic() < deadline, "the two workers never ran a trial each"
            time.sleep(0.5)
        driver.send_signal(signal.SIGINT)  # to the driver alone, not its process group
        # Generous: on two loaded cores one run once did not end within 60 s of SIGINT.
        output = driver.communicate(timeout=180)[0].decode()
    finally:
        driver.kill()
    assert driver.returncode == 130, output[-3000:]
    trials = load(storage, "local")
    assert [t.state for t in trials] == [FAIL, FAIL]
    assert {t.user_attrs["fail_reason"] for t in trials} == {"interrupted"}
    helper = ({t.user_attrs["worker"]["pid"] for t in trials} - {driver.pid}).pop()
    with pytest.raises(ProcessLookupError):
        os.kill(helper, 0)


@pytest.mark.slow
def test_a_local_worker_killed_mid_trial_is_reaped_and_the_driver_finishes_the_study(tmp_path,
                                                                                    smoke_shared):
    storage = f"journal:{tmp_path / 'study.journal'}"
    driver = start_worker(tmp_path, storage, "local", 3, "--workers", "2", *SLOW)
    try:
        deadline = time.monotonic() + 120
        while len(running := [t for t in load(storage, "local") if t.state == RUNNING
                              and "provenance" in t.user_attrs]) < 2:
            assert time.monotonic() < deadline, "the two workers never ran a trial each"
            time.sleep(0.5)
        (victim,) = [t for t in running if t.user_attrs["worker"]["pid"] != driver.pid]
        # Until the driver waits for it, the killed worker is a zombie: its PID still exists.
        os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
        output = driver.communicate(timeout=240)[0].decode()
    finally:
        driver.kill()
    assert driver.returncode == 1, output[-3000:]
    assert "worker 2 exited with code -9" in output
    trials = {t.number: t for t in load(storage, "local")}
    assert trials[victim.number].state == FAIL
    assert "died" in trials[victim.number].user_attrs["fail_reason"]
    assert sum(t.state.is_finished() and t.state != FAIL for t in trials.values()) == 3


def load(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials; none before its driver has created it."""
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage)).trials
    except KeyError:
        return []

