"""One trial, end to end: ``run_trial`` is the method, one named call per stage.

    from harness.config import default_trial_config
    from harness.pipeline import run_trial
    result = run_trial(study_config, default_trial_config(study_config), shared)

``run_trial`` needs no Optuna; the study driver only samples ``TrialConfig``s and calls it.
The fine-tuned teacher and its logits come from ``harness.shared`` (built once); the
label-only baseline is cached per (architecture, init, teacher, data, phase settings, seed).
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

from harness.artifacts import Artifact, build_once, write_folder_atomically
from harness.compute import ComputeCost, measure_compute
from harness.config import RESIZED_TEACHER, PhaseConfig, StudyConfig, TrialConfig
from harness.data import TokenizedSplit
from harness.evaluation import Evaluation, evaluate_against_baseline
from harness.losses import make_projection
from harness.models import (StudentShape, build_student, load_pretrained, load_saved_model,
                            save_model, student_init, student_shape)
from harness.shared import SharedArtifacts, TokenizedData
from harness.student_loss import LogitKD, StudentLoss, attention_maps, loss_function
from harness.train import (PhaseResult, StepLogger, TrainSettings, cross_entropy_loss,
                           dev_accuracy, dev_evaluation, precision, predict_logits,
                           train_phase)

SPLITS = ("dev", "test")


@dataclass(frozen=True)
class TrialHooks:
    """What the caller hears during a trial: per-step and per-epoch metrics (``log``), and
    ``on_epoch(epoch, dev_accuracy)`` after every epoch of the student's phases, numbered
    across them from 1; it may raise to stop the trial (early stopping, pruning)."""

    log: StepLogger | None = None
    on_epoch: Callable[[int, float], None] | None = None


@dataclass(frozen=True)
class TrialResult:
    """A finished trial; ``stored_fields()`` flattens it into the stored attributes."""

    trial: TrialConfig
    shape: StudentShape  # the student actually built (num_heads, intermediate_size resolved)
    init: str  # the initialisation actually used
    evaluation: Evaluation
    cost: ComputeCost
    train_flops: int  # student training in this trial (+ teacher forwards it needed)
    wall_seconds: float
    epoch_dev_accuracy: tuple[float, ...]  # after each dev evaluation of every student phase
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
    teacher_dev_accuracy: float
    teacher_test_accuracy: float
    teacher_flops_per_example: int
    teacher_params: int
    teacher_latency_ms: float

    def stored_fields(self) -> dict:
        parts = [dataclasses.asdict(self.trial), dataclasses.asdict(self.shape),
                 dataclasses.asdict(self.evaluation), dataclasses.asdict(self.cost)]
        flat = {k: v for part in parts for k, v in part.items()}
        flat.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                     if f.name not in ("trial", "shape", "evaluation", "cost")})
        return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}


def run_trial(study_config: StudyConfig, trial_config: TrialConfig, shared: SharedArtifacts,
              hooks: TrialHooks = TrialHooks(), save_student_to: Path | None = None) -> TrialResult:
    """Distil one student configuration and measure it against its label-only baseline."""
    started = time.perf_counter()
    shape = trial_shape(study_config, trial_config, shared)
    text = student_text(shared, trial_config)
    baseline = train_baseline(study_config, shared, shape, trial_config)
    student, init_used = initial_student(shared, shape, trial_config, baseline)
    context = StudentTraining(study_config, shared, text, student, trial_config.seed, hooks,
                              projection=hidden_projection(student, shared, trial_config.seed),
                              init=baseline_init(shared, shape, trial_config)
                              if init_used == "baseline" else init_used)

    matched = match_intermediate_layers(context, first_epoch=0)
    distilled = distill(context, trial_config, first_epoch=matched.epochs)
    finetuned = fine_tune(context, first_epoch=matched.epochs + distilled.epochs)

    phases = (matched, distilled, finetuned)
    logits = split_logits(student, text, shared.device, study_config.pipeline.eval_batch_size)
    evaluation = evaluate(logits, baseline, shared)
    cost = measure_compute(student, text.seq_len, shared.device,
                           study_config.pipeline.latency_repeats)
    if save_student_to is not None:
        save_student(student, text.tokenizer, logits, save_student_to)
    baseline_budget = json.loads((baseline.path / "metrics.json").read_text())
    return TrialResult(
        trial=trial_config, shape=shape, init=init_used, evaluation=evaluation, cost=cost,
        train_flops=sum(p.result.examples_seen * cost.train_flops_per_example
                        + (p.teacher_examples + p.transfer_examples)
                        * shared.teacher_cost.flops_per_example for p in phases),
        wall_seconds=time.perf_counter() - started,
        epoch_dev_accuracy=tuple(a for p in phases for a in p.result.epoch_dev_accuracy),
        distill_lr=distilled.lr, distill_steps=distilled.result.steps,
        distill_best_step=distilled.result.best_step, baseline_lr=baseline_budget["lr"],
        baseline_steps=baseline_budget["steps"], baseline_best_step=baseline_budget["best_step"],
        transfer_examples=distilled.transfer_examples,
        teacher_dev_accuracy=shared.teacher_scores["dev"].accuracy,
        teacher_test_accuracy=shared.teacher_scores["test"].accuracy,
        teacher_flops_per_example=shared.teacher_cost.flops_per_example,
        teacher_params=shared.teacher_cost.params,
        teacher_latency_ms=shared.teacher_cost.latency_ms)


def reported_epochs(study_config: StudyConfig, train_examples: int) -> int:
    """How many ``on_epoch`` calls (dev evaluations) a complete trial makes on a training
    split of ``train_examples``."""
    pipeline = study_config.pipeline
    return sum(settings_for(study_config, phase, seed=0, lr=phase.lr).evaluations(train_examples)
               for phase in (pipeline.intermediate, pipeline.distill, pipeline.finetune)
               if phase.epochs > 0)


def trial_shape(study_config: StudyConfig, trial_config: TrialConfig,
                shared: SharedArtifacts) -> StudentShape:
    """The size of the trial's student: a pre-trained checkpoint's own, or the resized
    teacher's (heads and FFN width completed)."""
    if trial_config.student_source != RESIZED_TEACHER:
        return shared.pretrained_students[trial_config.student_source].shape
    return student_shape(shared.teacher, trial_config.num_layers, trial_config.hidden_size,
                         study_config.student.head_dim, trial_config.intermediate_size)


