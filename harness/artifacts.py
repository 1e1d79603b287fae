"""Content-addressed, atomic artifacts shared by trials and workers.

An artifact is a folder named by the hash of the canonical JSON of exactly the fields
that determine it (plus a format version). It is built into a temporary folder and
renamed into place, with a manifest of its files' sha256, so a reader either sees a
complete, verified artifact or none. One worker builds while the others wait on a file
lock; a worker killed mid-build leaves only a temporary folder that nobody trusts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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
    canonical = json.dumps({"kind": kind, "format": FORMAT_VERSION, "fields": fields},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


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
            shutil.rmtree(final)
        staging = final.parent / f".{key}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            build(staging)
            _write_manifest(staging, kind, fields)
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Artifact(final, key, reused=False)


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


def _write_manifest(folder: Path, kind: str, fields: dict) -> None:
    files = {p.relative_to(folder).as_posix(): sha256_file(p)
             for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = {"kind": kind, "format": FORMAT_VERSION, "fields": fields, "files": files}
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
                    raise ArtifactLockTimeout(
                        f"gave up after {timeout_s:.0f} s waiting for another worker to build "
                        f"{what} (lock {lock_path}); if no worker is running, delete the lock file")
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
