"""Where a study lives: one function turns a storage URL into an Optuna storage.

Default: an Optuna journal file under ``runs/``. Optuna advises against SQLite for
parallel workers ("database is locked"); its journal file backend is safe for several
processes on one host. ``redis://host:port/db`` is Optuna's journal on a Redis server (no
database schema, many hosts; like the file, no heartbeats). Any other URL with a scheme
(``postgresql://``, ``mysql+pymysql://``, ``sqlite:///``) goes to Optuna's RDB storage,
which also gives heartbeats.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import re
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy

DEFAULT_STORAGE = "journal:runs/optuna.journal"
JOURNAL_PREFIX = "journal:"
MAX_RETRIES = 2  # a trial whose worker died is re-run at most this often, on any storage
SCHEMA_ATTEMPTS = 6  # tries to open an RDB storage whose tables other workers are creating
# How long a storage call is retried while the database cannot be reached (a restart, a
# failover) before the worker gives up.
CONNECTION_RETRY_SECONDS = 120.0

log = logging.getLogger(__name__)


class StorageError(ValueError):
    """A storage URL that cannot be opened; the message says why."""


def journal_path(url: str) -> Path | None:
    """The journal file a storage URL names, or None for an RDB URL."""
    if url.startswith(JOURNAL_PREFIX):
        return Path(url[len(JOURNAL_PREFIX):])
    if "://" not in url and url.endswith(".journal"):
        return Path(url)
    return None


def open_storage(url: str | None, heartbeat_seconds: int | None = None,
                 max_retry: int = MAX_RETRIES) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage at ``url``; None means the default journal.

    With ``heartbeat_seconds`` an RDB storage marks a trial whose worker stopped beating
    for twice that long as failed, and Optuna's retry callback re-queues it.
    """
    url = url or DEFAULT_STORAGE
    path = journal_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return _open_redis_journal(url)
    if "://" not in url:
        raise StorageError(
            f"storage {redact_url(url)!r}: expected a database URL such as "
            "postgresql://user@host/db, or a journal file such as journal:runs/optuna.journal")
    try:
        if not heartbeat_seconds:
            return _open_rdb(url)
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Optuna 5.0's name; RetryFailedTrialCallback is its deprecated alias.
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
            return _open_rdb(url, heartbeat_interval=heartbeat_seconds,
                             grace_period=2 * heartbeat_seconds,
                             heartbeat_stale_trial_callback=retry)
    except Exception as error:  # SQLAlchemy raises many types; all mean "cannot open"
        raise StorageError(f"cannot open storage {redact_url(url)}: "
                           f"{type(error).__name__}: {redact_text(str(error), url)}") from error


def _open_redis_journal(url: str) -> optuna.storages.JournalStorage:
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=5).ping()
        with warnings.catch_warnings():  # "experimental" since Optuna 3.1, stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            backend = optuna.storages.journal.JournalRedisBackend(url)
    except ImportError:
        raise StorageError(f"storage {redact_url(url)}: the Redis journal needs the redis "
                           "package: pip install 'kd-harness[redis]'") from None
    except Exception as error:  # redis raises its own ConnectionError, TimeoutError, ...
        raise StorageError(f"cannot open storage {redact_url(url)}: "
                           f"{type(error).__name__}: {redact_text(str(error), url)}") from error
    return optuna.storages.JournalStorage(backend)


def _open_rdb(url: str, **options) -> optuna.storages.RDBStorage:
    """``RDBStorage(url, **options)``, tried again while other workers create its tables.

    The first opening of an empty database creates Optuna's tables, and RDBStorage does
    not guard that against other processes: workers started together lose the race with
    "duplicate key ... pg_type_typname_nsp_index" or "relation ... already exists". The
    loser's transaction is rolled back, and on a new try it finds the tables made. Each
    worker loses at most once per creation step (tables, schema version stamp).
    """
    # A connection the server closed (a restart, a failover, an idle timeout) is found
    # before use and replaced: without it the trial's next write fails (optuna#5600, where
    # Optuna pre-pings MySQL only); recycled well inside common idle timeouts.
    options = {**options, "engine_kwargs": {"pool_pre_ping": True, "pool_recycle": 300}}
    for attempt in range(1, SCHEMA_ATTEMPTS):
        try:
            return ReconnectingRDBStorage(url, **options)
        except sqlalchemy.exc.SQLAlchemyError as error:
            if not (isinstance(error, sqlalchemy.exc.IntegrityError)
                    or "already exists" in str(error)):
                raise
        time.sleep(0.05 * 2 ** attempt * (1 + random.random()))  # jitter: no lockstep
    return ReconnectingRDBStorage(url, **options)  # the last try's error is the caller's