def student_text(shared: SharedArtifacts, trial_config: TrialConfig) -> TokenizedData:
    """The data as the trial's student reads it: its own tokenizer's, or the teacher's."""
    if trial_config.student_source != RESIZED_TEACHER:
        return shared.pretrained_students[trial_config.student_source].text
    return shared.text


def untrained_cost(study_config: StudyConfig, trial_config: TrialConfig,
                   shared: SharedArtifacts) -> ComputeCost:
    """The student's compute before any training: its architecture alone decides FLOPs,
    parameters and latency, so a study can skip a student over its budget."""
    student = new_student(shared, trial_shape(study_config, trial_config, shared),
                          dataclasses.replace(trial_config, init="random"))[0]
    return measure_compute(student.to(shared.device), student_text(shared, trial_config).seq_len,
                           shared.device, study_config.pipeline.latency_repeats)


def settings_for(study_config: StudyConfig, phase: PhaseConfig, seed: int,
                 lr: float) -> TrainSettings:
    pipeline = study_config.pipeline
    return TrainSettings(epochs=phase.epochs, lr=lr, batch_size=pipeline.batch_size,
                         warmup_ratio=pipeline.warmup_ratio, weight_decay=pipeline.weight_decay,
                         max_grad_norm=pipeline.max_grad_norm, seed=seed,
                         **dataclasses.asdict(pipeline.schedule))


def student_lr(study_config: StudyConfig, lr: float, init: str, hidden_size: int,
               teacher_width: int) -> float:
    """A student phase's learning rate under ``pipeline.lr_rule`` (see its comment): ``lr``
    as given, or scaled by the student's width and init."""
    if study_config.pipeline.lr_rule == "fixed":
        return lr
    return lr * teacher_width / hidden_size * (2.0 if init == "random" else 1.0)


def baseline_init(shared: SharedArtifacts, shape: StudentShape, trial_config: TrialConfig) -> str:
    """The init of the trial's label-only baseline: the student's own, where the student
    does not start from the baseline itself (then the teacher's layers, where they fit)."""
    if trial_config.student_source != RESIZED_TEACHER:
        return "pretrained"
    asked = "teacher-layers" if trial_config.init == "baseline" else trial_config.init
    return student_init(shared.pretrained_teacher.config, shape, asked)


