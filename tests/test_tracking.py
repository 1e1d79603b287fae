"""Tests for harness.sweep.tracking: offline W&B runs read back with W&B's own reader.

`wandb leet inspect` reads a run's .wandb transaction log: `--summary --json` gives its
config, summary, state and exit code; `--json` alone gives every record (the run record
with group and job type, history rows, summary updates). No test touches the network.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.sweep import tracking

REPO = Path(__file__).resolve().parents[1]
WANDB_CLI = Path(sys.executable).with_name("wandb")
SECRET = "hunter2-secret"
API_KEY = "k" * 40
FAKE_KEY = "f" * 40
CONFIG = {
    "T": 2.0, "T_s": 1.5, "alpha": 0.5, "num_layers": 2, "tokenizer": "bert-base-uncased",
    "pad_token_id": 0, "storage": f"postgresql://kd:{SECRET}@db.example/kd",
    "tracking": {"api_key": API_KEY, "tags": ["kd", "smoke"]},
}
REDACTED = {**CONFIG, "storage": "postgresql://kd:***@db.example/kd",
            "tracking": {"api_key": "***", "tags": ["kd", "smoke"]}}


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch):
    """No real credentials, settings or network; W&B's caches outside run_dir."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_DIR",
                 "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    yield home
    if "wandb" in sys.modules:  # wandb caches env-derived settings per process: reset
        sys.modules["wandb"].teardown()


