"""Weights & Biases tracking: one W&B run per trial, one per study invocation.

The only module that imports wandb, and only inside functions: importing this module is
cheap, and mode ``disabled`` never imports wandb or writes a file. W&B trouble (a full
disk, a network error, wandb missing) is logged as a warning and never reaches the trial.

    mode = resolve_mode("auto")            # "online" when logged in, else "offline"
    run = start_trial_run(mode, project, entity, tags, run_dir, study_name,
                          trial_number, job_type="trial", config=trial_config)
    run.log({"kd/loss": 0.4, "kd/loss_kd": 0.3, "kd/loss_ce": 0.1, "kd/lr": 1e-4}, step=10)
    run.log({"distill/evaluation": 1, "distill/select_accuracy": 0.81})
    run.finish(summary=stored_fields, state="complete")   # or "pruned"/"failed", reason
    trial.set_user_attr("wandb_run_id", run.run_id)       # (caller) joins Optuna and W&B
    log_study_front(mode, project, entity, tags, run_dir, study_name, front, png_path)
    print(sync_command(run_dir, mode))                    # offline: how to upload later

Metric names are ``<phase>/<name>``. A ``step`` passed to ``log`` is the phase's own
counter and is logged as ``<phase>/step``, that phase's x-axis; W&B's own ``_step`` only
grows, so a phase that restarts its count at 0 loses no rows. Each run is finished before
the next starts; several processes may share ``run_dir`` (each run has its own
``wandb/<offline->run-<time>-<id>`` folder). An online run that cannot start is started
offline instead. Config and summary pass through ``redact_config`` (no secrets in W&B).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
from pathlib import Path
from typing import Any

from harness.config import ConfigError, TrackingConfig
from harness.sweep.storage import redact_url

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_PROJECT = "kd-harness"
# W&B's own names for its modes (it also reads "dryrun" and "run").
WANDB_MODE_ALIASES = {"online": "online", "offline": "offline", "disabled": "disabled",
                      "dryrun": "offline", "run": "online"}
TRIAL_STATES = ("complete", "pruned", "failed")
# wandb.Settings of every run. Quiet, and no copy of the process's stdout/stderr in each
# run. No system-metric sampler, metadata, git or code capture: each costs startup time,
# and metadata records sys.argv, which may hold a database URL. Finishing an online run
# waits for its upload; after finish_timeout W&B gives up (the data stays on disk for
# `wandb sync`), so a network outage cannot stall the study.
WANDB_SETTINGS = dict(silent=True, console="off", x_disable_stats=True, x_disable_meta=True,
                      x_disable_machine_info=True, disable_git=True, save_code=False,
                      x_save_requirements=False, finish_timeout=60.0)

# Word-bounded "token" so that tokenizer / max_tokens are kept.
_SECRET_KEY = re.compile(r"password|passwd|api_?key|secret|(^|[^a-z])token($|[^a-z])", re.I)
_log = logging.getLogger(__name__)


def resolve_tracking(config: TrackingConfig) -> TrackingConfig:
    """The study's tracking settings, with W&B's own environment filling what the study file
    and the command line leave open: ``wandb: auto`` takes ``$WANDB_MODE`` (else online when
    logged in, offline otherwise), no ``project`` takes ``$WANDB_PROJECT`` (else
    "kd-harness"), no ``entity`` ``$WANDB_ENTITY``. An explicit value always wins."""
    return dataclasses.replace(
        config, wandb=resolve_mode(config.wandb),
        project=config.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=config.entity or os.environ.get("WANDB_ENTITY") or None)


def wandb_dir(run_dir: Path) -> Path:
    """Where a study's W&B runs go: ``$WANDB_DIR`` if set, else the study's run folder."""
    return Path(os.environ["WANDB_DIR"]) if os.environ.get("WANDB_DIR") else Path(run_dir)


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``$WANDB_MODE`` if set, else ``online`` if W&B credentials are
    configured, else ``offline``.

    Other valid modes pass through; anything else raises ConfigError. The check reads only
    local configuration (no network, no prompt).
    """
    if mode not in MODES:
        raise ConfigError(f"tracking.wandb: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        environment = os.environ["WANDB_MODE"]
        if environment not in WANDB_MODE_ALIASES:
            raise ConfigError(f"WANDB_MODE: expected one of {', '.join(WANDB_MODE_ALIASES)}, "
                              f"got {environment!r}")
        return WANDB_MODE_ALIASES[environment]
    try:
        return "online" if _has_credentials() else "offline"
    except Exception as error:  # a malformed key or a broken install: stay local
        _log.warning("W&B credentials unreadable (%s: %s); logging offline",
                     type(error).__name__, error)
        return "offline"


def _has_credentials() -> bool:
    """Whether wandb would find credentials: its own lookup with prompt and verify off."""
    import wandb
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth
    except ImportError:  # older wandb: api_key reads env, netrc and settings offline
        return bool(wandb.api.api_key)
    # wbauth is internal, but the public wandb.login(prompt=False) saves settings files
    # and, unless silent, asks the server who is logged in.
    settings = wandb_setup.singleton().settings
    host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
    auth = wbauth.authenticate_session(host=host, source="kd-harness", prompt=False,
                                       verify=False, update_session=False)
    return auth is not None


class TrialRun:
    """One trial's W&B run; every method is a no-op once W&B failed or when disabled."""

    def __init__(self, run: Any = None, label: str = "run") -> None:
        self._run = run
        self._label = label
        self._phases: set[str] = set()
        self.run_id: str | None = run.id if run is not None else None

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """One history row; ``step`` (if given) becomes each phase's ``<phase>/step``."""
        if self._run is not None:
            self._guard("log", lambda: self._log_row(dict(metrics), step))

    def _log_row(self, row: dict[str, Any], step: int | None) -> None:
        for phase in sorted({key.split("/", 1)[0] for key in row if "/" in key}):
            if phase not in self._phases:
                # Rows of this phase without a step (epoch records) get its last step.
                self._run.define_metric(f"{phase}/step")
                self._run.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
                self._phases.add(phase)
            if step is not None:
                row[f"{phase}/step"] = step
        self._run.log(row)

    def finish(self, summary: dict[str, Any], state: str, reason: str | None = None) -> None:
        """Store ``summary`` plus ``trial_state`` (and ``state_reason``), then end the run.

        A failed trial ends with exit code 1 (W&B state "failed"); a pruned one ends
        normally, since the pruner stopping it is not an error, and says so in summary.
        """
        if state not in TRIAL_STATES:
            raise ValueError(f"trial state {state!r}: expected one of {TRIAL_STATES}")
        if self._run is None:
            return
        final = {**summary, "trial_state": state}
        if reason is not None:
            final["state_reason"] = reason
        run = self._run

        def close() -> None:
            run.summary.update(redact_config(final))
            run.finish(exit_code=1 if state == "failed" else 0)

        self._guard("finish", close)
        self._run = None

    def _guard(self, action: str, call: Any) -> None:
        try:
            call()
        except Exception as error:
            _warn(action, self._label, error)
            run, self._run = self._run, None
            _abandon(run)


def start_trial_run(mode: str, project: str, entity: str | None, tags: tuple[str, ...],
                    run_dir: Path, study_name: str, trial_number: int, job_type: str,
                    config: dict[str, Any]) -> TrialRun:
    """Start trial ``trial_number``'s run (name ``trial-<n>``, group = study), secrets removed."""
    name = f"trial-{trial_number}"
    run = _init_run(mode, run_dir, project=project, entity=entity, tags=list(tags),
                    name=name, group=study_name, job_type=job_type,
                    config=redact_config(config))
    return TrialRun(run, name)


def log_study_front(mode: str, project: str, entity: str | None, tags: tuple[str, ...],
                    run_dir: Path, study_name: str, front: Any,
                    figure_path: Path | None) -> str | None:
    """Log the Pareto ``front`` (a DataFrame) and its plot in run ``study-<name>``.

    Returns the run id, or None when disabled or W&B failed. A W&B failure is a warning.
    """
    name = f"study-{study_name}"
    run = _init_run(mode, run_dir, project=project, entity=entity, tags=list(tags),
                    name=name, group=study_name, job_type="study",
                    config={"study_name": study_name})
    if run is None:
        return None
    try:
        import wandb
        row = {"pareto_front": wandb.Table(dataframe=front.map(redact_config))}
        if figure_path is not None:
            row["accuracy_vs_flops"] = wandb.Image(str(figure_path))
        run.log(row)
        run.finish()
        return run.id
    except Exception as error:
        _warn("study logging", name, error)
        _abandon(run)
        return None


def sync_command(run_dir: Path, mode: str) -> str | None:
    """The shell command that uploads the offline runs under ``run_dir``, if any.

    Always given in offline mode; in online mode only if a run fell back to offline.
    """
    runs = wandb_dir(run_dir) / "wandb"
    if mode == "offline" or (mode == "online" and any(runs.glob("offline-run-*"))):
        return f"wandb sync {shlex.quote(str(runs))}/offline-run-*"
    return None


def redact_config(config: Any) -> Any:
    """A copy with secrets masked: non-numeric values of secret-named keys, URL passwords."""
    if isinstance(config, dict):
        return {key: "***" if _is_secret(key, value) else redact_config(value)
                for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return type(config)(redact_config(value) for value in config)
    if isinstance(config, str) and "://" in config:
        return redact_url(config)
    return config


def _is_secret(key: Any, value: Any) -> bool:
    # Numbers (pad_token_id) and unset values are no secret whatever their key says.
    if value is None or isinstance(value, (bool, int, float)):
        return False
    return bool(_SECRET_KEY.search(str(key)))


def _init_run(mode: str, run_dir: Path, **init_args: Any) -> Any:
    """A started wandb run, or None when disabled or when W&B fails to start.

    An online run that cannot start (network down) is started offline instead, so the
    trial's record stays on disk for `wandb sync`.
    """
    mode = resolve_mode(mode)
    if mode == "disabled":
        return None
    try:
        import wandb
        folder = wandb_dir(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return wandb.init(mode=mode, dir=str(folder), reinit="finish_previous",
                          settings=wandb.Settings(**WANDB_SETTINGS), **init_args)
    except Exception as error:
        if mode != "online":
            _warn("init", init_args["name"], error)
            return None
        _warn("init", init_args["name"], error, "continuing offline")
        return _init_run("offline", run_dir, **init_args)


def _warn(action: str, label: str, error: BaseException,
          then: str = "continuing without W&B") -> None:
    _log.warning("W&B %s failed for %s (%s: %s); %s",
                 action, label, type(error).__name__, error, then)


def _abandon(run: Any) -> None:
    """Best effort to close a run after a failure, so it is not left open."""
    try:
        if run is not None:
            run.finish(exit_code=1)
    except Exception:  # already broken; the warning has been logged
        pass
