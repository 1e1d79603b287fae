"""The study's command line (``python -m harness.study``): sample distillation settings
and student sizes, run each trial, record it in an Optuna storage and (optionally) W&B.

    python -m harness.study --n-trials 50                      # studies/default.yaml, offline
    python -m harness.study --study studies/smoke.yaml --n-trials 3 --wandb disabled
    python -m harness.study --storage postgresql://user@host/db  # several workers, one study

``--n-trials N`` means "until the study holds N finished (complete or pruned) trials":
re-running an interrupted command completes the study, and workers sharing a storage
share one total. Then the front is confirmed over seeds (``--confirm-seeds N`` or the
study's ``confirm.seeds``; ``harness.sweep.confirm``): those repeats are not counted in N.
On a CPU the work is shared by one worker per core (at most 4), the driver included
(``--workers``, ``harness.sweep.local_workers``). Bad input exits with code 2 before any
training; Ctrl-C marks the running trials failed ("interrupted") and exits with 130;
SIGTERM (a scheduler's preemption) does too ("interrupted (SIGTERM)"), queues the trials
again at once for any worker and exits with 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import logging
import signal
import sys
from pathlib import Path

import optuna
import torch

from harness.artifacts import ArtifactLockTimeout, cache_root
from harness.config import ConfigError, StudyConfig
from harness.data import DataError
from harness.models import ModelError
from harness.generative_shared import GenerativeShared, prepare_generative_shared
from harness.shared import SharedArtifacts, prepare_shared
from harness.study_file import check_study_name, load_study_config
from harness.sweep import tracking
from harness.sweep.deployment import deploy_front
from harness.sweep.driver import StudyAborted, run_study, work_left
from harness.sweep.local_workers import (LOCAL_WORKER_FLAG, MAX_AUTO_WORKERS, plan_workers,
                                         start_local_workers, stop, wait_for)
from harness.sweep.report import report_study
from harness.sweep.storage import (DEFAULT_STORAGE, StorageError, journal_path, open_storage,
                                   redact_url)
from harness.sweep.study_record import open_study, run_folder
from harness.sweep.workers import Terminated, raise_on_sigterm
from harness.train import Diverged

log = logging.getLogger("harness.study")


def default_study_file() -> Path:
    """studies/default.yaml: installed as package data ``harness.studies`` (pyproject.toml),
    so the main job finds it from any folder after a regular ``pip install .``."""
    try:
        return Path(str(importlib.resources.files("harness.studies") / "default.yaml"))
    except ModuleNotFoundError:  # a source checkout on sys.path, never installed
        return Path(__file__).resolve().parents[2] / "studies" / "default.yaml"


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
                        help="fresh runs per front configuration, beside its search run "
                             "(default: the study's confirm.seeds; 0: no confirmation)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a study-file value, e.g. --set pipeline.distill.epochs=1")
    parser.add_argument("--heartbeat-seconds", type=_at_least(1), default=60,
                        help="RDB storages: a worker silent for twice this is declared dead")
    parser.add_argument("--workers", type=_at_least(1), metavar="K",
                        help="worker processes on this machine sharing the study, each with "
                             "its share of the CPU threads (default: on a CPU one per core, "
                             f"at most {MAX_AUTO_WORKERS}; on a GPU 1)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="build the study's shared artifacts (tokens, teacher, its logits, "
                             "importance scores, transfer set) and its storage record, then "
                             "exit 0 without a trial: a scheduler's setup step before workers")
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
    raise_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    _quiet_libraries()
    try:
        prepared = prepare(args)
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
    except KeyboardInterrupt as interruption:
        print("\ninterrupted before the first trial; the cache holds only complete artifacts",
              file=sys.stderr)
        return exit_code(interruption)
    if args.prepare_only:
        built = ", ".join(f"{kind} {'reused' if reused else 'built'}"
                          for kind, reused in prepared.shared.reused.items())
        print(f"prepared study {prepared.study.study_name!r} ({built}, in {cache_root()}); "
              "no trial was run")
        return 0
    return run(prepared, args, sys.argv[1:] if argv is None else argv)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What a run needs once its input is known to be good."""

    study: optuna.Study
    study_config: StudyConfig
    shared: SharedArtifacts | GenerativeShared
    storage_url: str


def prepare(args: argparse.Namespace) -> Prepared:
    """The edge: the study file with its overrides, the device, the storage, the data and
    the teacher; every bad input raises here, before any student trains."""
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
    # A database is reached before the (possibly hours-long) teacher fine-tune; a journal
    # file is only created once the data and the teacher are known to be good.
    storage = (None if journal_path(storage_url)
               else open_storage(storage_url, heartbeat_seconds=args.heartbeat_seconds))
    prepare = prepare_generative_shared if study_config.generative else prepare_shared
    shared = prepare(study_config, device, cache_root())
    study = open_study(storage or open_storage(storage_url), study_name, study_config)
    return Prepared(study, study_config, shared, storage_url)


def run(prepared: Prepared, args: argparse.Namespace, argv: list[str]) -> int:
    """Search and confirm with this process and the local workers it starts; the driver
    (not a local worker) reports the study at the end, whatever stopped it."""
    study, study_config, shared = prepared.study, prepared.study_config, prepared.shared
    run_dir = run_folder(study)
    plan = plan_workers(args.workers, shared.device, torch.get_num_threads())
    torch.set_num_threads(plan.threads)
    helpers = []
    interrupted: KeyboardInterrupt | None = None
    finished = False
    try:
        if plan.workers > 1 and work_left(study, study_config, args.n_trials):
            helpers = start_local_workers(argv, plan, run_dir / "workers")
            log.info("%d workers of %d thread(s) each; the others write to %s/worker-N.log",
                     plan.workers, plan.threads, run_dir / "workers")
        context = {"storage": redact_url(prepared.storage_url), "device": str(shared.device)}
        run_study(study, study_config, shared, args.n_trials, run_dir, context,
                  progress=not args.local_worker)
        finished = True
    except KeyboardInterrupt as interruption:
        interrupted = interruption
        print("\ninterrupted: the running trial is recorded as failed" + (
            " and queued again for any worker" if isinstance(interruption, Terminated) else "")
            + "; re-run the same command to complete the study", file=sys.stderr)
        return exit_code(interruption)
    except StudyAborted as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        terminated = isinstance(interrupted, Terminated)
        if not finished:  # the driver's end is the run's end
            stop(helpers, signal.SIGTERM if terminated else signal.SIGINT)
        problems = wait_for(helpers)
        for problem in problems if finished else ():
            print(f"error: {problem}", file=sys.stderr)
        # The driver deploys the front once its workers are gone, so that nothing else
        # runs while the students are timed; it reports the study once, for all its
        # workers; not within a scheduler's grace period after SIGTERM (the next run does).
        # ONNX deployment is for classifiers: a generative study's front is not exported.
        if (finished and not problems and not args.local_worker
                and not study_config.generative):
            deploy_front(study, study_config, shared)
        if not args.local_worker and not terminated:
            report_study(study, study_config, prepared.storage_url, run_dir,
                         log_to_wandb=interrupted is None)
    return 1 if problems else 0


def exit_code(interruption: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended."""
    return 128 + (signal.SIGTERM if isinstance(interruption, Terminated) else signal.SIGINT)


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


def _quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
