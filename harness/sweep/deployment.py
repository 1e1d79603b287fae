"""The study's students as they are shipped (``harness.deploy``): within each trial when
the study asks for every trial (``deploy.export: every-trial``; the fields are then the
trial's, and ``int8_bytes`` may be an objective), and once the study is over for the
front's saved students, timed by the one process left running.

A finished trial's user attributes cannot change in Optuna's storages, so the front's
deployment is recorded as the study attribute ``deployed:<trial number>`` (the fields, or
``deploy_error`` with the reason); ``analysis.frame`` puts those fields on the trial's row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from tqdm.auto import tqdm

from harness.config import RESIZED_TEACHER, StudyConfig
from harness.data import TokenizedData
from harness.deploy import INT8_FILE, deploy_student, time_deployed_student
from harness.onnx_export import ExportError
from harness.shared import SharedArtifacts
from harness.sweep.confirm import front_numbers
from harness.sweep.study_record import DEPLOYED

log = logging.getLogger("harness.study")


def deploy_in_trial(study_config: StudyConfig, shared: SharedArtifacts, source: str,
                    folder: Path) -> dict:
    """The deployment fields of a trial's saved student, untimed (peers may be training);
    ``{"deploy_error": reason}`` for one that cannot be deployed."""
    return _deploy(study_config, student_text(shared, source), folder, latency_repeats=None)


def deploy_front(study: optuna.Study, study_config: StudyConfig,
                 shared: SharedArtifacts) -> None:
    """Deploy and time every saved front student without a record yet. Call it when no
    trial runs on this machine: the latency figures assume the cores are idle."""
    if study_config.deploy.export == "none":
        return
    kept, _ = front_numbers(study)
    recorded = study.user_attrs
    waiting = [trial for trial in study.get_trials(deepcopy=False, states=(
        optuna.trial.TrialState.COMPLETE,)) if trial.number in kept
        and DEPLOYED + str(trial.number) not in recorded]
    for trial in tqdm(waiting, desc="deploy front students", unit="student",
                      disable=not waiting):
        folder = Path(trial.user_attrs.get("student_path", ""))
        if not (folder / "logits.safetensors").is_file():
            log.info("trial %d: its student is not on this machine (%s); not deployed here",
                     trial.number, folder)
            continue
        text = student_text(shared, trial.user_attrs.get("student_source", RESIZED_TEACHER))
        repeats = study_config.deploy.latency_repeats
        if "int8_bytes" in trial.user_attrs and (folder / INT8_FILE).is_file():
            fields = time_deployed_student(folder, text.seq_len, repeats)  # exported in-trial
        else:
            fields = _deploy(study_config, text, folder, repeats)
        study.set_user_attr(DEPLOYED + str(trial.number), fields)
        if "deploy_error" in fields:
            log.info("trial %d: not deployed: %s", trial.number, fields["deploy_error"])


def _deploy(study_config: StudyConfig, text: TokenizedData, folder: Path,
            latency_repeats: int | None) -> dict:
    try:
        return deploy_student(folder, text, study_config.pipeline.eval_batch_size,
                              latency_repeats)
    except ExportError as error:
        return {"deploy_error": str(error)}


def student_text(shared: SharedArtifacts, source: str) -> TokenizedData:
    """The data as the student of ``source`` reads it (a pre-trained student may have its
    own tokenizer)."""
    return shared.text if source == RESIZED_TEACHER else shared.pretrained_students[source].text
