"""python -m harness.study on the smoke study: storage contents, resume, failures,
bad input, Ctrl-C, saved Pareto-front students, and every shipped study file."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

import harness.labels
import harness.pipeline
import harness.sweep.objective
from harness.config import (RESIZED_TEACHER, SEARCHABLE, ConfigError, default_trial_config,
                            fixed_value)
from harness.pipeline import untrained_cost
from harness.student import resolve_student
from harness.study import main
from harness.study_file import load_study_config
from harness.sweep.search import make_sampler, suggest_trial_config
from harness.sweep.storage import open_storage
from harness.sweep.study_record import RUN_FOLDER, config_fingerprint, open_study, run_folder
from harness.train import Diverged

from .conftest import REPO, SMOKE
from .test_pipeline import CONTRACT, assert_saved_student_reproduces

STUDY_FILES = sorted((REPO / "studies").glob("*.yaml"))


def run_smoke(tmp_path: Path, n_trials: int, *extra: str) -> tuple[int, str]:
    storage = f"journal:{tmp_path / 'study.journal'}"
    code = main(["--study", str(SMOKE), "--workers", "1", "--n-trials", str(n_trials), "--wandb", "disabled",
                 "--storage", storage, "--study-name", "smoke-test", *extra])
    return code, storage


def load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="smoke-test", storage=open_storage(storage))


def test_smoke_study_stores_every_field_and_keeps_front_students(in_tmp, smoke_shared):
    code, storage = run_smoke(in_tmp, 3)
    assert code == 0
    study = load(storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 3
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete, "the smoke study completed no trial"
    for trial in complete:
        for name in CONTRACT:
            assert name in trial.user_attrs, (trial.number, name)
        assert trial.values == [trial.user_attrs["dev_accuracy"],
                                trial.user_attrs["flops_per_example"]]
        assert trial.user_attrs["provenance"]["libraries"]["optuna"] == optuna.__version__
    front = {t.number for t in study.best_trials}
    (students,) = {Path(t.user_attrs["student_path"]).parent for t in complete}
    assert students == run_folder(study) / "students"  # the folder the creator drew
    saved = {int(p.name.removeprefix("trial-")) for p in (in_tmp / students).iterdir()}
    assert saved == front
    for trial in study.best_trials:
        assert_saved_student_reproduces(in_tmp / trial.user_attrs["student_path"],
                                        smoke_shared.text, trial.user_attrs["dev_accuracy"])


def test_rerun_resumes_to_the_asked_total(in_tmp):
    assert run_smoke(in_tmp, 2)[0] == 0
    code, storage = run_smoke(in_tmp, 3)
    assert code == 0
    assert len([t for t in load(storage).trials if t.state.is_finished()]) == 3
    assert run_smoke(in_tmp, 3)[0] == 0  # already complete: runs nothing more
    assert len(load(storage).trials) == 3


def test_changed_configuration_is_refused_before_anything_trains(in_tmp, monkeypatch, capsys):
    storage = f"journal:{in_tmp / 'study.journal'}"
    open_study(open_storage(storage), "smoke-test", load_study_config(SMOKE))  # as a first run
    trained = []

    def no_training(name, *args, **kwargs):
        trained.append(name)
        raise AssertionError(f"{name} trained before the refusal")

    # The teacher (from the cache the fixtures warmed), the baseline and the students.
    monkeypatch.setattr(harness.labels, "train_phase", no_training)
    monkeypatch.setattr(harness.pipeline, "train_phase", no_training)
    code, _ = run_smoke(in_tmp, 2, "--set", "pipeline.distill.lr=1e-3")
    error = capsys.readouterr().err
    assert code == 2 and "another configuration" in error and error.count("\n") == 1, error
    assert trained == [] and load(storage).trials == []
    assert not (in_tmp / "runs").exists()


def test_open_study_refuses_another_configuration_and_reopens_its_own(tmp_path):
    storage = open_storage(f"journal:{tmp_path / 'study.journal'}")
    config = load_study_config(SMOKE)
    recorded = open_study(storage, "s", config).user_attrs
    assert recorded["config_sha256"] == config_fingerprint(config)
    # Tracking, the description and the confirmation seeds leave trials comparable.
    same = load_study_config(SMOKE, ["tracking.wandb=offline", "description=again",
                                     "confirm.seeds=3"])
    assert config_fingerprint(same) == config_fingerprint(config)
    assert open_study(storage, "s", same).user_attrs == recorded  # and it rewrites nothing
    for override in ("pipeline.distill.epochs=1", "seed=1", "search.alpha.high=0.5"):
        changed = load_study_config(SMOKE, [override])
        assert config_fingerprint(changed) != config_fingerprint(config), override
        with pytest.raises(ConfigError, match="'s' was created from another configuration"):
            open_study(storage, "s", changed)
    optuna.create_study(storage=storage, study_name="foreign")  # not made by harness.study
    with pytest.raises(ConfigError, match="'foreign' records no configuration"):
        open_study(storage, "foreign", config, fingerprint_wait_seconds=0.0)


def test_failing_trial_is_recorded_and_the_study_goes_on(in_tmp, monkeypatch):
    real_run_trial = harness.sweep.objective.run_trial
    calls = []

    def diverge_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise Diverged("distill: loss became nan at step 3")
        return real_run_trial(*args, **kwargs)

    monkeypatch.setattr(harness.sweep.objective, "run_trial", diverge_once)
    code, storage = run_smoke(in_tmp, 2)
    assert code == 0
    trials = load(storage).trials
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == "diverged"
    assert "Diverged" in failed[0].user_attrs["traceback"]
    assert len([t for t in trials if t.state.is_finished()]) == 3  # 2 finished + 1 failed


def test_a_student_over_the_compute_budget_is_pruned_untrained(in_tmp, smoke_config, smoke_shared):
    sizes = [(layers, width) for layers in (1, 2) for width in (32, 64)]  # smoke's search
    flops = {size: untrained_cost(resolve_student(smoke_config, default_trial_config(
        smoke_config, num_layers=size[0], hidden_size=size[1]), smoke_shared),
        smoke_shared.device, smoke_config.pipeline.latency_repeats).flops_per_example
        for size in sizes}
    limit = min(flops.values()) * 1.01  # only the smallest student fits
    code, storage = run_smoke(in_tmp, 4, "--set", "objectives.metrics=[dev_accuracy]",
                              "--set", f"objectives.constraints.flops_per_example={limit}",
                              "--set", "pruner.name=none")
    assert code == 0
    trials = load(storage).trials
    over = [t for t in trials if flops[(t.params["num_layers"], t.params["hidden_size"])] > limit]
    fits = [t for t in trials if t not in over]
    assert over, "the seeded sampler drew no student over the budget"
    for trial in over:
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert trial.user_attrs["prune_reason"].startswith("over budget before training")
        assert trial.constraints == {"flops_per_example": flops[(trial.params["num_layers"],
                                                                 trial.params["hidden_size"])] - limit}
        assert "select_accuracies" not in trial.user_attrs and not trial.intermediate_values
    for trial in fits:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.user_attrs["flops_per_example"] == flops[(trial.params["num_layers"],
                                                               trial.params["hidden_size"])]
        assert trial.constraints == {"flops_per_example": trial.user_attrs["flops_per_example"] - limit}


@pytest.mark.parametrize("extra", [
    ["--set", "pipeline.unknown_key=1"],
    ["--set", "search.T.low=100"],
    ["--set", "search.hidden_size.choices=[]"],
    ["--set", "data.source=/nonexistent/reviews.csv"],
    ["--set", "teacher.source=/nonexistent/model"],
    ["--storage", "not-a-storage-url"],
    ["--device", "tpu"],
    ["--set", "search.alpha.high=1.5"],
    ["--set", "pipeline.T=.inf"],
    ["--set", "pipeline.T=inf"],
    ["--set", "search.T.high=1e999"],
    ["--set", "pipeline.T=[1"],
    ["--set", "student.head_dim=0"],
    ["--set", "pipeline.batch_size=0"],
    ["--set", "data.max_train_examples=0"],
    ["--set", "teacher.architecture.num_heads=3"],
    ["--study-name", "../outside"],
    ["--study-name", "/tmp/elsewhere"],
    ["--study-name", ".."],
    ["--set", "name=a/b"],
    ["--set", "transfer.unlabeled=/nonexistent/texts.csv"],
    ["--set", "transfer.mask_prob=1.5"],
    ["--set", "pipeline.schedule.patience=0"],
    ["--set", "teacher.schedule.min_steps=-1"],
], ids=["unknown-key", "low-above-high", "empty-choices", "missing-data", "missing-model",
        "bad-storage", "bad-device", "alpha-above-1", "infinite-T", "inf-text-T",
        "huge-search-bound", "broken-yaml", "head-dim-0",
        "batch-size-0", "no-train-examples", "heads-not-dividing", "name-parent",
        "name-absolute", "name-dot-dot", "file-name-with-slash", "missing-unlabeled",
        "mask-prob-above-1", "patience-0", "negative-min-steps"])
def test_bad_input_exits_2_and_writes_no_storage(in_tmp, extra, capsys):
    storage = in_tmp / "study.journal"
    code = main(["--study", str(SMOKE), "--workers", "1", "--n-trials", "1", "--wandb", "disabled",
                 "--storage", f"journal:{storage}", *extra])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error  # one line
    assert not storage.exists() and not (in_tmp / "runs").exists()
    assert not (in_tmp.parent / "outside").exists()


@pytest.mark.parametrize("flag, value", [("--n-trials", "-1"), ("--n-trials", "many"),
                                         ("--heartbeat-seconds", "0")])
def test_bad_counts_on_the_command_line_exit_2(in_tmp, flag, value, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--study", str(SMOKE), flag, value])
    assert stopped.value.code == 2
    assert f"argument {flag}: expected a" in capsys.readouterr().err
    assert not (in_tmp / "runs").exists()


def test_a_diverging_teacher_exits_2_naming_teacher_lr(in_tmp, monkeypatch, capsys):
    def diverging(name, *args, **kwargs):
        raise Diverged(f"{name}: loss became nan at step 3")

    monkeypatch.setattr(harness.labels, "train_phase", diverging)
    storage = in_tmp / "study.journal"
    code = main(["--study", str(SMOKE), "--workers", "1", "--n-trials", "1", "--wandb", "disabled",
                 "--storage", f"journal:{storage}", "--set", "teacher.epochs=2.5"])  # not cached
    assert code == 2
    error = capsys.readouterr().err
    assert error == ("error: the teacher's fine-tune diverged (teacher: loss became nan at step "
                     "3); lower teacher.lr or check the data\n")
    assert not storage.exists() and not (in_tmp / "runs").exists()


def test_the_run_folder_is_drawn_once_by_the_creator_and_recorded(tmp_path):
    # Saved students go under it: see test_smoke_study_stores_every_field_and_keeps_front_students.
    config = load_study_config(SMOKE)
    first = f"journal:{tmp_path / 'first.journal'}"
    folder = run_folder(open_study(open_storage(first), "same", config))
    assert folder.parent == Path("runs") and re.fullmatch(r"same-[0-9a-f]{8}", folder.name)
    stored = optuna.load_study(study_name="same", storage=open_storage(first)).user_attrs
    assert stored[RUN_FOLDER] == folder.name  # read back by a process that never opened it
    # Every later worker, or a resumed run, finds the creator's folder.
    assert run_folder(open_study(open_storage(first), "same", config)) == folder
    # The same name in another storage, or recreated in this one, never shares it.
    other = run_folder(open_study(open_storage(f"journal:{tmp_path / 'second.journal'}"),
                                  "same", config))
    optuna.delete_study(study_name="same", storage=open_storage(first))
    recreated = run_folder(open_study(open_storage(first), "same", config))
    assert len({folder, other, recreated}) == 3
    assert all(re.fullmatch(r"same-[0-9a-f]{8}", f.name) for f in (other, recreated))


@pytest.mark.slow
def test_ctrl_c_marks_the_running_trial_interrupted(in_tmp):
    storage = f"journal:{in_tmp / 'study.journal'}"
    command = [sys.executable, "-m", "harness.study", "--study", str(SMOKE), "--n-trials", "3",
               "--wandb", "disabled", "--storage", storage, "--study-name", "smoke-test",
               "--set", "pipeline.distill.epochs=200", "--set", "pipeline.budget=unequal"]
    worker = subprocess.Popen(command, cwd=in_tmp, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (in_tmp / "study.journal").exists() and any(
                    t.state == optuna.trial.TrialState.RUNNING for t in load(storage).trials):
                break
            time.sleep(0.5)
        else:
            pytest.fail("no trial started")
        time.sleep(1.0)
        worker.send_signal(signal.SIGINT)
        # Generous: on two loaded cores one run once did not end within 60 s of SIGINT.
        output = worker.communicate(timeout=180)[0].decode()
    finally:
        worker.kill()
    assert worker.returncode == 130, output
    trials = load(storage).trials
    assert len(trials) == 1 and trials[0].state == optuna.trial.TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"] == "interrupted"


@pytest.mark.parametrize("path", STUDY_FILES, ids=[p.stem for p in STUDY_FILES])
def test_every_shipped_study_file_loads_and_samples(path):
    config = load_study_config(path)
    assert {"T", "T_s", "alpha", "num_layers", "hidden_size"} <= set(config.search)
    study = optuna.create_study(directions=["maximize"] * len(config.objectives.metrics),
                                sampler=make_sampler(config, 0))
    for _ in range(3):
        trial = study.ask()
        sampled = suggest_trial_config(trial, config)
        assert set(trial.params) <= set(config.search)
        assert sampled.seed == config.seed
        assert sampled.hidden_size % config.student.head_dim == 0
        for name, searchable in SEARCHABLE.items():
            value = getattr(sampled, name)
            if searchable.resized_only and sampled.student_source != RESIZED_TEACHER:
                assert name not in trial.params, name  # a checkpoint's size is its own
            if name not in trial.params:  # not searched, or a size a checkpoint has of its own
                assert name not in config.search or (
                    searchable.resized_only and sampled.student_source != RESIZED_TEACHER), name
                assert value == fixed_value(config, searchable.path), name  # the study file's
                continue
            param = config.search[name]
            assert value == trial.params[name] and type(value) is searchable.kind, name
            if param.choices is not None:
                assert value in param.choices, name
            else:
                assert param.low <= value <= param.high, name
                if param.step is not None:
                    steps = (value - param.low) / param.step
                    assert steps == pytest.approx(round(steps)), name
        study.tell(trial, [0.5] * len(config.objectives.metrics))


def test_pareto_report_of_a_real_smoke_study(in_tmp):
    import pandas as pd
    from matplotlib.image import imread

    from analysis.pareto import main as pareto_main

    code, storage = run_smoke(in_tmp, 3)
    assert code == 0
    out = in_tmp / "report"
    assert pareto_main(["--study-name", "smoke-test", "--storage", storage, "--out", str(out)]) == 0
    front = pd.read_csv(out / "pareto.csv")
    assert set(front["trial"]) == {t.number for t in load(storage).best_trials}
    assert "teacher" in (out / "pareto.md").read_text()
    height, width, _ = imread(out / "pareto.png").shape
    assert width >= 600 and height >= 400


@pytest.mark.slow
def test_a_regular_install_runs_the_default_study_from_any_folder(tmp_path):
    """Not editable: the installed package alone must carry studies/default.yaml."""
    source, target = tmp_path / "source", tmp_path / "site"
    # A copy, because building writes build/ and *.egg-info into the source folder.
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed copy, not the checkout
    probe = ("import harness.study_file, harness.sweep.cli as cli; "
             "print(cli.default_study_file()); "
             "print(harness.study_file.load_study_config(cli.default_study_file()).name)")
    printed = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env,
                             capture_output=True, text=True, check=True).stdout.split()
    assert Path(printed[0]).is_relative_to(target)
    assert printed[1] == load_study_config(REPO / "studies" / "default.yaml").name
    help_text = subprocess.run([sys.executable, "-m", "harness.study", "--help"], cwd=elsewhere,
                               env=env, capture_output=True, text=True, check=True).stdout
    assert "--n-trials" in help_text


def test_single_objective_study_keeps_the_students_of_the_printed_front(in_tmp, capsys):
    # Four sizes, one each (grid): the printed front (dev accuracy vs FLOPs) holds the
    # cheapest student, the single objective's best is the most accurate one.
    grid = ["search.T={choices: [2.0]}", "search.T_s={choices: [2.0]}",
            "search.alpha={choices: [0.5]}", "search.num_layers={choices: [1, 2]}",
            "sampler.name=grid", "objectives.metrics=[dev_accuracy]", "pruner.name=none"]
    code, storage = run_smoke(in_tmp, 4, *[arg for item in grid for arg in ("--set", item)])
    assert code == 0
    from analysis.frame import study_frame
    from analysis.front import pareto_front

    study = load(storage)
    printed = set(pareto_front(study_frame(study))["trial"])
    best = {t.number for t in study.best_trials}
    assert printed - best  # a printed front member the study does not count best: lost before
    # The study's own best is kept too: on a tie in dev accuracy (bf16 CPUs give one) Optuna's
    # best trial can be a dearer student than the printed front's member of that accuracy.
    for trial in study.trials:
        saved = (in_tmp / trial.user_attrs["student_path"]).is_dir()
        assert saved == (trial.number in printed | best), trial.number


def test_every_spelling_of_a_storage_url_finds_the_same_run_folder(postgres_url):
    name = f"spelled-{uuid.uuid4().hex[:8]}"
    spellings = [postgres_url, postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)]
    config = load_study_config(SMOKE)
    try:
        folders = [run_folder(open_study(open_storage(url, heartbeat_seconds=60), name, config))
                   for url in spellings]
        assert folders[0] == folders[1]
    finally:
        optuna.delete_study(study_name=name, storage=postgres_url)
