"""What a benchmark needs beyond ``pip install -e .``, checked before it starts any work.

Without these checks a missing piece shows up minutes in: distill_speed.py's
``transformers.Trainer`` baseline asks for accelerate only when it is built, after the
harness's own phases have trained. Each script calls the checks it needs right after
parsing its arguments (so ``--help`` works without them). A missing piece prints one
line naming the command that installs or provides it, and the script exits with code 2,
the study command's code for bad input.

The scripts run as ``python benchmarks/X.py``, which puts this folder first on
``sys.path``: ``from requirements import need_package`` finds this file.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import NoReturn

BENCH_EXTRA = 'pip install -e ".[bench]"'
POSTGRES_EXTRA = 'pip install -e ".[postgres]"'
MISSING = 2


def fail(message: str) -> NoReturn:
    print(f"error: {Path(sys.argv[0]).name}: {message}", file=sys.stderr)
    sys.exit(MISSING)


def need_package(name: str, install: str, minimum: str | None = None) -> None:
    """Exit 2 unless the package ``name`` (its import and distribution name alike) is
    installed, at version ``minimum`` or later when given; ``install`` gets it."""
    if importlib.util.find_spec(name) is None:
        fail(f"needs {name}, which is not installed; install it with: {install}")
    if minimum is not None:
        from packaging.version import Version  # a dependency of transformers

        installed = importlib.metadata.version(name)
        if Version(installed) < Version(minimum):
            fail(f"needs {name}>={minimum}, found {installed}; install it with: {install}")


def need_file(path: Path, make: str) -> None:
    """Exit 2 unless ``path`` exists; ``make`` is the command that writes it."""
    if not path.exists():
        fail(f"needs {path}, which does not exist; make it with: {make}")


def need_cuda(otherwise: str) -> None:
    """Exit 2 unless torch sees a CUDA device; ``otherwise`` says what to do instead."""
    import torch

    if not torch.cuda.is_available():
        fail(f"needs a CUDA device and torch {torch.__version__} sees none; {otherwise}")


def need_postgres(url: str, otherwise: str) -> None:
    """Exit 2 unless psycopg is installed and a PostgreSQL server takes a connection to
    ``url`` within 3 seconds; ``otherwise`` says what to do instead. The line shows the
    URL with its password masked, as everything the harness prints does."""
    need_package("psycopg", POSTGRES_EXTRA)  # SQLAlchemy 2.1's default PostgreSQL driver
    import psycopg
    import sqlalchemy

    from harness.sweep.storage import redact_text, redact_url

    try:
        # psycopg takes libpq URLs: no "+driver" in the scheme.
        libpq = sqlalchemy.engine.make_url(url).set(drivername="postgresql")
        psycopg.connect(libpq.render_as_string(hide_password=False), connect_timeout=3).close()
    except Exception as error:  # refused, timed out, no such database, bad password, bad URL
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        fail(f"no PostgreSQL server answers at {redact_url(url)} "
             f"({redact_text(reason, url)}); {otherwise}")