def train_baseline(study_config: StudyConfig, shared: SharedArtifacts, shape: StudentShape,
                   trial_config: TrialConfig) -> Artifact:
    """The same student trained on labels alone, on the same schedule rule and budget as
    its distillation: the "without distillation" reference.

    A pre-trained checkpoint's baseline is that checkpoint fine-tuned on labels."""
    init = baseline_init(shared, shape, trial_config)
    phase = study_config.pipeline.baseline
    settings = settings_for(study_config, phase, trial_config.seed, student_lr(
        study_config, phase.lr, init, shape.hidden_size, shared.teacher.config.hidden_size))
    text = student_text(shared, trial_config)
    fields = {"teacher": shared.teacher_key, "shape": dataclasses.asdict(shape), "init": init,
              "init_from": "pre-trained teacher", "settings": dataclasses.asdict(settings),
              "precision": precision(shared.device)}
    if init == "teacher-pruned":
        fields["importance"] = shared.importance_key
    if trial_config.student_source != RESIZED_TEACHER:
        source = shared.pretrained_students[trial_config.student_source]
        fields.update(init_from=source.identity, tokenizer=text.key)

    def build(folder: Path) -> None:
        student, _ = new_student(shared, shape, dataclasses.replace(trial_config, init=init))
        student.to(shared.device)
        result = train_phase("baseline", student, text.tokens["train"], cross_entropy_loss,
                             settings, shared.device, text.pad_id, on_epoch_end=dev_evaluation(
                                 student, text.tokens["dev"], settings,
                                 study_config.pipeline.eval_batch_size, shared.device,
                                 text.pad_id))
        logits = split_logits(student, text, shared.device, study_config.pipeline.eval_batch_size)
        save_model(student, text.tokenizer, folder / "model")
        save_file(logits, str(folder / "logits.safetensors"))
        (folder / "metrics.json").write_text(json.dumps(
            {**dataclasses.asdict(result), "lr": settings.lr}))

    return build_once(shared.cache, "baseline", fields, build)


def initial_student(shared: SharedArtifacts, shape: StudentShape, trial_config: TrialConfig,
                    baseline: Artifact) -> tuple[torch.nn.Module, str]:
    """The student before distillation, on the device, and the init actually used."""
    if trial_config.init == "baseline":
        student, init_used = load_saved_model(baseline.path / "model"), "baseline"
    else:
        student, init_used = new_student(shared, shape, trial_config)
    return student.to(shared.device), init_used


def new_student(shared: SharedArtifacts, shape: StudentShape,
                trial_config: TrialConfig) -> tuple[torch.nn.Module, str]:
    """The trial's pre-trained checkpoint with a fresh head (init "pretrained"), or the
    resized teacher built as ``trial_config.init`` asks; and the init actually used."""
    if trial_config.student_source != RESIZED_TEACHER:
        source = shared.pretrained_students[trial_config.student_source]
        return load_pretrained(source.source, "student.source", shared.data.label_names,
                               trial_config.seed, source.revision), "pretrained"
    return build_student(shared.pretrained_teacher, shape, trial_config.init, trial_config.seed,
                         shared.importance)


def hidden_projection(student, shared: SharedArtifacts, seed: int) -> torch.nn.Linear | None:
    """The learned map from the student's width to the teacher's for hidden-state matching
    (None at equal widths); trained with the student through every matching phase."""
    torch.manual_seed(seed)
    projection = make_projection(student.config.hidden_size, shared.teacher.config.hidden_size)
    return None if projection is None else projection.to(shared.device)


@dataclass(frozen=True)
class StudentTraining:
    """What every phase of one student's training shares."""

    study_config: StudyConfig
    shared: SharedArtifacts
    text: TokenizedData  # the data as the student reads it
    student: torch.nn.Module
    seed: int
    hooks: TrialHooks
    projection: torch.nn.Linear | None
    init: str  # where the student's weights came from, for pipeline.lr_rule


@dataclass(frozen=True)
class StudentPhase:
    result: PhaseResult
    teacher_examples: int  # examples the teacher also ran forward on (matching)
    lr: float
    transfer_examples: int = 0  # transfer-set examples the teacher labelled for the phase

    @property
    def epochs(self) -> int:
        return len(self.result.epoch_dev_accuracy)


def match_intermediate_layers(context: StudentTraining, first_epoch: int) -> StudentPhase:
    """TinyBERT's first stage: hidden states and attention maps alone, at unit weights
    (``pipeline.intermediate``; 0 epochs skips it)."""
    return train_student(context, "intermediate", context.study_config.pipeline.intermediate,
                         StudentLoss(hidden_weight=1.0, attention_weight=1.0), first_epoch)


def distill(context: StudentTraining, trial_config: TrialConfig, first_epoch: int) -> StudentPhase:
    """Logit KD (the seed's loss) plus the trial's hidden-state and attention weights."""
    pipeline = context.study_config.pipeline
    hard_label_temperature = 1.0 if pipeline.hard_label_temperature == "one" else None
    loss = StudentLoss(LogitKD(trial_config.alpha, trial_config.T, trial_config.T_s,
                               hard_label_temperature),
                       trial_config.hidden_weight, trial_config.attention_weight)
    searched = "lr" in context.study_config.search  # a searched rate is used as sampled
    return train_student(context, "distill", pipeline.distill, loss, first_epoch,
                         lr=trial_config.lr, scale_lr=not searched,
                         transfer_copies=trial_config.transfer_copies)