def inspect(run_dir: Path, run_id: str, summary: bool):
    (folder,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    args = [str(WANDB_CLI), "leet", "inspect", "--json", str(folder)]
    out = subprocess.run(args + (["--summary"] if summary else []), check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return json.loads(out) if summary else [json.loads(line) for line in out.splitlines()]


def of_type(records, kind):
    return [record[kind] for record in records if record["type"] == kind]


def test_trial_runs_read_back(tmp_path, monkeypatch):
    # W&B metadata would record the command line, which may carry the storage URL.
    monkeypatch.setattr(sys, "argv", ["harness.study", "--storage", CONFIG["storage"]])
    run_dir = tmp_path / "runs"
    done = tracking.start_trial_run("offline", "kd", None, ("smoke",), run_dir, "s1", 0,
                                    "trial", CONFIG)
    for step in range(4):
        done.log({"kd/loss": 1.0 / (step + 1), "kd/loss_kd": 0.5, "kd/loss_ce": 0.25,
                  "kd/lr": 1e-3}, step=step)
        if step % 2:
            done.log({"kd/epoch": (step + 1) // 2, "kd/dev_accuracy": 0.6 + step / 10})
    for step in range(2):  # the fine-tune phase counts its steps from 0 again
        done.log({"finetune/loss": 0.3, "finetune/lr": 1e-4}, step=step)
    done.log({"finetune/epoch": 1, "finetune/dev_accuracy": 0.8})
    done.finish({"dev_accuracy": 0.8, "kd_gain": 0.05, "params": 1234}, "complete")
    failed = tracking.start_trial_run("offline", "kd", None, (), run_dir, "s1", 1, "trial",
                                      CONFIG)
    failed.finish({"T": 2.0}, "failed", "RuntimeError: out of memory")
    assert done.run_id and failed.run_id and done.run_id != failed.run_id

    summary = inspect(run_dir, done.run_id, summary=True)
    assert (summary["name"], summary["project"], summary["tags"]) == ("trial-0", "kd", ["smoke"])
    assert summary["config"] == REDACTED
    assert (summary["state"], summary["exit_code"]) == ("finished", 0)
    assert {"dev_accuracy": 0.8, "kd_gain": 0.05, "params": 1234,
            "trial_state": "complete"}.items() <= summary["summary"].items()
    records = inspect(run_dir, done.run_id, summary=False)
    (run,) = of_type(records, "run")
    assert (run["run_group"], run["job_type"], run["display_name"]) == ("s1", "trial", "trial-0")
    rows = [history["item"] for history in of_type(records, "history")]
    epochs = [(phase, row[f"{phase}/epoch"], row[f"{phase}/dev_accuracy"], row[f"{phase}/step"])
              for row in rows for phase in ("kd", "finetune") if f"{phase}/epoch" in row]
    assert epochs == [("kd", 1, pytest.approx(0.7), 1), ("kd", 2, pytest.approx(0.9), 3),
                      ("finetune", 1, 0.8, 1)]
    assert [row["finetune/step"] for row in rows if "finetune/loss" in row] == [0, 1]
    assert len([row for row in rows if "kd/loss_ce" in row]) == 4

    summary = inspect(run_dir, failed.run_id, summary=True)
    assert (summary["name"], summary["state"], summary["exit_code"]) == ("trial-1", "failed", 1)
    assert summary["summary"]["trial_state"] == "failed"
    assert summary["summary"]["state_reason"] == "RuntimeError: out of memory"

    files = [path for path in run_dir.rglob("*") if path.is_file() and not path.is_symlink()]
    assert any(path.suffix == ".wandb" for path in files)
    for path in files:
        data = path.read_bytes()
        assert SECRET.encode() not in data and API_KEY.encode() not in data, path
    command = tracking.sync_command(run_dir, "offline")
    assert command == f"wandb sync {run_dir}/wandb/offline-run-*"
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2


def test_study_front_logs_table_and_figure(tmp_path):
    from PIL import Image

    figure = tmp_path / "pareto.png"
    Image.new("RGB", (8, 8)).save(figure)
    front = pd.DataFrame({"trial": [3, 7], "dev_accuracy": [0.81, 0.78],
                          "flops_per_example": [2.0e9, 1.0e9]})
    run_dir = tmp_path / "runs"
    run_id = tracking.log_study_front("offline", "kd", None, (), run_dir, "s1", front, figure)
    assert run_id
    records = inspect(run_dir, run_id, summary=False)
    (run,) = of_type(records, "run")
    assert (run["display_name"], run["job_type"], run["run_group"]) == ("study-s1", "study", "s1")
    (row,) = [history["item"] for history in of_type(records, "history")]
    assert (row["pareto_front._type"], row["pareto_front.nrows"]) == ("table-file", 2)
    assert row["accuracy_vs_flops._type"] == "image-file"
    (folder,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    table = json.loads((folder / "files" / row["pareto_front.path"]).read_text())
    assert table["columns"] == list(front.columns)
    assert table["data"] == front.values.tolist()


def test_disabled_writes_nothing_and_never_imports_wandb(tmp_path, wandb_env):
    work = tmp_path / "work"
    work.mkdir()
    code = f"""
import sys
from pathlib import Path
import pandas as pd
from harness.sweep import tracking
run_dir = Path({str(work / 'runs')!r})
run = tracking.start_trial_run("disabled", "kd", None, (), run_dir, "s1", 0, "trial", {{}})
run.log({{"kd/loss": 1.0}}, step=0)
run.finish({{"dev_accuracy": 0.5}}, "complete")
front = tracking.log_study_front("disabled", "kd", None, (), run_dir, "s1", pd.DataFrame(), None)
print(run.run_id, front, tracking.sync_command(run_dir, "disabled"), "wandb" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert out.split() == ["None", "None", "None", "False"]
    assert list(work.iterdir()) == [] and list(wandb_env.iterdir()) == []


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access during mode resolution")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_resolve_mode_passes_through_and_rejects_unknown():
    for mode in ("online", "offline", "disabled"):
        assert tracking.resolve_mode(mode) == mode
    with pytest.raises(ValueError, match="auto, online, offline, disabled"):
        tracking.resolve_mode("on")


def test_wandb_environment_fills_what_the_study_leaves_open(monkeypatch, no_network):
    from harness.config import TrackingConfig

    assert tracking.resolve_tracking(TrackingConfig()) == TrackingConfig(
        wandb="offline", project="kd-harness", entity=None)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_PROJECT", "env-project")
    monkeypatch.setenv("WANDB_ENTITY", "env-team")
    assert tracking.resolve_tracking(TrackingConfig(tags=("a",))) == TrackingConfig(
        wandb="disabled", project="env-project", entity="env-team", tags=("a",))
    explicit = TrackingConfig(wandb="offline", project="mine", entity="me")
    assert tracking.resolve_tracking(explicit) == explicit  # the study file or CLI wins
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # W&B's older name for offline
    assert tracking.resolve_tracking(TrackingConfig()).wandb == "offline"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="^WANDB_MODE: expected one of .*got 'sometimes'"):
        tracking.resolve_tracking(TrackingConfig())


def test_runs_go_to_wandb_dir_when_it_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    run_dir = tmp_path / "runs"
    run = tracking.start_trial_run("offline", "kd", None, (), run_dir, "s1", 0, "trial",
                                   {"T": 2.0})
    run.finish({"dev_accuracy": 0.7}, "complete")
    assert not (run_dir / "wandb").exists()
    summary = inspect(tmp_path / "elsewhere", run.run_id, summary=True)
    assert summary["summary"]["dev_accuracy"] == 0.7
    assert str(tmp_path / "elsewhere" / "wandb") in tracking.sync_command(run_dir, "offline")


def test_auto_is_offline_without_credentials(no_network):
    assert tracking.resolve_mode("auto") == "offline"


def test_auto_is_online_with_api_key(monkeypatch, no_network):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert tracking.resolve_mode("auto") == "online"


def test_auto_is_online_with_netrc_entry(wandb_env, no_network):
    netrc = wandb_env / ".netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    assert tracking.resolve_mode("auto") == "online"


def test_auto_falls_back_on_older_wandb(monkeypatch, no_network):
    import wandb.sdk.lib

    # Older wandb has no wbauth module; its wandb.api.api_key does the lookup. Undone
    # here, before the wandb_env fixture's teardown, which needs wbauth.
    with monkeypatch.context() as patch:
        patch.delattr(wandb.sdk.lib, "wbauth")
        patch.setitem(sys.modules, "wandb.sdk.lib.wbauth", None)
        assert tracking.resolve_mode("auto") == "offline"
        patch.setenv("WANDB_API_KEY", FAKE_KEY)
        assert tracking.resolve_mode("auto") == "online"


def test_init_failure_gives_a_no_op_run(tmp_path, monkeypatch, caplog):
    import wandb

    def broken_init(**kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr(wandb, "init", broken_init)
    run = tracking.start_trial_run("offline", "kd", None, (), tmp_path, "s1", 0, "trial", {})
    run.log({"kd/loss": 1.0}, step=0)
    run.finish({}, "complete")
    assert run.run_id is None
    assert "No space left on device" in caplog.text and "trial-0" in caplog.text
    assert tracking.log_study_front("offline", "kd", None, (), tmp_path, "s1",
                                    pd.DataFrame(), None) is None


def test_online_failure_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    import wandb

    real_init = wandb.init

    def unreachable_server(**kwargs):
        if kwargs["mode"] == "online":
            raise ConnectionError("no route to api.wandb.ai")
        return real_init(**kwargs)
    monkeypatch.setattr(wandb, "init", unreachable_server)
    assert tracking.sync_command(tmp_path, "online") is None  # no offline run yet
    run = tracking.start_trial_run("online", "kd", None, (), tmp_path, "s1", 0, "trial", {})
    run.finish({}, "complete")
    assert run.run_id and "continuing offline" in caplog.text
    assert inspect(tmp_path, run.run_id, summary=True)["state"] == "finished"
    assert tracking.sync_command(tmp_path, "online") == f"wandb sync {tmp_path}/wandb/offline-run-*"


def test_unwritable_run_dir_gives_a_no_op_run(tmp_path, caplog):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the run folder should be")
    run = tracking.start_trial_run("offline", "kd", None, (), blocker, "s1", 0, "trial", {})
    run.finish({}, "failed", "boom")
    assert run.run_id is None and "W&B init failed" in caplog.text


def test_log_failure_mid_run_does_not_raise(tmp_path, monkeypatch, caplog):
    run = tracking.start_trial_run("offline", "kd", None, (), tmp_path, "s1", 0, "trial", {})
    assert run.run_id

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr(run._run, "log", full_disk)
    run.log({"kd/loss": 1.0}, step=0)
    run.finish({"dev_accuracy": 0.5}, "complete")  # a no-op now, not an error
    assert "W&B log failed for trial-0" in caplog.text


def test_finish_rejects_unknown_state():
    with pytest.raises(ValueError, match="trial state"):
        tracking.TrialRun().finish({}, "crashed")


def test_redact_config_masks_secrets_only():
    config = {"db_password": "p", "hf_token": "hf_x", "client_secret": "s", "apiKey": "a",
              "tokenizer": "bert", "max_tokens": 128, "pad_token_id": 0, "token_budget": None,
              "urls": ("postgresql://u:pw@h/db", "sqlite:///runs/x.db"), "nested": [{"token": "t"}]}
    assert tracking.redact_config(config) == {
        "db_password": "***", "hf_token": "***", "client_secret": "***", "apiKey": "***",
        "tokenizer": "bert", "max_tokens": 128, "pad_token_id": 0, "token_budget": None,
        "urls": ("postgresql://u:***@h/db", "sqlite:///runs/x.db"), "nested": [{"token": "***"}]}
    assert config["db_password"] == "p"  # the input is not modified


def test_sync_command_only_for_offline(tmp_path):
    assert tracking.sync_command(tmp_path, "online") is None
    assert tracking.sync_command(tmp_path / "my runs", "offline") == (
        f"wandb sync '{tmp_path}/my runs/wandb'/offline-run-*")
