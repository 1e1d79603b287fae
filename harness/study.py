"""The study driver: sample distillation settings and student sizes, run each trial,
record it in an Optuna storage and (optionally) W&B.

    python -m harness.study --n-trials 50                      # studies/default.yaml, offline
    python -m harness.study --study studies/smoke.yaml --n-trials 3 --wandb disabled
    python -m harness.study --storage postgresql://user@host/db  # several workers, one study

``--n-trials N`` means "until the study holds N finished (complete or pruned) trials":
re-running an interrupted command completes the study, and workers sharing a storage
share one total. Then the front is confirmed over seeds (``--confirm-seeds N`` or the
study's ``confirm.seeds``; ``harness.confirm``): those repeats are not counted in N. On a
CPU the work is shared by one worker per core (at most 4), the driver included
(``--workers``, ``harness.local_workers``). Bad input exits with code 2 before any
training; Ctrl-C marks the running trials failed ("interrupted") and exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.resources
import logging
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import optuna
import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis.frame import study_frame
from analysis.front import pareto_front
from analysis.plots import plot_front, png_bytes
from analysis.report import NoCompleteTrials, Report, build_report, render_text
from analysis.seeds import search_rows
from harness import tracking
from harness.artifacts import ArtifactLockTimeout, cache_root, write_files
from harness.config import ConfigError, StudyConfig, TrialConfig
from harness.confirm import (DUPLICATE, REPEAT_OF, SEED, is_repeat, missing_repeats,
                             queue_repeats, refuse_duplicate, search_trials)
from harness.data import DataError
from harness.local_workers import (LOCAL_WORKER_FLAG, MAX_AUTO_WORKERS, plan_workers,
                                   start_local_workers, stop, wait_for)
from harness.models import ModelError
from harness.pipeline import TrialHooks, reported_epochs, run_trial, trial_shape, untrained_cost
from harness.provenance import provenance
from harness.search import (constraint_violations, objective_values, over_budget, stop_if_behind,
                            suggest_trial_config)
from harness.shared import SharedArtifacts, prepare_shared
from harness.storage import (DEFAULT_STORAGE, StorageError, journal_path, open_storage,
                             redact_url)
from harness.study_file import check_study_name, load_study_config
from harness.study_record import open_study, run_folder
from harness.train import Diverged
from harness.workers import (ORPHAN_GRACE_SECONDS, describe_running, reap_dead_local_trials,
                             trial_counts, worker_identity)

log = logging.getLogger("harness.study")

MAX_CONSECUTIVE_FAILURES = 5
# The W&B front table's columns (the printed and file reports have their own layout).
FRONT_COLUMNS = ("dev_accuracy", "test_accuracy", "flops_per_example", "params", "T", "T_s",
                 "alpha", "num_layers", "hidden_size", "kd_gain")


def default_study_file() -> Path:
    """studies/default.yaml: installed as package data ``harness.studies`` (pyproject.toml),
    so the main job finds it from any folder after a regular ``pip install .``."""
    try:
        return Path(str(importlib.resources.files("harness.studies") / "default.yaml"))
    except ModuleNotFoundError:  # a source checkout on sys.path, never installed
        return Path(__file__).resolve().parent.parent / "studies" / "default.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=default_study_file(),
                        help="study file (YAML; default: the packaged studies/default.yaml)")
    parser.add_argument("--n-trials", type=_at_least(0), default=50,
                        help="run until the study holds this many finished trials")
    parser.add_argument("--study-name", help="default: the study file's name")
    parser.add_argument("--storage", help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    parser.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--confirm-seeds", type=_at_least(0), metavar="N",
                        help="runs per front configuration, the search's own included "
                             "(default: the study's confirm.seeds; 0 or 1: no confirmation)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a study-file value, e.g. --set pipeline.distill.epochs=1")
    parser.add_argument("--heartbeat-seconds", type=_at_least(1), default=60,
                        help="RDB storages: a worker silent for twice this is declared dead")
    parser.add_argument("--workers", type=_at_least(1), metavar="K",
                        help="worker processes on this machine sharing the study, each with "
                             "its share of the CPU threads (default: on a CPU one per core, "
                             f"at most {MAX_AUTO_WORKERS}; on a GPU 1)")
    parser.add_argument(LOCAL_WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)  # argparse exits 2 with one line on a bad flag


def _at_least(minimum: int):
    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value
    return whole_number


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.local_worker:
        # A driver started in the background by a script ignores SIGINT, and so would its
        # workers: the driver's Ctrl-C must still reach them.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    _quiet_libraries()
    try:
        overrides = list(args.set) + ([f"seed={args.seed}"] if args.seed is not None else [])
        overrides += [f"tracking.wandb={args.wandb}"] if args.wandb else []
        if args.confirm_seeds is not None:
            overrides.append(f"confirm.seeds={args.confirm_seeds}")
        study_config = load_study_config(args.study, overrides)
        # Decided once per invocation ("auto", W&B's environment), so every trial logs alike.
        study_config = dataclasses.replace(
            study_config, tracking=tracking.resolve_tracking(study_config.tracking))
        device = resolve_device(args.device)
        study_name = (check_study_name(args.study_name, "--study-name")
                      if args.study_name is not None else study_config.name)
        storage_url = args.storage or DEFAULT_STORAGE
        # A database is reached before the (possibly hours-long) teacher fine-tune; a
        # journal file is only created once the data and the teacher are known to be good.
        storage = (None if journal_path(storage_url)
                   else open_storage(storage_url, heartbeat_seconds=args.heartbeat_seconds))
        shared = prepare_shared(study_config, device, cache_root())
        study = open_study(storage or open_storage(storage_url), study_name, study_config)
    except (ConfigError, DataError, ModelError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Diverged as error:
        print(f"error: the teacher's fine-tune diverged ({error}); lower teacher.lr or check "
              "the data", file=sys.stderr)
        return 2
    except ArtifactLockTimeout as error:  # not bad input: another worker is slow or stuck
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted before the first trial; the cache holds only complete artifacts",
              file=sys.stderr)
        return 130
    run_dir = run_folder(study)
    plan = plan_workers(args.workers, device, torch.get_num_threads())
    torch.set_num_threads(plan.threads)
    helpers = []
    interrupted = finished = False
    try:
        if plan.workers > 1 and work_left(study, study_config, args.n_trials):
            helpers = start_local_workers(sys.argv[1:] if argv is None else argv, plan,
                                          run_dir / "workers")
            log.info("%d workers of %d thread(s) each; the others write to %s/worker-N.log",
                     plan.workers, plan.threads, run_dir / "workers")
        context = {"storage": redact_url(storage_url), "device": str(device)}
        run_study(study, study_config, shared, args.n_trials, run_dir, context,
                  progress=not args.local_worker)
        finished = True
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: the running trial is recorded as failed; re-run the same command "
              "to complete the study", file=sys.stderr)
        return 130
    except StudyAborted as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if not finished:  # the driver's end is the run's end
            stop(helpers)
        problems = wait_for(helpers)
        for problem in problems if finished else ():
            print(f"error: {problem}", file=sys.stderr)
        if not args.local_worker:  # the driver reports the study once, for all its workers
            frame = study_frame(study)
            report = front_report(frame)
            if report is not None and not interrupted:
                log_front_to_wandb(frame, report, study_config, run_dir)
            _report_location(report, study.study_name, storage_url, run_dir, study_config)
    return 1 if problems else 0


def front_report(frame: pd.DataFrame) -> Report | None:
    """The Pareto report of ``python -m analysis.pareto``; None before any complete trial."""
    try:
        return build_report(frame)
    except NoCompleteTrials:
        return None


def log_front_to_wandb(frame: pd.DataFrame, report: Report, study_config: StudyConfig,
                       run_dir: Path) -> None:
    """One study-level W&B run with the Pareto front table and the accuracy-vs-FLOPs plot."""
    tracking_config = study_config.tracking
    if tracking_config.wandb == "disabled":
        return
    write_files(run_dir, {"pareto.png": png_bytes(plot_front(frame))})
    front = report.front[["trial", *FRONT_COLUMNS]]
    tracking.log_study_front(tracking_config.wandb, tracking_config.project,
                             tracking_config.entity, tracking_config.tags, run_dir,
                             report.study_name, front, run_dir / "pareto.png")


def run_study(study: optuna.Study, study_config: StudyConfig, shared: SharedArtifacts,
              n_trials: int, run_dir: Path, context: dict,
              orphan_grace_seconds: float = ORPHAN_GRACE_SECONDS, progress: bool = True) -> None:
    """Run trials until the study holds ``n_trials`` finished search trials (shared by all
    workers), then confirm the front: queue its repeats and run them until none is left.

    A trial that recorded no worker for ``orphan_grace_seconds`` is failed and re-queued.
    """
    reap_dead_local_trials(study, orphan_grace_seconds)
    states: list[optuna.trial.TrialState] = []  # of the trials this worker ran
    announced, front_size, grid_done = "", 0, False
    with tqdm(total=n_trials, desc="trials", unit="trial", disable=not progress) as bar:
        while True:
            counts = trial_counts(study)
            bar.n = min(counts.finished, n_trials)
            open_repeats = counts.repeats_waiting + counts.repeats_running
            bar.set_postfix(front=front_size, **({"repeats_left": open_repeats}
                                                 if open_repeats else {}))
            bar.refresh()
            if not grid_done and counts.finished < n_trials and _grid_exhausted(study):
                log.info("every grid point has run; the search stops at %d trials",
                         counts.finished)
                grid_done = True
            searching = counts.finished < n_trials and not grid_done
            if not searching and queue_repeats(study, study_config):
                counts = trial_counts(study)
                log.info("confirming the front over %d seeds: %d repeats to run",
                         study_config.confirm.seeds,
                         counts.repeats_waiting + counts.repeats_running)
            if searching:
                runnable = counts.finished + counts.running < n_trials or counts.waiting
            elif counts.repeats_waiting or counts.repeats_running:
                runnable = counts.repeats_waiting > 0
            else:
                break
            if runnable:
                study.optimize(lambda trial: objective(trial, study_config, shared, run_dir,
                                                       context, n_trials),
                               n_trials=1, catch=(Exception,), callbacks=[
                                   lambda _, trial: states.append(trial.state)
                                   if trial.user_attrs.get("fail_reason") not in REFUSED
                                   else None])
                front_size = keep_front_students(study, run_dir)
                if states[-MAX_CONSECUTIVE_FAILURES:] == [FAIL] * MAX_CONSECUTIVE_FAILURES:
                    raise StudyAborted(f"the last {MAX_CONSECUTIVE_FAILURES} trials failed; see "
                                       "their fail_reason in the storage")
            else:
                running = describe_running(study, orphan_grace_seconds)
                if running != announced:  # once, and again when what it waits on changes
                    log.info("waiting for trials running in other workers: %s", running)
                    announced = running
                time.sleep(2)  # wait in case one of those workers dies and its trial returns
                reap_dead_local_trials(study, orphan_grace_seconds)


def work_left(study: optuna.Study, study_config: StudyConfig, n_trials: int) -> bool:
    """Whether a worker starting now could find a trial to run (a finished study re-run
    for its report starts no local workers)."""
    counts = trial_counts(study)
    return (counts.finished < n_trials or counts.waiting > 0 or counts.repeats_waiting > 0
            or bool(missing_repeats(study, study_config)))


def _grid_exhausted(study: optuna.Study) -> bool:
    grid = getattr(study.sampler, "inner", study.sampler)  # SearchOnly wraps the study's own
    return isinstance(grid, optuna.samplers.GridSampler) and grid.is_exhausted(study)


# Trials refused before training (one too many, a repeat another trial runs): not failures
# of the study's trials, so they never count toward MAX_CONSECUTIVE_FAILURES.
REFUSED = ("surplus", DUPLICATE)


class StudyAborted(RuntimeError):
    """Every recent trial failed: stop rather than fail for ever."""


FAIL = optuna.trial.TrialState.FAIL


def objective(trial: optuna.Trial, study_config: StudyConfig, shared: SharedArtifacts,
              run_dir: Path, context: dict, n_trials: int) -> list[float]:
    """One Optuna trial: sample, run, record. Failures keep their reason in the storage.

    ``context`` (redacted storage URL, device) goes into the W&B config beside the trial's.
    """
    # First, so that a worker killed at any later point can be recognised as dead.
    trial.set_user_attr("worker", worker_identity())
    repeat = is_repeat(trial)
    if repeat:
        refuse_duplicate(trial)
    else:
        _refuse_surplus(trial, n_trials)
    trial_config = suggest_trial_config(trial, study_config)
    if repeat:  # the configuration's parameters (queued), on the repeat's own seed
        trial_config = dataclasses.replace(trial_config, seed=trial.user_attrs[SEED])
    trial.set_user_attr("provenance", provenance(shared.device))
    tracking_config = study_config.tracking
    run = tracking.start_trial_run(
        tracking_config.wandb, tracking_config.project, tracking_config.entity,
        tracking_config.tags, run_dir, trial.study.study_name, trial.number,
        "repeat" if repeat else "trial",
        {"trial": dataclasses.asdict(trial_config), "study": dataclasses.asdict(study_config),
         # W&B groups a configuration's runs by this key (the first run's trial number).
         "configuration": trial.user_attrs.get(REPEAT_OF, trial.number), **context})
    if run.run_id:
        trial.set_user_attr("wandb_run_id", run.run_id)
    shape = trial_shape(study_config, trial_config, shared)
    size = (shape.num_layers, shape.hidden_size)  # a pre-trained student's own
    # A repeat is never stopped early: its configuration already made the front.
    evaluations = reported_epochs(study_config, len(shared.text.tokens["train"]))
    hooks = TrialHooks(log=run.log, on_epoch=None if repeat else functools.partial(
        stop_if_behind, trial, study_config, size, evaluations))
    student_dir = run_dir / "students" / f"trial-{trial.number}"
    try:
        _refuse_over_budget(trial, study_config, trial_config, shared)
        result = run_trial(study_config, trial_config, shared, hooks, save_student_to=student_dir)
    except optuna.TrialPruned as pruned:
        trial.set_user_attr("prune_reason", str(pruned))
        run.finish({"prune_reason": str(pruned)}, "pruned", str(pruned))
        raise
    except BaseException as error:  # recorded, then re-raised for Optuna to mark FAIL
        reason = failure_reason(error)
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("traceback", "".join(traceback.format_exception(error)[-3:])[-2000:])
        run.finish({"fail_reason": reason}, "failed", reason)
        raise
    stored = result.stored_fields()
    for key, value in stored.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("student_path", str(student_dir))
    for key, value in constraint_violations(study_config, stored).items():
        trial.set_constraint(key, value)
    run.finish(stored, "complete")
    return objective_values(study_config, stored)


def _refuse_over_budget(trial: optuna.Trial, study_config: StudyConfig, trial_config: TrialConfig,
                        shared: SharedArtifacts) -> None:
    """Prune, untrained, a student whose architecture breaks a compute constraint; the
    constraint values mark it infeasible, so the sampler learns to avoid its region."""
    if not study_config.objectives.constraints:
        return
    cost = untrained_cost(study_config, trial_config, shared)
    over = over_budget(study_config, cost)
    for metric, excess in over.items():
        trial.set_constraint(metric, excess)
    if over:
        raise optuna.TrialPruned("over budget before training: " + ", ".join(
            f"{metric} {getattr(cost, metric):g} > {study_config.objectives.constraints[metric]:g}"
            for metric in over))


class SurplusTrial(RuntimeError):
    """Workers raced past the asked total; this trial is not run (and not counted)."""


def _refuse_surplus(trial: optuna.Trial, n_trials: int) -> None:
    # Trial numbers are given out atomically by the storage, so counting the live trials
    # numbered below this one decides exactly which trial is one too many.
    live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ahead = sum(t.number < trial.number and t.state in live
                for t in search_trials(trial.study))
    if ahead >= n_trials:
        trial.set_user_attr("fail_reason", "surplus")
        raise SurplusTrial(f"the study already has {n_trials} trials finished or running")


def failure_reason(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, Diverged):
        return "diverged"
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower():
        return "out of memory"
    return f"{type(error).__name__}: {str(error)[:300]}"


def keep_front_students(study: optuna.Study, run_dir: Path) -> int:
    """Delete saved students of finished trials on neither the study's own front (its
    objectives and constraints) nor the printed one (dev accuracy against FLOPs, search
    trials only); returns the printed front's size."""
    # Finished first: a trial that finishes between the two reads is kept, not deleted.
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    best = {t.number for t in study.best_trials if not is_repeat(t)}
    printed = set(pareto_front(search_rows(study_frame(study))).get("trial", []))
    front = best | printed
    folder = run_dir / "students"
    for path in folder.glob("trial-*") if folder.is_dir() else ():
        number = int(path.name.removeprefix("trial-"))
        if number in finished and number not in front:
            shutil.rmtree(path, ignore_errors=True)
    return len(printed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available; use cpu or auto")
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 where bf16 autocast does not apply
        torch.backends.cudnn.allow_tf32 = True
    elif name != "cpu":
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device(name)


def _report_location(report: Report | None, study_name: str, storage_url: str, run_dir: Path,
                     study_config: StudyConfig) -> None:
    if report is not None:
        print(render_text(report))
    storage_arg = "" if storage_url == DEFAULT_STORAGE else f" --storage '{redact_url(storage_url)}'"
    print(f"study {study_name!r} is stored in {redact_url(storage_url)}; its front's students "
          f"in {run_dir / 'students'}")
    print(f"Pareto report: python -m analysis.pareto --study-name {study_name}{storage_arg}")
    sync = tracking.sync_command(run_dir, study_config.tracking.wandb)
    if sync:
        print(f"upload the offline W&B runs: {sync}")


def _quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    optuna.logging.set_verbosity(optuna.logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