def fine_tune(context: StudentTraining, first_epoch: int) -> StudentPhase:
    """A short cross-entropy phase on labels (``pipeline.finetune``; 0 epochs skips it)."""
    return train_student(context, "finetune", context.study_config.pipeline.finetune,
                         StudentLoss(), first_epoch)


def train_student(context: StudentTraining, name: str, phase: PhaseConfig, loss: StudentLoss,
                  first_epoch: int, lr: float | None = None, scale_lr: bool = True,
                  transfer_copies: int | None = None) -> StudentPhase:
    """One phase of the student's training (at ``lr``, else the phase's, scaled by
    ``pipeline.lr_rule`` unless ``scale_lr`` is off), on the training split and, given
    ``transfer_copies``, the study's transfer set; dev accuracy after each evaluation goes
    to the hooks."""
    shared, text, hooks, student = context.shared, context.text, context.hooks, context.student
    lr = phase.lr if lr is None else lr
    if scale_lr:
        lr = student_lr(context.study_config, lr, context.init, student.config.hidden_size,
                        shared.teacher.config.hidden_size)
    if phase.epochs <= 0:  # a phase the study file turns off
        return StudentPhase(PhaseResult(steps=0, examples_seen=0, epoch_dev_accuracy=(),
                                        wall_seconds=0.0), teacher_examples=0, lr=lr)
    eval_batch_size = context.study_config.pipeline.eval_batch_size

    def epoch_end(epoch: int) -> float:
        accuracy = dev_accuracy(student, text.tokens["dev"], eval_batch_size, shared.device,
                                text.pad_id)
        if hooks.log is not None:
            hooks.log({f"{name}/epoch": epoch, f"{name}/dev_accuracy": accuracy}, None)
        if hooks.on_epoch is not None:
            hooks.on_epoch(first_epoch + epoch, accuracy)
        return accuracy

    projection = context.projection if loss.hidden_weight > 0 else None
    train, teacher_logits, transfer_examples = training_examples(shared, text, transfer_copies)
    with attention_maps(student, shared.teacher, needed=loss.attention_weight > 0):
        result = train_phase(
            name, student, train, loss_function(loss, shared, projection, teacher_logits),
            settings_for(context.study_config, phase, context.seed, lr), shared.device,
            text.pad_id, extra_parameters=list(projection.parameters()) if projection else [],
            on_epoch_end=epoch_end, log_step=hooks.log,
            budget_examples=len(text.tokens["train"]))
    return StudentPhase(result, result.examples_seen if loss.runs_teacher else 0, lr,
                        transfer_examples)


def training_examples(shared: SharedArtifacts, text: TokenizedData,
                      transfer_copies: int | None) -> tuple[TokenizedSplit, torch.Tensor, int]:
    """The labelled training split and the teacher's logits on it, followed (given
    ``transfer_copies`` and a study transfer set) by the trial's transfer examples; and
    how many of those there are."""
    train, logits = text.tokens["train"], shared.teacher_logits["train"]
    if transfer_copies is None or shared.transfer is None:
        return train, logits, 0
    transfer, transfer_logits = shared.transfer.for_trial(transfer_copies)
    return (TokenizedSplit.concatenate([train, transfer]), torch.cat([logits, transfer_logits]),
            len(transfer))


def evaluate(logits: dict[str, torch.Tensor], baseline: Artifact,
             shared: SharedArtifacts) -> Evaluation:
    """The distilled student's logits against its label-only baseline and the teacher."""
    return evaluate_against_baseline(
        logits, load_file(str(baseline.path / "logits.safetensors")), shared.teacher_logits,
        {name: shared.text.tokens[name].labels for name in SPLITS})


def save_student(student, tokenizer, logits: dict[str, torch.Tensor], folder: Path) -> None:
    """A folder ``from_pretrained`` loads, with the dev and test logits the trial measured
    (``logits.safetensors``), so a reloaded student can be checked against them. Written
    whole or not at all; it replaces an older folder of the same name."""
    def write(staging: Path) -> None:
        save_model(student, tokenizer, staging)
        save_file(logits, str(staging / "logits.safetensors"))

    write_folder_atomically(folder, write)


def split_logits(model, text: TokenizedData, device: torch.device,
                 eval_batch_size: int) -> dict[str, torch.Tensor]:
    return {name: predict_logits(model, text.tokens[name], eval_batch_size, device, text.pad_id)
            for name in SPLITS}
