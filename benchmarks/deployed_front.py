"""Deploy and time a study's saved front students now, alone on the machine, and print the
deployed front: what ``python -m harness.study`` does at the end of a study, for a study
that is stopped before its end (or deployed under ``deploy.export: none``).

    python benchmarks/deployed_front.py --study studies/default.yaml [--study-name NAME]
        [--storage URL] [--set key.path=value ...]

Run it when no trial of the study runs on this machine: the latency figures assume idle
cores. Students already deployed keep their record.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch
import transformers

from analysis.frame import complete_trials, load_study, study_frame
from analysis.report import build_report, deployed_rows, deployed_table, text_table
from analysis.seeds import search_rows
from analysis.stats import add_intervals
from harness.artifacts import cache_root
from harness.config import DeployConfig
from harness.shared import prepare_shared
from harness.study_file import load_study_config
from harness.sweep.deployment import deploy_front


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=Path("studies/default.yaml"))
    parser.add_argument("--study-name")
    parser.add_argument("--storage")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    transformers.logging.set_verbosity_error()  # the packaged teacher's new head, reported
    transformers.utils.logging.disable_progress_bar()
    config = load_study_config(args.study, args.set)
    if config.deploy.export == "none":
        config = dataclasses.replace(config, deploy=DeployConfig(
            latency_repeats=config.deploy.latency_repeats))
    study = load_study(args.study_name or config.name, args.storage)
    torch.set_num_threads(1)
    # The tokens and the teacher come from the cache the study built.
    deploy_front(study, config, prepare_shared(config, torch.device("cpu"), cache_root()))
    frame = study_frame(study)
    report = build_report(frame)
    frame = add_intervals(complete_trials(search_rows(frame)))
    deployed = frame[frame["int8_dev_accuracy"].notna()].sort_values("flops_per_example")
    print(f"every deployed student of {study.study_name} (the FLOPs front's, cheapest first):")
    print(text_table(*deployed_table(deployed)))
    print("deployed front (int8 dev accuracy against int8 latency):")
    print(text_table(*deployed_rows(report)))
    for trial, reason in report.not_deployed:
        print(f"trial {trial}: not deployed: {reason}")


if __name__ == "__main__":
    main()
