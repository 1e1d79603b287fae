"""Content-addressed, atomic artifacts shared by trials and workers.

An artifact is a folder named by the hash of the canonical JSON of exactly the fields
that determine it, plus a format version and the version of the code that builds its
kind (``BUILD_VERSIONS``). It is built into a temporary folder and renamed into place,
with a manifest of its files' sha256, so a reader either sees a complete, verified
artifact or none. One worker builds while the others wait on a file lock; a worker killed
mid-build leaves only a temporary folder that nobody trusts. Where the lock does not hold
across machines (some shared file systems), two machines may both build: the second to
finish uses the first one's verified artifact. ``write_folder_atomically`` and
``write_files`` give saved students and report files the same never-half-written rule.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The version of the code that builds each kind, part of its key: bump a kind's version
# when its build would now produce something else (tests/test_build_versions.py notices
# a changed build and asks for it), so caches stop reusing what the old code built.
BUILD_VERSIONS = {"data": 2, "tokens": 3, "teacher": 4, "baseline": 5, "importance": 1,
                  "transfer": 1, "lm-teacher": 2, "lm-top-k": 1, "lm-pseudo-labels": 1}


class ArtifactLockTimeout(TimeoutError):
    """Another worker held an artifact's build lock for longer than we wait."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    key: str
    reused: bool


def cache_root() -> Path:
    """``$KD_HARNESS_CACHE``, else the user cache folder (``$XDG_CACHE_HOME`` or ~/.cache)."""
    if os.environ.get("KD_HARNESS_CACHE"):
        return Path(os.environ["KD_HARNESS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kd-harness"


def artifact_key(kind: str, fields: dict) -> str:
    canonical = json.dumps(_identity(kind, fields), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def _identity(kind: str, fields: dict) -> dict:
    if kind not in BUILD_VERSIONS:
        raise KeyError(f"artifact kind {kind!r} has no build version; add it to "
                       "harness.artifacts.BUILD_VERSIONS")
    return {"kind": kind, "format": FORMAT_VERSION, "build": BUILD_VERSIONS[kind],
            "fields": fields}


def build_once(root: Path, kind: str, fields: dict, build: Callable[[Path], None],
               lock_timeout_s: float = 6 * 3600) -> Artifact:
    """The artifact for ``fields``: reused if a verified copy exists, else built by ``build``.

    ``build(folder)`` writes the artifact's files into an empty folder.
    """
    key = artifact_key(kind, fields)
    final = root / kind / key
    if verify(final):
        return Artifact(final, key, reused=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final.with_suffix(".lock"), f"{kind} {key}", lock_timeout_s):
        if verify(final):  # another worker built it while we waited
            return Artifact(final, key, reused=True)
        if final.exists():
            log.warning("artifact %s is corrupt or incomplete; rebuilding it", final)
            # Renamed aside first: a machine the lock does not reach may rename a good
            # build into place meanwhile, and that one must not be deleted.
            doomed = final.with_name(f".{final.name}.corrupt-{uuid.uuid4().hex[:8]}")
            os.rename(final, doomed)
            shutil.rmtree(doomed)
        with _staging(final) as staging:
            build(staging)
            _write_manifest(staging, kind, fields)
            try:
                os.rename(staging, final)
            except OSError:
                # A machine the lock does not reach renamed its build into place first.
                if not verify(final):
                    raise
                log.info("artifact %s was built by another machine meanwhile; using it", final)
                return Artifact(final, key, reused=True)
    return Artifact(final, key, reused=False)


def write_folder_atomically(final: Path, build: Callable[[Path], None]) -> None:
    """``build(folder)`` writes into an empty folder beside ``final`` that then replaces
    ``final`` whole, so a crash never leaves a half-written folder that looks complete."""
    with _staging(final) as staging:
        build(staging)
        if not final.exists():
            os.rename(staging, final)
            return
        # rename cannot replace a folder that has files: move the old one aside first.
        old = _temporary_path(final, "old")
        os.rename(final, old)
        os.rename(staging, final)
        shutil.rmtree(old)


def verify(folder: Path) -> bool:
    """True when ``folder`` holds exactly the files its manifest lists, with their hashes."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        expected = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError):  # TypeError: valid JSON that is not a mapping
        return False
    if not isinstance(expected, dict):
        return False
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if present != set(expected) | {MANIFEST}:
        return False
    return all(sha256_file(folder / name) == digest for name, digest in expected.items())


@contextlib.contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """An empty hidden folder beside ``final`` (same file system, so renaming it into place
    is atomic), removed on the way out unless it was renamed."""
    staging = _temporary_path(final, "building")
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _temporary_path(final: Path, purpose: str) -> Path:
    return final.parent / f".{final.name}.{purpose}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _write_manifest(folder: Path, kind: str, fields: dict) -> None:
    files = {p.relative_to(folder).as_posix(): sha256_file(p)
             for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = {**_identity(kind, fields), "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path, what: str, timeout_s: float) -> Iterator[None]:
    # flock is released by the kernel when its holder dies, so a killed builder never
    # leaves a lock that blocks the others.
    with lock_path.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log.info("waiting for another worker to finish building %s", what)
                    announced = True
                if time.monotonic() > deadline:
                    raise ArtifactLockTimeout(_lock_timeout_message(lock_path, what, timeout_s))
                time.sleep(0.5)
        # Who builds, for the message of a worker that gives up waiting.
        handle.truncate(0)
        handle.write(f"worker {socket.gethostname()} pid {os.getpid()} "
                     f"since {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_timeout_message(lock_path: Path, what: str, timeout_s: float) -> str:
    holder = lock_path.read_text().strip() or "another worker"
    return (f"gave up after {timeout_s:.0f} s waiting for another worker to build {what}: "
            f"its lock {lock_path} is held by {holder} (a worker on this machine or on another "
            "one sharing the cache). That worker is still building it or is stuck: check its "
            "log. Once it finishes or is stopped, the lock is free and a rerun uses or builds "
            "the artifact; a rerun before then waits again. Do not delete the lock file: a "
            "worker holds it, and deleting it lets a second build run beside the first.")


def write_files(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into ``out``: into a temporary folder beside them first, then move.

    Each file is replaced atomically (same file system, ``os.replace``), so a reader
    never sees a truncated file, and a crash while writing leaves the old report intact.
    """
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=out))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        for name in files:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
