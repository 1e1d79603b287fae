"""One trial, end to end: ``run_trial`` is the method, one named call per stage.

    from harness.config import default_trial_config
    from harness.pipeline import run_trial
    result = run_trial(study_config, default_trial_config(study_config), shared)

``run_trial`` needs no Optuna; the sweep (``harness.sweep``) only samples ``TrialConfig``s
and calls it. The fine-tuned teacher and its logits come from ``harness.shared`` (built
once), the student from ``harness.student`` (resolved once); the label-only baseline is
cached per (architecture, init, teacher, data, phase settings, seed).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from harness.artifacts import build_once, write_folder_atomically
from harness.budget import (DISTILLED_PHASES, baseline_budget, equal_budgets,
                            on_labelled_passes, phase_examples, phase_settings)
from harness.compute import ComputeCost, measure_compute
from harness.config import ModelShape, PipelineConfig, StudyConfig, TrialConfig
from harness.data import TextData, TokenizedData, TokenizedSplit
from harness.evaluation import Evaluation, evaluate_against_baseline
from harness.labels import train_on_labels
from harness.losses import make_projection
from harness.models import load_saved_model, save_model
from harness.shared import SharedArtifacts
from harness.student import BASELINE, Student, resolve_student
from harness.student_loss import LogitKD, StudentLoss, attention_maps, loss_function
from harness.train import (PhaseResult, StepLogger, accuracy_on, precision, predict_logits,
                           train_phase, train_settings)
from harness.transfer import OnlineViews, TransferSet

SPLITS = ("dev", "test")


@dataclass(frozen=True)
class TrialHooks:
    """What the caller hears during a trial: per-step and per-evaluation metrics (``log``),
    and ``on_evaluation(evaluation, select_accuracy)`` after every evaluation (on the select
    split) of the student's phases, numbered across them from 1; it may raise to stop the
    trial (early stopping, pruning)."""

    log: StepLogger | None = None
    on_evaluation: Callable[[int, float], None] | None = None


@dataclass(frozen=True)
class TrialResult:
    """A finished trial; ``stored_fields()`` flattens it into the stored attributes."""

    trial: TrialConfig
    shape: ModelShape  # the student actually built (num_heads, intermediate_size resolved)
    init: str  # the initialisation actually used
    evaluation: Evaluation
    cost: ComputeCost
    train_flops: int  # student training in this trial (+ teacher forwards it needed)
    wall_seconds: float
    # Select accuracy after each evaluation of every student phase: what stopped the
    # phases, chose their checkpoints and what a pruner compares.
    select_accuracies: tuple[float, ...]
    # The distillation's and its baseline's budgets as trained: learning rate, optimiser
    # steps run and the step whose weights each ended on (equal rules, so kd_gain measures
    # distillation alone).
    distill_lr: float
    distill_steps: int
    distill_best_step: int
    baseline_lr: float
    baseline_steps: int
    baseline_best_step: int
    transfer_examples: int  # teacher-labelled transfer examples distilled on
    flops_share: float  # flops_per_example / the teacher's, both on the study's data
    budget_matched: bool  # both arms had the same maximum steps (harness.budget)
    teacher_dev_accuracy: float
    teacher_test_accuracy: float
    teacher_flops_per_example: int
    teacher_params: int
    teacher_latency_ms: float
    # An ensemble teacher's members (teacher.ensemble), each member's accuracy; else empty.
    teacher_member_dev_accuracies: tuple[float, ...]
    teacher_member_test_accuracies: tuple[float, ...]
    # A task's own scores beside the contract's (generative: token accuracy, NLL, BLEU,
    # FLOPs per generated token), stored under these names
    task_scores: dict[str, float] = dataclasses.field(default_factory=dict)

    def stored_fields(self) -> dict:
        parts = [dataclasses.asdict(self.trial), dataclasses.asdict(self.shape),
                 dataclasses.asdict(self.evaluation), dataclasses.asdict(self.cost),
                 self.task_scores]
        flat = {k: v for part in parts for k, v in part.items()}
        flat.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                     if f.name not in ("trial", "shape", "evaluation", "cost", "task_scores")})
        return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}


def run_trial(study_config: StudyConfig, trial_config: TrialConfig, shared: SharedArtifacts,
              hooks: TrialHooks = TrialHooks(), save_student_to: Path | None = None) -> TrialResult:
    """Distil one student configuration and measure it against its label-only baseline."""
    started = time.perf_counter()
    pipeline, device = study_config.pipeline, shared.device
    student = resolve_student(study_config, trial_config, shared)
    labelled = labelled_examples(student.text, shared.teacher_logits)
    transferred = with_transfer_set(labelled, shared.transfer, trial_config.transfer_copies)
    baseline = train_baseline(pipeline, student, transferred.transfer_examples,
                              shared.teacher_key, shared.cache, device, shared.views)
    model = initial_student(student, baseline).to(device)
    training = StudentTraining(pipeline, student, model, shared.teacher, device, hooks,
                               hidden_projection(model, shared.teacher, student.seed, device),
                               shared.views)

    matched = match_intermediate_layers(training, labelled, first_evaluation=0)
    distilled = distill(training, trial_config, transferred, first_evaluation=matched.evaluations)
    finetuned = fine_tune(training, labelled,
                          first_evaluation=matched.evaluations + distilled.evaluations)

    phases = (matched, distilled, finetuned)
    logits = split_logits(model, student.text, device, pipeline.eval_batch_size)
    evaluation = evaluate(logits, baseline, shared.teacher_logits, student.text, shared.data)
    cost = measure_compute(model, student.text.seq_len, device, pipeline.latency_repeats)
    if save_student_to is not None:
        save_student(model, student.text.tokenizer, logits, save_student_to)
    teacher_cost = shared.teacher_cost
    return TrialResult(
        trial=trial_config, shape=student.shape, init=student.init, evaluation=evaluation,
        cost=cost,
        train_flops=sum(p.result.examples_seen * cost.train_flops_per_example
                        + (p.teacher_examples + p.transfer_examples)
                        * teacher_cost.flops_per_example for p in phases),
        wall_seconds=time.perf_counter() - started,
        select_accuracies=tuple(a for p in phases for a in p.result.select_accuracies),
        distill_lr=distilled.lr, distill_steps=distilled.result.steps,
        distill_best_step=distilled.result.best_step, baseline_lr=baseline.lr,
        baseline_steps=baseline.steps, baseline_best_step=baseline.best_step,
        transfer_examples=distilled.transfer_examples,
        flops_share=cost.flops_per_example / teacher_cost.flops_per_example,
        budget_matched=equal_budgets(pipeline, len(labelled.split),
                                     transferred.transfer_examples),
        teacher_dev_accuracy=shared.teacher_scores["dev"].accuracy,
        teacher_test_accuracy=shared.teacher_scores["test"].accuracy,
        teacher_flops_per_example=teacher_cost.flops_per_example,
        teacher_params=teacher_cost.params, teacher_latency_ms=teacher_cost.latency_ms,
        teacher_member_dev_accuracies=tuple(m["dev"] for m in shared.teacher_members),
        teacher_member_test_accuracies=tuple(m["test"] for m in shared.teacher_members))


def reported_evaluations(study_config: StudyConfig, train_examples: int,
                         transfer_examples: int) -> int:
    """How many ``on_evaluation`` calls (select evaluations) a complete trial makes on a
    training split of ``train_examples`` and ``transfer_examples`` transfer examples."""
    total = 0
    for name, settings in phase_settings(study_config.pipeline, DISTILLED_PHASES).items():
        examples = phase_examples(name, train_examples, transfer_examples)
        total += on_labelled_passes(settings, train_examples,
                                    examples - train_examples).evaluations(examples)
    return total


def untrained_cost(student: Student, device: torch.device, latency_repeats: int) -> ComputeCost:
    """The student's compute before any training: its architecture alone decides FLOPs,
    parameters and latency, so a study can skip a student over its budget."""
    return measure_compute(student.build("random").to(device), student.text.seq_len, device,
                           latency_repeats)


@dataclass(frozen=True)
class Baseline:
    """The trained label-only baseline: its logits on dev and test, its budget as trained
    (learning rate, optimiser steps, the step whose weights it ended on) and, where the
    distilled student starts from it, the model itself."""

    logits: dict[str, torch.Tensor]
    lr: float
    steps: int
    best_step: int
    model: PreTrainedModel | None


def train_baseline(pipeline: PipelineConfig, student: Student, transfer_examples: int,
                   teacher_key: str, cache: Path, device: torch.device,
                   views: OnlineViews | None = None) -> Baseline:
    """The same student trained on labels alone, on the same schedule rule and budget as
    its distillation (on ``transfer_examples`` transfer examples too, where it has them:
    ``harness.budget``), on the same online ``views`` where it distils on them: the
    "without distillation" reference; built once per (architecture, init, teacher, data,
    phase settings, views, seed).

    A pre-trained checkpoint's baseline is that checkpoint fine-tuned on labels."""
    settings = dataclasses.replace(
        train_settings(pipeline, pipeline.baseline.epochs, student.lr.baseline, student.seed),
        steps=baseline_budget(pipeline, len(student.text.tokens["train"]), transfer_examples))
    fields = {"teacher": teacher_key, "shape": dataclasses.asdict(student.shape),
              "init": student.baseline_init, "settings": dataclasses.asdict(settings),
              "precision": precision(device), **student.baseline_origin(),
              **({} if views is None else {"views": views.identity()})}

    def build(folder: Path) -> None:
        result, _ = train_on_labels("baseline", student.build(student.baseline_init),
                                    student.text, settings, pipeline.eval_batch_size, device,
                                    SPLITS, folder, views)
        (folder / "metrics.json").write_text(json.dumps(
            {**dataclasses.asdict(result), "lr": settings.lr}))

    artifact = build_once(cache, "baseline", fields, build)
    budget = json.loads((artifact.path / "metrics.json").read_text())
    return Baseline(logits=load_file(str(artifact.path / "logits.safetensors")),
                    lr=budget["lr"], steps=budget["steps"], best_step=budget["best_step"],
                    model=load_saved_model(artifact.path / "model")
                    if student.init == BASELINE else None)


