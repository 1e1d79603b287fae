"""A study's record in its storage: created once, with the configuration it was created
from; opened by every later worker against that configuration; and the folder of its files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path

import optuna

from harness.config import (RESIZED_TEACHER, ConfigError, GenerationConfig, ScheduleConfig,
                            StudyConfig, TransferConfig)
from harness.sweep.search import directions, make_pruner, make_sampler

log = logging.getLogger(__name__)

RUN_FOLDER = "run_folder"  # the study user attribute that names it
# + a trial's number: the study attribute of its deployment (harness.sweep.deployment)
DEPLOYED = "deployed:"


def run_folder(study: optuna.Study) -> Path:
    """``runs/<study-name>-<8 hex>``: saved students and W&B runs of this study alone.

    Its creator draws the suffix once and records it in the study, so every worker uses
    the same folder whatever path or URL spelling reaches the storage, and a study of the
    same name in another storage (or recreated in this one) never shares it.
    """
    return Path("runs") / study.user_attrs[RUN_FOLDER]


def open_study(storage, study_name: str, study_config: StudyConfig,
               fingerprint_wait_seconds: float = 30.0) -> optuna.Study:
    """Create or load the study; one made from another configuration is refused.

    Only the worker that creates the study records its configuration, so workers started
    together cannot overwrite each other's; the others compare theirs with it. The
    creator's sampler is seeded with the study's seed, so a study run by one worker is
    reproducible; any other worker (a second one, a resumed run) draws a seed of its own,
    so that no two replay the same random start-up trials.
    """
    fingerprint = config_fingerprint(study_config)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name,
                                    directions=directions(study_config))
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage)
        # Its creator writes the fingerprint last, just after creating it (we may be between).
        deadline = time.monotonic() + fingerprint_wait_seconds
        while (stored := study.user_attrs.get("config_sha256")) is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        if stored is None or RUN_FOLDER not in study.user_attrs:
            raise ConfigError(f"study {study_name!r} records no configuration (it was not "
                              "created by harness.study, or its first worker died while "
                              "creating it); use another --study-name")
        if stored != fingerprint:
            raise ConfigError(f"study {study_name!r} was created from another configuration "
                              "(study file, --set or --seed differ, or a kd-harness update "
                              "changed the study-file schema); use another --study-name")
        seed = int.from_bytes(os.urandom(4), "little")
    else:
        study.set_user_attr("objectives", list(study_config.objectives.metrics))
        study.set_user_attr("config", _jsonable(dataclasses.asdict(study_config)))
        study.set_user_attr(RUN_FOLDER, f"{study_name}-{uuid.uuid4().hex[:8]}")
        # Last: once the others see it, everything the creator records is there.
        study.set_user_attr("config_sha256", fingerprint)
        seed = study_config.seed
    # Logged, so that a run whose sampler drew its own seed can still be replayed.
    log.info("study %s: sampler seed %d", study_name, seed)
    return optuna.load_study(study_name=study_name, storage=storage,
                             sampler=make_sampler(study_config, seed),
                             pruner=make_pruner(study_config))


def config_fingerprint(study_config: StudyConfig) -> str:
    """What makes trials comparable: everything but tracking, the description, how many
    seeds confirm the front (a finished study may be confirmed, or confirmed further) and
    how its students are deployed (a finished study's front may be deployed later)."""
    fields = dataclasses.asdict(dataclasses.replace(study_config, description=""))
    fields.pop("tracking")
    fields.pop("confirm")
    fields.pop("deploy")
    for path, before in _ADDED_FIELDS:  # at the value that means "as before"
        *parents, name = path.split(".")
        holder = functools.reduce(dict.__getitem__, parents, fields)
        if holder[name] == before:
            del holder[name]
    return hashlib.sha256(json.dumps(_jsonable(fields), sort_keys=True).encode()).hexdigest()


# Fields added to the study-file schema since studies were first fingerprinted, with the
# value that keeps the behaviour from before them: a study created before a field existed
# keeps its fingerprint (and resumes) while the field stays at that value.
_ADDED_FIELDS = (
    ("data.text_columns", None), ("student.source", RESIZED_TEACHER),
    ("teacher.schedule", dataclasses.asdict(ScheduleConfig())),
    ("pipeline.schedule", dataclasses.asdict(ScheduleConfig())), ("pipeline.lr_rule", "fixed"),
    # The transfer section's later fields first, so that the section compares as it was.
    ("transfer.online", False), ("transfer.neighbour_prob", 0.0), ("transfer.neighbours", 15),
    ("transfer", {name: value for name, value in dataclasses.asdict(TransferConfig()).items()
                  if name not in ("neighbour_prob", "neighbours", "online")}),
    ("pipeline.budget", "matched"),
    ("data.group_column", None), ("data.select_fraction", 0.0),
    ("teacher.fine_tune", True), ("teacher.label_map", None), ("teacher.ensemble", 1),
    ("task", "classification"), ("data.prompt_column", "prompt"),
    ("data.target_column", "target"), ("generation.kd_level", "word"),
    ("generation", {name: value for name, value in dataclasses.asdict(GenerationConfig()).items()
                    if name != "kd_level"}),
)


def _jsonable(value):
    return json.loads(json.dumps(value, default=list))