class DatabaseConnectionLost(optuna.exceptions.StorageInternalError):
    """The database stayed out of reach for ``CONNECTION_RETRY_SECONDS``."""


def lost_connection(error: BaseException | None) -> bool:
    """Whether ``error``, or one it was raised from, says the database connection was lost
    or could not be made (Optuna reports those as invalid data in the commit)."""
    while error is not None:
        if isinstance(error, DatabaseConnectionLost):  # given up already, by a nested call
            return False
        if isinstance(error, (sqlalchemy.exc.OperationalError,
                              sqlalchemy.exc.PendingRollbackError)) or (
                isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated):
            return True
        error = error.__cause__
    return False


def retried_while_disconnected(method):
    """``method`` of an RDB storage, called again with backoff, on a new session, while it
    fails on a lost database connection, for up to ``CONNECTION_RETRY_SECONDS``; then
    ``DatabaseConnectionLost``."""
    @functools.wraps(method)
    def call(storage, *args, **kwargs):
        deadline, delay = time.monotonic() + CONNECTION_RETRY_SECONDS, 0.25
        while True:
            try:
                return method(storage, *args, **kwargs)
            except Exception as error:
                if not lost_connection(error):
                    raise
                cause = str(getattr(error, "__cause__", None) or error).strip().splitlines()
                reason = cause[0] if cause else type(error).__name__
                if time.monotonic() + delay > deadline:
                    raise DatabaseConnectionLost(
                        f"database connection lost: {reason} (still after "
                        f"{CONNECTION_RETRY_SECONDS:g} s of retries)") from error
                log.warning("database connection lost (%s); %s again in %.2g s", reason,
                            method.__name__, delay)
                # This thread's session still holds the dead connection's transaction.
                storage.scoped_session.remove()
                time.sleep(delay * (1 + random.random()))
                delay = min(2 * delay, 8.0)
    return call


class ReconnectingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage with every call retried across a lost database connection
    (``retried_while_disconnected``): Optuna retries none, and a one-second blip would fail
    an hour-long trial. A write whose commit reached the server before its connection
    dropped may run twice; Optuna's writes set values, so that repeats them, except a new
    trial, which the heartbeat then fails as a dead worker's."""


# Optuna's cache in front of an RDB storage calls these private methods of it as well.
_CALLED_BY_OPTUNAS_CACHE = ("_create_new_trial", "_get_best_trial_id", "_get_stale_trial_ids",
                            "_get_trials", "_set_trial_param")
for _name, _method in vars(optuna.storages.RDBStorage).items():
    if inspect.isfunction(_method) and (not _name.startswith("_")
                                        or _name in _CALLED_BY_OPTUNAS_CACHE):
        setattr(ReconnectingRDBStorage, _name, retried_while_disconnected(_method))


def redact_url(url: str) -> str:
    """The URL with its password (in the user part or a query parameter) as ``***``."""
    if journal_path(url) is not None:
        return url
    # Greedy up to the netloc's last "@", so an unescaped "@" inside a password is covered.
    url = re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # a typo such as "postgresql//": no parser can find the password
        return _mask_unparsed(url)
    query = {key: "***" if _SECRET_PARAMETER.search(key) else value
             for key, value in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True)


def _mask_unparsed(url: str) -> str:
    """A URL that does not parse, with everything that could be a password as ``***``:
    what lies before its last "@" (after "//" where there is one), and the values of
    query parameters with secret-like names."""
    url = re.sub(r"^(.*?//)?.*@", lambda match: f"{match.group(1) or ''}***@", url)
    return re.sub(rf"([?&][^=&]*(?:{_SECRET_PARAMETER.pattern})[^=&]*=)[^&]*", r"\1***", url,
                  flags=re.IGNORECASE)


def redact_text(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (if any) removed wherever it appears."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        return text
    secrets = [parsed.password] + [v for k, v in parsed.query.items()
                                   if _SECRET_PARAMETER.search(k)]
    for secret in secrets:
        for value in ([secret] if isinstance(secret, str) else list(secret or ())):
            if value:
                text = text.replace(value, "***")
    return text


_SECRET_PARAMETER = re.compile(r"pass|secret|token|key", re.IGNORECASE)
