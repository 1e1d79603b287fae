"""A study's record in its storage: created once, with the configuration it was created
from; opened by every later worker against that configuration; and the folder of its files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import optuna

from harness.config import ConfigError, StudyConfig
from harness.search import directions, make_pruner, make_sampler
from harness.storage import journal_path, redact_url

log = logging.getLogger(__name__)


def run_folder(study: optuna.Study, storage_url: str) -> Path:
    """``runs/<study-name>-<key>``: saved students and W&B runs of this study alone.

    The key hashes the storage and the study's id in it, so a study of the same name in
    another storage (or recreated in this one) never deletes or overwrites these students.
    """
    path = journal_path(storage_url)
    where = str(path.resolve()) if path is not None else redact_url(storage_url)
    # study._study_id: Optuna has no public id, and the name alone is what may repeat.
    key = hashlib.sha256(f"{where}\n{study._study_id}".encode()).hexdigest()[:8]
    return Path("runs") / f"{study.study_name}-{key}"


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
        # Its creator writes the fingerprint just after creating it (we may be between).
        deadline = time.monotonic() + fingerprint_wait_seconds
        while (stored := study.user_attrs.get("config_sha256")) is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        if stored is None:
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
        # Last: once the others see it, everything the creator records is there.
        study.set_user_attr("config_sha256", fingerprint)
        seed = study_config.seed
    # Logged, so that a run whose sampler drew its own seed can still be replayed.
    log.info("study %s: sampler seed %d", study_name, seed)
    return optuna.load_study(study_name=study_name, storage=storage,
                             sampler=make_sampler(study_config, seed),
                             pruner=make_pruner(study_config))


def config_fingerprint(study_config: StudyConfig) -> str:
    """What makes trials comparable: everything but tracking and the description."""
    fields = dataclasses.asdict(dataclasses.replace(study_config, description=""))
    fields.pop("tracking")
    return hashlib.sha256(json.dumps(_jsonable(fields), sort_keys=True).encode()).hexdigest()


def _jsonable(value):
    return json.loads(json.dumps(value, default=list))
