"""Opening storages: workers that race to create a database's tables, and URLs whose
passwords must never be printed.

The PostgreSQL tests each create a database of their own on the real server (loopback,
trust auth) and skip without one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import traceback
import uuid
from dataclasses import dataclass

import optuna
import psycopg
import pytest
import sqlalchemy
import sqlalchemy.orm

from harness.study import main
from harness.sweep.storage import StorageError, open_storage, redact_url

from .conftest import SMOKE

SECRET = "hunter2"


@contextlib.contextmanager
def fresh_database(server_url: str):
    """A new, empty database on the server of ``server_url``; dropped afterwards."""
    name = f"kd_race_{uuid.uuid4().hex[:12]}"
    url = sqlalchemy.engine.make_url(server_url)
    # psycopg takes libpq URLs: no "+driver" in the scheme.
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_together(target, argument_lists: list[tuple]) -> list:
    """Run ``target(barrier, *arguments)`` in one process per argument list; their return
    values, in order. Each target waits on the shared barrier just before the step that
    races, so all take it at once. A failure in any process fails the test with its
    traceback."""
    # fork: a spawned child would re-import torch and harness (~10 s each on 2 cores); the
    # children open connections of their own and use nothing else of the parent's.
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(len(argument_lists)), context.Queue()
    processes = [context.Process(target=_call,
                                 args=(index, results, target, (barrier, *arguments)))
                 for index, arguments in enumerate(argument_lists)]
    for process in processes:
        process.start()
    try:
        returned = dict(results.get(timeout=120) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=30)
            process.kill()
    errors = [value for value in returned.values() if isinstance(value, _Failed)]
    assert not errors, "\n".join(error.text for error in errors)
    return [returned[index] for index in range(len(processes))]


@dataclass(frozen=True)
class _Failed:
    text: str  # the traceback


def _call(index, results, target, arguments):
    try:
        results.put((index, target(*arguments)))
    except BaseException:
        results.put((index, _Failed(traceback.format_exc())))


def _open_and_create_study(barrier, url: str) -> int:
    barrier.wait(timeout=60)
    storage = open_storage(url, heartbeat_seconds=60)
    return optuna.create_study(storage=storage, study_name="race", load_if_exists=True)._study_id


def test_workers_opening_a_fresh_postgres_database_at_once_all_succeed(postgres_url):
    # The first opening creates Optuna's tables; before the fix 4 workers racing for it
    # left at least one with a UniqueViolation on pg_type (10 of 10 tries).
    with fresh_database(postgres_url) as url:
        study_ids = run_together(_open_and_create_study, [(url,)] * 4)
    assert len(set(study_ids)) == 1


@pytest.mark.parametrize("url, shown", [
    ("postgresql//kd:hunter2@db/kd", "postgresql//***@db/kd"),
    ("postgresql:/kd:hunter2@db/kd", "***@db/kd"),
    ("kd:hunter2@db/kd", "***@db/kd"),
    ("postgresql//db/kd?password=hunter2&sslmode=require",
     "postgresql//db/kd?password=***&sslmode=require"),
    ("postgresql://kd:hunter2@db/kd", "postgresql://kd:***@db/kd"),
    ("postgresql://kd:hunt@er2@db/kd", "postgresql://kd:***@db/kd"),
])
def test_redact_url_masks_passwords_even_in_urls_that_do_not_parse(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize("url", ["postgresql//kd:hunter2@db/kd",
                                 "postgresql://kd:hunter2@db:notaport/kd",
                                 "nosuchdb://kd:hunter2@db/kd"])
def test_storage_errors_never_show_the_password(url):
    with pytest.raises(StorageError) as raised:
        open_storage(url)
    assert SECRET not in str(raised.value)
    assert "***" in str(raised.value)


def test_cli_with_a_mistyped_storage_url_exits_2_without_the_password(tmp_path, monkeypatch,
                                                                      capfd, caplog):
    monkeypatch.chdir(tmp_path)
    code = main(["--study", str(SMOKE), "--workers", "1", "--n-trials", "1", "--wandb", "disabled",
                 "--storage", "postgresql//kd:hunter2@db/kd"])
    out, err = capfd.readouterr()
    assert code == 2
    assert "error: storage 'postgresql//***@db/kd'" in err
    assert SECRET not in out + err + caplog.text


def test_a_storage_call_is_retried_across_a_lost_connection_then_given_up_in_words(monkeypatch):
    import harness.sweep.storage as storage

    class Storage:  # what the retry touches of an RDB storage: its sessions
        scoped_session = sqlalchemy.orm.scoped_session(sqlalchemy.orm.sessionmaker())

    def lost(attempts):
        def call(storage):
            attempts.append(1)
            try:
                raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(
                    "terminating connection due to administrator command"))
            except sqlalchemy.exc.OperationalError as error:
                raise optuna.exceptions.StorageInternalError(
                    "An exception is raised during the commit. This typically happens due to "
                    "invalid data in the commit, e.g. exceeding max length.") from error
        return call

    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    attempts, now = [], iter(range(0, 10_000, 5))
    monkeypatch.setattr(storage.time, "monotonic", lambda: next(now))
    with pytest.raises(storage.DatabaseConnectionLost) as raised:
        storage.retried_while_disconnected(lost(attempts))(Storage())
    assert 10 < len(attempts) < 30  # retried until CONNECTION_RETRY_SECONDS had passed
    message = str(raised.value)
    assert message.startswith("database connection lost: ") and "administrator" in message
    assert "max length" not in message
    # A recovered connection: the call's result; any other error: at once, as it was.
    flaky = iter([True, True, False])

    def recovering(storage):
        if next(flaky):
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed"))
        return "done"

    assert storage.retried_while_disconnected(recovering)(Storage()) == "done"
    with pytest.raises(ValueError):
        storage.retried_while_disconnected(lambda storage: int("x"))(Storage())
