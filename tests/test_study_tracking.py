"""The study driver's W&B runs, read back with W&B's own reader and joined to the
Optuna storage through the stored run id."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest

from harness.study import main
from harness.sweep.storage import open_storage

from .conftest import SMOKE

WANDB = str(Path(sys.executable).parent / "wandb")
SECRET = "hunter2-not-for-logs"


def inspect(run_folder: Path, *flags: str):
    done = subprocess.run([WANDB, "leet", "inspect", *flags, str(run_folder)],
                          capture_output=True, text=True, check=True)
    if "--summary" in flags:
        return json.loads(done.stdout)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def run_folder(root: Path, run_id: str) -> Path:
    (folder,) = root.glob(f"runs/*/wandb/offline-run-*-{run_id}")
    return folder


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY",
                 "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))
    yield
    import wandb

    wandb.teardown()


def check_runs_match_storage(root: Path, study: optuna.Study) -> None:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for trial in study.trials:
        folder = run_folder(root, trial.user_attrs["wandb_run_id"])
        summary = inspect(folder, "--summary", "--json")
        records = inspect(folder, "--json")
        (run_record,) = [r["run"] for r in records if r["type"] == "run"]
        assert run_record["display_name"] == f"trial-{trial.number}"
        assert run_record["run_group"] == study.study_name
        assert summary["config"]["trial"]["T"] == pytest.approx(trial.params["T"])
        if trial.state != optuna.trial.TrialState.COMPLETE:
            continue
        for field in ("dev_accuracy", "test_accuracy", "kd_gain", "flops_per_example",
                      "teacher_agreement", "train_flops"):
            assert summary["summary"][field] == pytest.approx(trial.user_attrs[field]), field
        rows = [r["history"]["item"] for r in records if r["type"] == "history"]
        epochs = [row["distill/select_accuracy"] for row in rows if "distill/select_accuracy" in row]
        assert epochs == pytest.approx(trial.user_attrs["select_accuracies"])


def test_offline_runs_read_back_and_match_the_storage(tmp_path, monkeypatch, cache_dir,
                                                      smoke_shared, wandb_home):
    monkeypatch.chdir(tmp_path)
    storage = f"journal:{tmp_path / 'study.journal'}"
    assert main(["--study", str(SMOKE), "--workers", "1", "--n-trials", "2", "--wandb", "offline",
                 "--storage", storage, "--study-name", "tracked"]) == 0
    study = optuna.load_study(study_name="tracked", storage=open_storage(storage))
    check_runs_match_storage(tmp_path, study)
    (study_run,) = tmp_path.glob("runs/tracked-*/wandb/offline-run-*/files/media/table/*.json")
    table = json.loads(study_run.read_text())
    assert {row[0] for row in table["data"]} == {t.number for t in study.best_trials}


def test_disabled_writes_no_run(tmp_path, monkeypatch, cache_dir, smoke_shared, wandb_home):
    monkeypatch.chdir(tmp_path)
    assert main(["--study", str(SMOKE), "--workers", "1", "--n-trials", "1", "--wandb", "disabled",
                 "--storage", f"journal:{tmp_path / 's.journal'}"]) == 0
    assert not list(tmp_path.glob("runs/*/wandb"))


def test_storage_password_never_reaches_run_files(tmp_path, monkeypatch, cache_dir,
                                                  smoke_shared, wandb_home, postgres_url,
                                                  capsys):
    monkeypatch.chdir(tmp_path)
    # Trust authentication ignores the password, so it can be any secret-looking string.
    user_and_host = postgres_url.split("://", 1)[1]
    user, host = user_and_host.split("@", 1)
    url = f"postgresql://{user}:{SECRET}@{host}"
    name = f"secret-{uuid.uuid4().hex[:8]}"  # the database outlives the test session
    assert main(["--study", str(SMOKE), "--workers", "1", "--n-trials", "1", "--wandb", "offline",
                 "--storage", url, "--study-name", name]) == 0
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    study = optuna.load_study(study_name=name, storage=url)
    assert SECRET not in json.dumps([t.user_attrs for t in study.trials], default=str)