def initial_student(student: Student, baseline: Baseline) -> PreTrainedModel:
    """The student before distillation, on CPU: its trained baseline, or built as its init
    asks."""
    return baseline.model if student.init == BASELINE else student.build(student.init)


def hidden_projection(model, teacher: PreTrainedModel, seed: int,
                      device: torch.device) -> torch.nn.Linear | None:
    """The learned map from the student's width to the teacher's for hidden-state matching
    (None at equal widths); trained with the student through every matching phase."""
    torch.manual_seed(seed)
    projection = make_projection(model.config.hidden_size, teacher.config.hidden_size)
    return None if projection is None else projection.to(device)


@dataclass(frozen=True)
class StudentTraining:
    """What every phase of one student's training shares."""

    pipeline: PipelineConfig
    student: Student
    model: torch.nn.Module  # trained in place, phase after phase
    teacher: PreTrainedModel  # fine-tuned, on the device: matching runs it
    device: torch.device
    hooks: TrialHooks
    projection: torch.nn.Linear | None
    views: OnlineViews | None  # fresh views of every distillation batch (transfer.online)


@dataclass(frozen=True)
class TrainingExamples:
    """What a phase trains on: examples, the teacher's logits on each, and how many of them
    are teacher-labelled transfer examples (the rest are the labelled training split)."""

    split: TokenizedSplit
    teacher_logits: torch.Tensor  # (n, classes)
    transfer_examples: int = 0


