"""The trial's student, resolved once from its configuration: its shape, the data as it
reads it, where its weights and its baseline's come from, each phase's learning rate and
how to build it. The one place that asks whether the student is the resized teacher or a
pre-trained checkpoint (``student.source``); every stage after it reads the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from harness.config import RESIZED_TEACHER, ModelShape, StudyConfig, TrialConfig
from harness.data import TokenizedData
from harness.models import (as_classifier, build_student, load_pretrained, student_init,
                            student_shape)
from harness.shared import PretrainedStudent, SharedArtifacts

BASELINE = "baseline"  # student.init: the distilled arm starts from its trained baseline


@dataclass(frozen=True)
class LearningRates:
    """Each phase's learning rate, ``pipeline.lr_rule`` applied."""

    baseline: float
    intermediate: float
    distill: float
    finetune: float


@dataclass(frozen=True)
class Student:
    """One trial's student, as every stage of the trial reads it."""

    shape: ModelShape  # heads and FFN width resolved (a pre-trained checkpoint's own)
    text: TokenizedData  # the data as the student reads it (its own tokenizer's)
    # Where the distilled arm starts: the init it actually gets (``models.student_init``;
    # "pretrained" for a checkpoint), or BASELINE: the trained baseline's weights.
    init: str
    baseline_init: str  # where the label-only baseline starts (never BASELINE)
    lr: LearningRates
    seed: int
    pretrained: PretrainedStudent | None  # None: the resized teacher
    teacher: PreTrainedModel  # before fine-tuning, on CPU: what resized students copy
    # The pre-trained teacher's importance scores and their artifact key, for teacher-pruned
    # students (None where no trial of the study may be one).
    importance: dict[str, torch.Tensor] | None
    importance_key: str | None
    label_names: tuple[str, ...]

    def baseline_origin(self) -> dict:
        """What the baseline's cache key needs beyond its shape, init and settings: the
        checkpoint (and tokenizer) a pre-trained student comes from, or the teacher's
        importance scores a teacher-pruned one is cut by."""
        if self.pretrained is not None:
            return {"init_from": self.pretrained.identity, "tokenizer": self.text.key}
        if self.baseline_init == "teacher-pruned":
            return {"init_from": "pre-trained teacher", "importance": self.importance_key}
        return {"init_from": "pre-trained teacher"}

    def build(self, init: str) -> PreTrainedModel:
        """The untrained student, on CPU: the checkpoint with a fresh, seeded head, or the
        resized teacher started as ``init`` asks (``models.build_student``)."""
        if self.pretrained is not None:
            return as_classifier(load_pretrained(self.pretrained.source, "student.source",
                                                 self.label_names, self.seed,
                                                 self.pretrained.revision),
                                 self.pretrained.text.pad_id)
        return build_student(self.teacher, self.shape, init, self.seed, self.importance)[0]


def resolve_student(study_config: StudyConfig, trial_config: TrialConfig,
                    shared: SharedArtifacts) -> Student:
    """The student ``trial_config`` asks for, and its baseline's start: the student's own
    init, except where the student starts from that baseline (then the teacher's layers,
    where they fit)."""
    if trial_config.student_source != RESIZED_TEACHER:
        pretrained = shared.pretrained_students[trial_config.student_source]
        shape, text = pretrained.shape, pretrained.text
        baseline_init = "pretrained"
        init = BASELINE if trial_config.init == BASELINE else "pretrained"
    else:
        pretrained, text = None, shared.text
        shape = student_shape(shared.teacher, trial_config.num_layers, trial_config.hidden_size,
                              study_config.student.head_dim, trial_config.intermediate_size)
        asked = "teacher-layers" if trial_config.init == BASELINE else trial_config.init
        baseline_init = student_init(shared.pretrained_teacher.config, shape, asked)
        init = BASELINE if trial_config.init == BASELINE else baseline_init
    # The distilled arm's phases are scaled for where its weights came from.
    weights_init = baseline_init if init == BASELINE else init
    teacher_width = shared.teacher.config.hidden_size

    def rate(lr: float, started_from: str) -> float:
        return student_lr(study_config, lr, started_from, shape.hidden_size, teacher_width)

    pipeline = study_config.pipeline
    searched_lr = "lr" in study_config.search  # a searched rate is used as sampled
    lr = LearningRates(
        baseline=rate(pipeline.baseline.lr, baseline_init),
        intermediate=rate(pipeline.intermediate.lr, weights_init),
        distill=trial_config.lr if searched_lr else rate(trial_config.lr, weights_init),
        finetune=rate(pipeline.finetune.lr, weights_init))
    return Student(shape=shape, text=text, init=init, baseline_init=baseline_init, lr=lr,
                   seed=trial_config.seed, pretrained=pretrained,
                   teacher=shared.pretrained_teacher, importance=shared.importance,
                   importance_key=shared.importance_key, label_names=shared.data.label_names)


def student_lr(study_config: StudyConfig, lr: float, init: str, hidden_size: int,
               teacher_width: int) -> float:
    """A student phase's learning rate under ``pipeline.lr_rule`` (see its comment): ``lr``
    as given, or scaled by the student's width and init."""
    if study_config.pipeline.lr_rule == "fixed":
        return lr
    return lr * teacher_width / hidden_size * (2.0 if init == "random" else 1.0)
