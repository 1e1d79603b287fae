"""On a cluster: preemption (SIGTERM), database blips, a setup step (--prepare-only), every
storage against its real server, and the recipes under deploy/ (the Slurm script runs a
study with plain bash; the Kubernetes manifests call the study's command line as it
parses). Servers that are absent skip their tests with the reason."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import optuna
import pytest
import sqlalchemy
import yaml

from harness.sweep.cli import exit_code, parse_args
from harness.sweep.workers import Terminated

from .conftest import REPO, SMOKE, THREADS
from .test_storage import fresh_database
from .test_workers import (COMPLETE, FAIL, SLOW, finish, start_worker, states,
                           wait_for_running_trial)


@pytest.mark.slow
def test_the_slurm_script_run_with_bash_sets_up_then_completes_a_study(tmp_path, cache_dir,
                                                                       smoke_shared):
    storage = f"journal:{tmp_path / 'study.journal'}"
    env = {**os.environ, "STUDY": str(SMOKE), "STORAGE": storage, "N_TRIALS": "2",
           "EXTRA": "--wandb disabled --study-name slurm", "KD_HARNESS_CACHE": str(cache_dir),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(THREADS)}
    done = subprocess.run(["bash", str(REPO / "deploy" / "slurm.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no trial was run" in done.stdout  # the setup step, first
    study = optuna.load_study(study_name="slurm",
                              storage=optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(
                                      storage.removeprefix("journal:"))))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_the_kubernetes_manifests_run_the_study_command_as_it_parses():
    documents = [d for name in ("kubernetes.yaml", "kubernetes-workers.yaml")
                 for d in yaml.safe_load_all((REPO / "deploy" / name).read_text())]
    jobs = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Job"}
    commands = {}
    for name, job in jobs.items():
        container, = job["spec"]["template"]["spec"]["containers"]
        assert container["command"][:3] == ["python", "-m", "harness.study"]
        argv = [a.replace("$(STORAGE)", "postgresql://u@db/kd") for a in container["command"][3:]]
        commands[name] = parse_args(argv)
        assert (REPO / commands[name].study).is_file()
        assert {"name": "cache", "mountPath": "/cache"} in container["volumeMounts"]
    assert commands["kd-prepare"].prepare_only and not commands["kd-workers"].prepare_only
    assert commands["kd-workers"].workers == 1
    workers = jobs["kd-workers"]["spec"]
    assert workers["completionMode"] == "Indexed"
    ignored = workers["podFailurePolicy"]["rules"][0]
    assert ignored["action"] == "Ignore"
    assert ignored["onExitCodes"]["values"] == [exit_code(Terminated())]


@pytest.mark.slow
def test_sigterm_to_a_worker_on_postgres_requeues_its_trial_for_the_next_at_once(
        tmp_path, postgres_url, smoke_shared):
    # A heartbeat far longer than the test: the second worker can only finish the study if
    # the first one's trial was failed and queued again when it got SIGTERM.
    patient = ("--heartbeat-seconds", "3600")
    name = f"preempted-{uuid.uuid4().hex[:8]}"
    victim = start_worker(tmp_path, postgres_url, name, 1, *SLOW, *patient)
    wait_for_running_trial(postgres_url, name)
    started = time.monotonic()
    victim.send_signal(signal.SIGTERM)
    output = victim.communicate(timeout=30)[0].decode()
    assert victim.returncode == 143, output[-3000:]
    assert time.monotonic() - started < 30  # within Slurm's and Kubernetes' grace period
    assert "queued again" in output
    study = optuna.load_study(study_name=name, storage=postgres_url)
    failed, queued = study.trials
    assert failed.state == FAIL and failed.user_attrs["fail_reason"] == "interrupted (SIGTERM)"
    assert queued.state == optuna.trial.TrialState.WAITING
    # A queued trial's parameters wait in Optuna's fixed_params until a worker takes it.
    assert queued.system_attrs["fixed_params"] == failed.params
    assert queued.user_attrs["retry_of"] == failed.number
    finish(start_worker(tmp_path, postgres_url, name, 1, *SLOW, *patient), timeout=180)
    study = optuna.load_study(study_name=name, storage=postgres_url)
    assert [t.state for t in study.trials] == [FAIL, COMPLETE]
    assert study.trials[1].params == failed.params


@pytest.mark.slow
def test_prepare_only_builds_the_teacher_and_runs_no_trial(tmp_path, fresh_cache):
    storage = f"journal:{tmp_path / 'runs' / 'optuna.journal'}"
    output = finish(start_worker(tmp_path, storage, "setup", 3, "--prepare-only",
                                 cache=fresh_cache))[0]
    assert "fine-tuning the teacher once" in output and "no trial was run" in output
    assert len(list((fresh_cache / "teacher").glob("*/manifest.json"))) == 1
    assert states(storage, "setup") == []  # the study is recorded, with no trial
    # The workers after it reuse the teacher.
    output = finish(start_worker(tmp_path, storage, "setup", 1, cache=fresh_cache))[0]
    assert "fine-tuning the teacher once" not in output
    assert states(storage, "setup") == [COMPLETE]


def _terminate_connections(url: str) -> int:
    """Terminate every connection to ``url``'s database, as a server restart, a failover or
    an idle timeout does; how many there were."""
    import psycopg

    database = sqlalchemy.engine.make_url(url).database
    admin = sqlalchemy.engine.make_url(url).set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False),
                         autocommit=True) as connection:
        return len(connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,)).fetchall())


@pytest.mark.slow
def test_a_worker_on_postgres_survives_its_connections_terminated_mid_trial(tmp_path,
                                                                           postgres_url):
    with fresh_database(postgres_url) as url:
        name = "blips"
        # No heartbeat in between: the trial's own next write meets the dead connection.
        worker = start_worker(tmp_path, url, name, 2, *SLOW, "--heartbeat-seconds", "3600")
        try:
            for _ in range(2):
                wait_for_running_trial(url, name)
                time.sleep(2)  # while it trains, between its writes
                assert _terminate_connections(url) >= 1
                time.sleep(3)
        finally:
            output = finish(worker, timeout=300)[0]
        study = optuna.load_study(study_name=name, storage=url)
        assert [t.state for t in study.trials] == [COMPLETE, COMPLETE], output[-3000:]


@pytest.mark.slow
def test_a_worker_on_postgres_waits_out_a_database_that_drops_every_connection_for_seconds(
        tmp_path, postgres_url):
    with fresh_database(postgres_url) as url:
        name = "outage"
        worker = start_worker(tmp_path, url, name, 1, *SLOW)
        try:
            wait_for_running_trial(url, name)
            end = time.monotonic() + 4  # every connection, new ones too, killed for 4 s
            while time.monotonic() < end:
                _terminate_connections(url)
                time.sleep(0.02)
        finally:
            output = finish(worker, timeout=300)[0]
        study = optuna.load_study(study_name=name, storage=url)
        assert [t.state for t in study.trials] == [COMPLETE], output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("server", ["redis_url", "mariadb_url"])
def test_two_workers_on_redis_and_on_mariadb_finish_exactly_n(tmp_path, server, request,
                                                              smoke_shared):
    url = request.getfixturevalue(server)
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    finish(*[start_worker(tmp_path, url, name, 4) for _ in range(2)])
    assert states(url, name) == [COMPLETE] * 4  # nothing run twice, nothing failed
