"""Tests for harness.artifacts: content-addressed keys (with each kind's build version),
build once, verify, atomic builds and folder writes, corruption rebuilt, one build when
processes race, a rival machine's artifact used when the lock does not span machines."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import harness.artifacts
from harness.artifacts import (
    MANIFEST,
    ArtifactLockTimeout,
    artifact_key,
    build_once,
    cache_root,
    verify,
    write_folder_atomically,
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


def test_key_covers_the_kinds_build_version(monkeypatch):
    before = artifact_key("teacher", {"lr": 1e-4})
    baseline_before = artifact_key("baseline", {"lr": 1e-4})
    monkeypatch.setitem(harness.artifacts.BUILD_VERSIONS, "teacher",
                        harness.artifacts.BUILD_VERSIONS["teacher"] + 1)
    assert artifact_key("teacher", {"lr": 1e-4}) != before
    assert artifact_key("baseline", {"lr": 1e-4}) == baseline_before  # other kinds keep theirs


def test_a_kind_without_a_build_version_is_refused(tmp_path):
    with pytest.raises(KeyError, match="BUILD_VERSIONS"):
        build_once(tmp_path, "unversioned", {}, CountingBuild())


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
        with pytest.raises(ArtifactLockTimeout) as raised:
            build_once(tmp_path, "teacher", {}, build, lock_timeout_s=0.2)
        assert build.calls == 0
    message = str(raised.value)
    assert str(tmp_path / "teacher" / f"{key}.lock") in message
    assert "another worker" in message and "Do not delete the lock file" in message
    assert build_once(tmp_path, "teacher", {}, build).path.name == key


def test_lock_timeout_names_the_worker_that_holds_the_lock(tmp_path):
    key = artifact_key("teacher", {})
    ready, release = tmp_path / "ready", tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), str(ready),
                               str(release)], cwd=REPO)
    try:
        while not ready.exists():
            assert holder.poll() is None, "the holding worker died"
            time.sleep(0.02)
        with pytest.raises(ArtifactLockTimeout, match=rf"held by worker \S+ pid {holder.pid} "):
            build_once(tmp_path, "teacher", {}, CountingBuild(), lock_timeout_s=0.2)
    finally:
        release.touch()
        holder.wait(timeout=60)
    assert holder.returncode == 0 and verify(tmp_path / "teacher" / key)


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from harness.artifacts import build_once

    root, ready, release = (Path(arg) for arg in sys.argv[1:])

    def build(folder):
        ready.touch()
        while not release.exists():
            time.sleep(0.02)
        (folder / "out.txt").write_text("done")

    build_once(root, "teacher", {}, build)
""")


def test_a_verified_artifact_another_machine_renamed_into_place_first_is_used(tmp_path):
    # flock does not hold across machines on some shared file systems: two builders can
    # both build, and the second rename meets the first one's artifact.
    fields = {"lr": 1e-4}
    final = tmp_path / "teacher" / artifact_key("teacher", fields)
    rival = build_once(tmp_path / "other-machine", "teacher", fields, CountingBuild("rival"))

    def losing_build(folder: Path) -> None:
        CountingBuild("ours")(folder)
        shutil.copytree(rival.path, final)  # the other machine finishes first

    artifact = build_once(tmp_path, "teacher", fields, losing_build)
    assert artifact.reused and artifact.path == final and verify(final)
    assert (final / "model.bin").read_text() == "rival"
    assert [p.name for p in (tmp_path / "teacher").iterdir() if p.is_dir()] == [final.name]


def test_an_unverified_folder_renamed_into_place_while_building_is_an_error(tmp_path):
    final = tmp_path / "teacher" / artifact_key("teacher", {})

    def losing_build(folder: Path) -> None:
        CountingBuild()(folder)
        final.mkdir()
        (final / "half.bin").write_text("half")

    with pytest.raises(OSError):
        build_once(tmp_path, "teacher", {}, losing_build)
    assert (final / "half.bin").read_text() == "half"  # not ours to delete
    assert [p.name for p in (tmp_path / "teacher").iterdir() if p.is_dir()] == [final.name]


# --- folders written whole ---------------------------------------------------------------

def test_write_folder_atomically_creates_and_replaces_whole(tmp_path):
    final = tmp_path / "runs" / "student"
    write_folder_atomically(final, CountingBuild("first"))
    (final / "stale.txt").write_text("from the older folder")
    write_folder_atomically(final, CountingBuild("second"))
    assert (final / "model.bin").read_text() == "second"
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*")) == [
        "model.bin", "sub", "sub/config.json"]
    assert [p.name for p in final.parent.iterdir()] == ["student"]


@pytest.mark.parametrize("existing", [False, True])
def test_a_crash_while_writing_a_folder_leaves_the_old_state(tmp_path, existing):
    final = tmp_path / "student"
    if existing:
        write_folder_atomically(final, CountingBuild("old"))

    def crashing(folder: Path) -> None:
        (folder / "model.bin").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_folder_atomically(final, crashing)
    assert [p.name for p in tmp_path.iterdir()] == (["student"] if existing else [])
    if existing:
        assert (final / "model.bin").read_text() == "old"


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