@dataclass(frozen=True)
class StudentPhase:
    result: PhaseResult
    teacher_examples: int  # examples the teacher also ran forward on (matching)
    lr: float
    transfer_examples: int = 0  # transfer-set examples the teacher labelled for the phase

    @property
    def evaluations(self) -> int:
        return len(self.result.select_accuracies)


def match_intermediate_layers(training: StudentTraining, examples: TrainingExamples,
                              first_evaluation: int) -> StudentPhase:
    """TinyBERT's first stage: hidden states and attention maps alone, at unit weights
    (``pipeline.intermediate``; 0 epochs skips it)."""
    return train_student(training, "intermediate", training.pipeline.intermediate.epochs,
                         training.student.lr.intermediate,
                         StudentLoss(hidden_weight=1.0, attention_weight=1.0), examples,
                         first_evaluation)


def distill(training: StudentTraining, trial_config: TrialConfig, examples: TrainingExamples,
            first_evaluation: int) -> StudentPhase:
    """Logit KD (``alpha * T^2 * KL(q_T || p_Ts) + (1 - alpha) * CE``, ``harness.losses``)
    plus the trial's hidden-state and attention weights; with online views, on a fresh view
    of every batch that the teacher scores as the student reads it."""
    hard_label_temperature = 1.0 if training.pipeline.hard_label_temperature == "one" else None
    loss = StudentLoss(LogitKD(trial_config.alpha, trial_config.T, trial_config.T_s,
                               hard_label_temperature),
                       trial_config.hidden_weight, trial_config.attention_weight,
                       teacher_on_batch=training.views is not None)
    return train_student(training, "distill", training.pipeline.distill.epochs,
                         training.student.lr.distill, loss, examples, first_evaluation,
                         training.views)


