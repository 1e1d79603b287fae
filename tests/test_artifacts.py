"""Tests for harness.artifacts: content-addressed keys, build once, verify, atomic builds,
corruption rebuilt, one build when processes race."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.artifacts import (
    MANIFEST,
    ArtifactLockTimeout,
    artifact_key,
    build_once,
    cache_root,
    verify,
)

REPO = Path(__file__).resolve().parent.parent


class CountingBuild:
    """A build function that writes two files (one in a subfolder) and counts its calls."""

    def __init__(self, payload: str = "weights"):
        self.calls = 0
        self.payload = payload

    def __call__(self, folder: Path) -> None:
        self.calls += 1
        (folder / "model.bin").write_text(self.payload)
        (folder / "sub").mkdir()
        (folder / "sub" / "config.json").write_text('{"a": 1}')


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_HARNESS_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("KD_HARNESS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "kd-harness"


def test_key_is_canonical_and_covers_every_field_and_the_kind():
    fields = {"a": 1, "b": [1, 2], "c": {"x": "y"}}
    key = artifact_key("teacher", fields)
    assert key == artifact_key("teacher", {"c": {"x": "y"}, "b": [1, 2], "a": 1})  # order-free
    assert key != artifact_key("teacher", {**fields, "a": 2})
    assert key != artifact_key("teacher", {**fields, "d": None})
    assert key != artifact_key("data", fields)


def test_build_once_builds_then_reuses(tmp_path):
    build = CountingBuild()
    first = build_once(tmp_path, "teacher", {"lr": 1e-4}, build)
    assert not first.reused and build.calls == 1
    assert first.path == tmp_path / "teacher" / first.key
    assert (first.path / "model.bin").read_text() == "weights"
    manifest = json.loads((first.path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.bin", "sub/config.json"}
    assert manifest["fields"] == {"lr": 1e-4} and manifest["kind"] == "teacher"
    second = build_once(tmp_path, "teacher", {"lr": 1e-4}, build)
    assert second.reused and second.path == first.path and build.calls == 1
    # No staging folders are left beside the artifact.
    assert [p.name for p in (tmp_path / "teacher").iterdir() if p.is_dir()] == [first.key]


def test_a_changed_field_gives_a_different_artifact(tmp_path):
    build = CountingBuild()
    one = build_once(tmp_path, "teacher", {"lr": 1e-4, "seed": 0}, build)
    two = build_once(tmp_path, "teacher", {"lr": 1e-4, "seed": 1}, build)
    assert one.key != two.key and one.path != two.path and build.calls == 2
    assert verify(one.path) and verify(two.path)


def test_corrupted_file_is_detected_and_rebuilt(tmp_path):
    build = CountingBuild()
    artifact = build_once(tmp_path, "teacher", {}, build)
    target = artifact.path / "model.bin"
    data = bytearray(target.read_bytes())
    data[0] ^= 0xFF  # flip the bits of one byte, same size
    target.write_bytes(bytes(data))
    assert not verify(artifact.path)
    rebuilt = build_once(tmp_path, "teacher", {}, build)
    assert not rebuilt.reused and build.calls == 2
    assert target.read_text() == "weights" and verify(rebuilt.path)


@pytest.mark.parametrize("damage", ["extra", "missing", "no-manifest", "manifest-garbage",
                                    "manifest-not-a-mapping", "manifest-files-a-list"])
def test_verify_rejects_damaged_artifacts(tmp_path, damage):
    build = CountingBuild()
    artifact = build_once(tmp_path, "teacher", {}, build)
    assert verify(artifact.path)
    folder = artifact.path
    if damage == "extra":
        (folder / "sub" / "stray.txt").write_text("x")
    elif damage == "missing":
        (folder / "sub" / "config.json").unlink()
    elif damage == "no-manifest":
        (folder / MANIFEST).unlink()
    elif damage == "manifest-garbage":
        (folder / MANIFEST).write_bytes(b"\xff\xfe not json")
    elif damage == "manifest-not-a-mapping":
        (folder / MANIFEST).write_text("[]")
    else:
        (folder / MANIFEST).write_text('{"files": ["model.bin", "sub/config.json"]}')
    assert not verify(folder)
    again = build_once(tmp_path, "teacher", {}, build)
    assert not again.reused and build.calls == 2 and verify(again.path)


def test_verify_of_a_folder_that_does_not_exist(tmp_path):
    assert not verify(tmp_path / "nothing")


def test_a_crash_inside_build_leaves_no_artifact(tmp_path):
    def crashing(folder: Path) -> None:
        (folder / "half.bin").write_text("half")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        build_once(tmp_path, "teacher", {}, crashing)
    key = artifact_key("teacher", {})
    assert not (tmp_path / "teacher" / key).exists()
    assert not [p for p in (tmp_path / "teacher").iterdir() if p.is_dir()]  # staging removed
    build = CountingBuild()
    after = build_once(tmp_path, "teacher", {}, build)
    assert not after.reused and build.calls == 1 and verify(after.path)


def test_a_killed_builders_staging_folder_is_ignored(tmp_path):
    key = artifact_key("teacher", {})
    stale = tmp_path / "teacher" / f".{key}.building-999-deadbeef"
    stale.mkdir(parents=True)
    (stale / "model.bin").write_text("half")
    build = CountingBuild()
    artifact = build_once(tmp_path, "teacher", {}, build)
    assert build.calls == 1 and (artifact.path / "model.bin").read_text() == "weights"


def test_lock_timeout_when_another_worker_holds_the_lock(tmp_path):
    key = artifact_key("teacher", {})
    (tmp_path / "teacher").mkdir()
    with (tmp_path / "teacher" / f"{key}.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another open file description: a separate lock
        build = CountingBuild()
        with pytest.raises(ArtifactLockTimeout, match="delete the lock file"):
            build_once(tmp_path, "teacher", {}, build, lock_timeout_s=0.2)
        assert build.calls == 0
    assert build_once(tmp_path, "teacher", {}, build).path.name == key


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from harness.artifacts import build_once

    root, go = Path(sys.argv[1]), Path(sys.argv[2])
    while not go.exists():  # start together
        time.sleep(0.005)

    def build(folder):
        with (root / "builds.txt").open("a") as counter:
            counter.write("built\\n")
        time.sleep(0.6)  # long enough that the other racer arrives mid-build
        (folder / "out.txt").write_text("done")

    artifact = build_once(root, "teacher", {"race": 1}, build)
    print(artifact.reused, artifact.path)
""")


def test_racing_processes_build_once(tmp_path):
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(go)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(3)]
    time.sleep(0.3)  # let the interpreters start and reach the barrier
    go.touch()
    outputs = [racer.communicate(timeout=60) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), outputs
    assert (tmp_path / "builds.txt").read_text() == "built\n"
    reported = sorted(out.split()[0] for out, _ in outputs)
    assert reported == ["False", "True", "True"]
    assert len({out.split()[1] for out, _ in outputs}) == 1
