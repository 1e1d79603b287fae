"""The end of a run: the study's Pareto report printed (and, with W&B on, logged as one
study-level run), where the study and its students are, and how to see the report again.
The sweep's one way into ``analysis``, imported when the run reports: matplotlib and
scipy are then loaded once, by the driver, not by every worker and every ``--help``.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from harness.artifacts import write_files
from harness.config import StudyConfig
from harness.sweep import tracking
from harness.sweep.storage import DEFAULT_STORAGE, redact_url

# The W&B front table's columns (the printed and file reports have their own layout).
FRONT_COLUMNS = ("dev_accuracy", "test_accuracy", "flops_per_example", "params", "T", "T_s",
                 "alpha", "num_layers", "hidden_size", "kd_gain")


def report_study(study: optuna.Study, study_config: StudyConfig, storage_url: str,
                 run_dir: Path, log_to_wandb: bool) -> None:
    """Print the report of ``python -m analysis.pareto`` (none before a complete trial) and
    where everything is; log the front to W&B when asked and tracking is on."""
    from analysis.frame import study_frame
    from analysis.plots import plot_front, png_bytes
    from analysis.report import NoCompleteTrials, build_report, render_text

    frame = study_frame(study)
    # A generative model's cost where it is deployed is per generated token.
    x = "flops_per_token" if study_config.generative else "flops_per_example"
    try:
        report = build_report(frame, x=x)
    except NoCompleteTrials:
        report = None
    tracking_config = study_config.tracking
    if report is not None and log_to_wandb and tracking_config.wandb != "disabled":
        write_files(run_dir, {"pareto.png": png_bytes(plot_front(frame, x=x))})
        tracking.log_study_front(tracking_config.wandb, tracking_config.project,
                                 tracking_config.entity, tracking_config.tags, run_dir,
                                 report.study_name, report.front[["trial", *FRONT_COLUMNS]],
                                 run_dir / "pareto.png")
    if report is not None:
        print(render_text(report))
    report_args = ("" if storage_url == DEFAULT_STORAGE
                   else f" --storage '{redact_url(storage_url)}'")
    report_args += "" if x == "flops_per_example" else f" --x {x}"
    print(f"study {study.study_name!r} is stored in {redact_url(storage_url)}; its front's "
          f"students in {run_dir / 'students'}")
    print(f"Pareto report: python -m analysis.pareto --study-name {study.study_name}{report_args}")
    sync = tracking.sync_command(run_dir, tracking_config.wandb)
    if sync:
        print(f"upload the offline W&B runs: {sync}")