def fine_tune(training: StudentTraining, examples: TrainingExamples,
              first_evaluation: int) -> StudentPhase:
    """A short cross-entropy phase on labels (``pipeline.finetune``; 0 epochs skips it)."""
    return train_student(training, "finetune", training.pipeline.finetune.epochs,
                         training.student.lr.finetune, StudentLoss(), examples, first_evaluation)


def train_student(training: StudentTraining, name: str, epochs: float, lr: float,
                  loss: StudentLoss, examples: TrainingExamples, first_evaluation: int,
                  views: OnlineViews | None = None) -> StudentPhase:
    """One phase of the student's training on ``examples`` (its epochs are passes over all of
    them: ``harness.budget``); select accuracy after each evaluation goes to the hooks."""
    if epochs <= 0:  # a phase the study file turns off
        return StudentPhase(PhaseResult(steps=0, examples_seen=0, select_accuracies=(),
                                        wall_seconds=0.0), teacher_examples=0, lr=lr)
    model, text, hooks, device = training.model, training.student.text, training.hooks, \
        training.device
    eval_batch_size = training.pipeline.eval_batch_size

    def evaluate(evaluation: int) -> float:
        accuracy = accuracy_on(model, text.tokens["select"], eval_batch_size, device,
                               text.pad_id)
        if hooks.log is not None:
            hooks.log({f"{name}/evaluation": evaluation, f"{name}/select_accuracy": accuracy},
                      None)
        if hooks.on_evaluation is not None:
            hooks.on_evaluation(first_evaluation + evaluation, accuracy)
        return accuracy

    projection = training.projection if loss.hidden_weight > 0 else None
    with attention_maps(model, training.teacher, needed=loss.attention_weight > 0):
        result = train_phase(
            name, model, examples.split,
            loss_function(loss, training.teacher, projection, examples.teacher_logits),
            on_labelled_passes(train_settings(training.pipeline, epochs, lr,
                                              training.student.seed),
                               len(examples.split) - examples.transfer_examples,
                               examples.transfer_examples), device,
            text.pad_id, extra_parameters=list(projection.parameters()) if projection else [],
            on_evaluation=evaluate, log_step=hooks.log, views=views)
    return StudentPhase(result, result.examples_seen if loss.runs_teacher else 0, lr,
                        examples.transfer_examples)


def labelled_examples(text: TokenizedData,
                      teacher_logits: dict[str, torch.Tensor]) -> TrainingExamples:
    """The labelled training split as the student reads it, and the teacher's logits on it
    (examples keep the data's order whatever the tokenizer)."""
    return TrainingExamples(text.tokens["train"], teacher_logits["train"])


def with_transfer_set(labelled: TrainingExamples, transfer_set: TransferSet | None,
                      transfer_copies: int) -> TrainingExamples:
    """The labelled examples followed by the trial's ``transfer_copies`` copies of the
    study's transfer set (its unlabelled texts included), where the study has one."""
    if transfer_set is None:
        return labelled
    transfer, transfer_logits = transfer_set.for_trial(transfer_copies)
    return TrainingExamples(TokenizedSplit.concatenate([labelled.split, transfer]),
                            torch.cat([labelled.teacher_logits, transfer_logits]),
                            len(transfer))


def evaluate(logits: dict[str, torch.Tensor], baseline: Baseline,
             teacher_logits: dict[str, torch.Tensor], text: TokenizedData,
             data: TextData) -> Evaluation:
    """The distilled student's logits against its label-only baseline and the teacher, with
    counts per group of examples where the data has groups."""
    return evaluate_against_baseline(logits, baseline.logits, teacher_logits,
                                     {name: text.tokens[name].labels for name in SPLITS},
                                     {name: data.split(name).groups for name in SPLITS})


def save_student(model, tokenizer, logits: dict[str, torch.Tensor], folder: Path) -> None:
    """A folder ``from_pretrained`` loads, with the dev and test logits the trial measured
    (``logits.safetensors``), so a reloaded student can be checked against them. Written
    whole or not at all; it replaces an older folder of the same name."""
    def write(staging: Path) -> None:
        save_model(model, tokenizer, staging)
        save_file(logits, str(staging / "logits.safetensors"))

    write_folder_atomically(folder, write)


def split_logits(model, text: TokenizedData, device: torch.device,
                 eval_batch_size: int) -> dict[str, torch.Tensor]:
    return {name: predict_logits(model, text.tokens[name], eval_batch_size, device, text.pad_id)
            for name in SPLITS}
