"""The cluster recipes under deploy/: the Slurm script runs a study with plain bash, and
the Kubernetes manifests call the study's command line as it parses."""

from __future__ import annotations

import os
import subprocess

import optuna
import yaml

from harness.sweep.cli import exit_code, parse_args
from harness.sweep.workers import Terminated

from .conftest import REPO, SMOKE, THREADS


def test_the_slurm_script_run_with_bash_sets_up_then_completes_a_study(tmp_path, cache_dir,
                                                                       smoke_shared):
    storage = f"journal:{tmp_path / 'study.journal'}"
    env = {**os.environ, "STUDY": str(SMOKE), "STORAGE": storage, "N_TRIALS": "2",
           "EXTRA": "--wandb disabled --study-name slurm", "KD_HARNESS_CACHE": str(cache_dir),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(THREADS)}
    done = subprocess.run(["bash", str(REPO / "deploy" / "slurm.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no trial was run" in done.stdout  # the setup step, first
    study = optuna.load_study(study_name="slurm",
                              storage=optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(
                                      storage.removeprefix("journal:"))))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_the_kubernetes_manifests_run_the_study_command_as_it_parses():
    documents = [d for name in ("kubernetes.yaml", "kubernetes-workers.yaml")
                 for d in yaml.safe_load_all((REPO / "deploy" / name).read_text())]
    jobs = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Job"}
    commands = {}
    for name, job in jobs.items():
        container, = job["spec"]["template"]["spec"]["containers"]
        assert container["command"][:3] == ["python", "-m", "harness.study"]
        argv = [a.replace("$(STORAGE)", "postgresql://u@db/kd") for a in container["command"][3:]]
        commands[name] = parse_args(argv)
        assert (REPO / commands[name].study).is_file()
        assert {"name": "cache", "mountPath": "/cache"} in container["volumeMounts"]
    assert commands["kd-prepare"].prepare_only and not commands["kd-workers"].prepare_only
    assert commands["kd-workers"].workers == 1
    workers = jobs["kd-workers"]["spec"]
    assert workers["completionMode"] == "Indexed"
    ignored = workers["podFailurePolicy"]["rules"][0]
    assert ignored["action"] == "Ignore"
    assert ignored["onExitCodes"]["values"] == [exit_code(Terminated())]
