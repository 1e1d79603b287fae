"""One trial, end to end: student baseline -> distillation -> fine-tune -> evaluate.

    from harness.pipeline import run_trial, default_trial_config
    result = run_trial(study_config, default_trial_config(study_config))

``run_trial`` needs no Optuna; the study driver only samples ``TrialConfig``s and calls it.
The fine-tuned teacher and its logits come from ``harness.shared`` (built once); the
label-only baseline is cached per (architecture, init, teacher, data, phase settings, seed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness.artifacts import build_once
from harness.compute import ComputeCost, measure_compute
from harness.config import StudyConfig
from harness.evaluation import agreement, discordant_counts, score
from harness.losses import attention_loss, distillation_loss_terms, hidden_state_loss, layer_map
from harness.losses import make_projection
from harness.models import StudentShape, build_student, load_saved_model, save_model, student_shape
from harness.shared import SharedArtifacts
from harness.train import (PhaseResult, StepLogger, TrainSettings, cross_entropy_loss,
                           predict_logits, train_phase)


@dataclass(frozen=True)
class TrialConfig:
    """Everything that varies between trials of one study (sampled or fixed)."""

    T: float
    T_s: float
    alpha: float
    num_layers: int
    hidden_size: int
    intermediate_size: int | None
    init: str  # teacher-layers | random | baseline
    lr: float  # of the distillation phase
    hidden_weight: float
    attention_weight: float
    seed: int


def default_trial_config(study: StudyConfig, **sampled) -> TrialConfig:
    """The study's fixed values, overridden by ``sampled`` ones."""
    fixed = dict(T=study.pipeline.T, T_s=study.pipeline.T_s, alpha=study.pipeline.alpha,
                 num_layers=study.student.num_layers, hidden_size=study.student.hidden_size,
                 intermediate_size=study.student.intermediate_size, init=study.student.init,
                 lr=study.pipeline.distill.lr, hidden_weight=study.pipeline.hidden_weight,
                 attention_weight=study.pipeline.attention_weight, seed=study.seed)
    return TrialConfig(**{**fixed, **sampled})


@dataclass(frozen=True)
class TrialHooks:
    """Optional callbacks: per-step/epoch metrics, and the end of each distillation epoch
    (``epoch_end(epoch, dev_accuracy)`` may raise to stop the trial, e.g. when pruned)."""

    log: StepLogger | None = None
    epoch_end: Callable[[int, float], None] | None = None


@dataclass(frozen=True)
class TrialResult:
    dev_accuracy: float
    test_accuracy: float
    dev_macro_f1: float
    test_macro_f1: float
    baseline_dev_accuracy: float
    baseline_test_accuracy: float
    kd_gain: float  # dev accuracy, distilled minus label-only baseline
    teacher_agreement: float  # share of test predictions equal to the teacher's
    baseline_teacher_agreement: float
    flops_per_example: int  # forward, batch 1, at seq_len tokens
    params: int
    non_embedding_params: int
    latency_ms: float
    train_flops: int  # student training in this trial (+ teacher forwards it needed)
    wall_seconds: float
    seq_len: int
    T: float
    T_s: float
    alpha: float
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    init: str  # the initialisation actually used
    lr: float
    hidden_weight: float
    attention_weight: float
    seed: int
    dev_examples: int
    test_examples: int
    kd_only_correct_dev: int
    baseline_only_correct_dev: int
    kd_only_correct_test: int
    baseline_only_correct_test: int
    teacher_dev_accuracy: float
    teacher_test_accuracy: float
    teacher_flops_per_example: int
    teacher_params: int
    teacher_latency_ms: float
    epoch_dev_accuracy: tuple[float, ...]  # after each distillation/fine-tune epoch

    def stored_fields(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


def run_trial(study: StudyConfig, trial: TrialConfig, shared: SharedArtifacts,
              hooks: TrialHooks = TrialHooks(), save_student_to: Path | None = None) -> TrialResult:
    """Distil one student configuration and measure it against its label-only baseline."""
    started = time.perf_counter()
    shape = trial_shape(study, trial, shared)
    baseline = train_baseline(study, shared, shape, trial)
    if trial.init == "baseline":
        student, init_used = load_saved_model(baseline.path / "model"), "baseline"
    else:
        student, init_used = build_student(shared.pretrained_teacher, shape, trial.init,
                                           trial.seed)
    student.to(shared.device)
    phases = distill_student(study, shared, student, trial, hooks)

    logits = {name: predict_logits(student, shared.tokens[name], study.pipeline.eval_batch_size,
                                   shared.device, shared.pad_id) for name in ("dev", "test")}
    baseline_logits = load_file(str(baseline.path / "logits.safetensors"))
    labels = {name: shared.tokens[name].labels for name in ("dev", "test")}
    dev, test = score(logits["dev"], labels["dev"]), score(logits["test"], labels["test"])
    baseline_dev = score(baseline_logits["dev"], labels["dev"])
    baseline_test = score(baseline_logits["test"], labels["test"])
    kd_dev, base_dev = discordant_counts(logits["dev"], baseline_logits["dev"], labels["dev"])
    kd_test, base_test = discordant_counts(logits["test"], baseline_logits["test"], labels["test"])
    cost = measure_compute(student, shared.seq_len, shared.device, study.pipeline.latency_repeats)
    teacher_cost = shared.teacher_cost
    teacher_forward_examples = sum(p.examples_seen for name, p in phases.items()
                                   if name == "intermediate" or (name == "distill" and (
                                       trial.hidden_weight or trial.attention_weight)))
    if save_student_to is not None:
        save_model(student, shared.tokenizer, save_student_to)
    return TrialResult(
        dev_accuracy=dev.accuracy, test_accuracy=test.accuracy,
        dev_macro_f1=dev.macro_f1, test_macro_f1=test.macro_f1,
        baseline_dev_accuracy=baseline_dev.accuracy, baseline_test_accuracy=baseline_test.accuracy,
        kd_gain=dev.accuracy - baseline_dev.accuracy,
        teacher_agreement=agreement(logits["test"], shared.teacher_logits["test"]),
        baseline_teacher_agreement=agreement(baseline_logits["test"], shared.teacher_logits["test"]),
        flops_per_example=cost.flops_per_example, params=cost.params,
        non_embedding_params=cost.non_embedding_params, latency_ms=cost.latency_ms,
        train_flops=(sum(p.examples_seen for p in phases.values()) * cost.train_flops_per_example
                     + teacher_forward_examples * teacher_cost.flops_per_example),
        wall_seconds=time.perf_counter() - started, seq_len=shared.seq_len,
        T=trial.T, T_s=trial.T_s, alpha=trial.alpha, num_layers=shape.num_layers,
        hidden_size=shape.hidden_size, num_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size, init=init_used, lr=trial.lr,
        hidden_weight=trial.hidden_weight, attention_weight=trial.attention_weight, seed=trial.seed,
        dev_examples=dev.examples, test_examples=test.examples,
        kd_only_correct_dev=kd_dev, baseline_only_correct_dev=base_dev,
        kd_only_correct_test=kd_test, baseline_only_correct_test=base_test,
        teacher_dev_accuracy=shared.teacher_scores["dev"].accuracy,
        teacher_test_accuracy=shared.teacher_scores["test"].accuracy,
        teacher_flops_per_example=teacher_cost.flops_per_example, teacher_params=teacher_cost.params,
        teacher_latency_ms=teacher_cost.latency_ms,
        epoch_dev_accuracy=tuple(a for p in phases.values() for a in p.epoch_dev_accuracy))


def trial_shape(study: StudyConfig, trial: TrialConfig, shared: SharedArtifacts) -> StudentShape:
    return student_shape(shared.teacher, trial.num_layers, trial.hidden_size,
                         study.student.head_dim, trial.intermediate_size)


def untrained_cost(study: StudyConfig, trial: TrialConfig, shared: SharedArtifacts) -> ComputeCost:
    """The student's compute before any training: its architecture alone decides FLOPs,
    parameters and latency, so a study can skip a student over its budget."""
    student, _ = build_student(shared.teacher, trial_shape(study, trial, shared), "random",
                               trial.seed)
    return measure_compute(student.to(shared.device), shared.seq_len, shared.device,
                           study.pipeline.latency_repeats)


def settings_for(study: StudyConfig, phase, seed: int, lr: float | None = None) -> TrainSettings:
    pipeline = study.pipeline
    return TrainSettings(epochs=phase.epochs, lr=phase.lr if lr is None else lr,
                         batch_size=pipeline.batch_size, warmup_ratio=pipeline.warmup_ratio,
                         weight_decay=pipeline.weight_decay, max_grad_norm=pipeline.max_grad_norm,
                         seed=seed)


def train_baseline(study: StudyConfig, shared: SharedArtifacts, shape: StudentShape,
                   trial: TrialConfig):
    """The same student trained on labels alone: the "without distillation" reference."""
    init = "random" if trial.init == "random" else "teacher-layers"
    settings = settings_for(study, study.pipeline.baseline, trial.seed)
    fields = {"teacher": shared.teacher_key, "shape": dataclasses.asdict(shape), "init": init,
              "init_from": "pre-trained teacher", "settings": dataclasses.asdict(settings)}

    def build(folder: Path) -> None:
        student, _ = build_student(shared.pretrained_teacher, shape, init, trial.seed)
        student.to(shared.device)
        result = train_phase("baseline", student, shared.tokens["train"], cross_entropy_loss,
                             settings, shared.device, shared.pad_id)
        logits = {name: predict_logits(student, shared.tokens[name],
                                       study.pipeline.eval_batch_size, shared.device,
                                       shared.pad_id) for name in ("dev", "test")}
        save_model(student, shared.tokenizer, folder / "model")
        save_file(logits, str(folder / "logits.safetensors"))
        (folder / "metrics.json").write_text(json.dumps(dataclasses.asdict(result)))

    return build_once(shared.cache, "baseline", fields, build)


def distill_student(study: StudyConfig, shared: SharedArtifacts, student, trial: TrialConfig,
                    hooks: TrialHooks) -> dict[str, PhaseResult]:
    """Intermediate-layer matching (optional), logit distillation, fine-tune on labels."""
    pipeline, device = study.pipeline, shared.device
    torch.manual_seed(trial.seed)  # the projection's initialisation
    projection = make_projection(student.config.hidden_size, shared.teacher.config.hidden_size)
    extra = []
    if projection is not None:
        projection.to(device)
        extra = list(projection.parameters())
    epochs_done = 0

    def epoch_hook(phase: str):
        def evaluate(epoch: int) -> float:
            accuracy = score(predict_logits(student, shared.tokens["dev"], pipeline.eval_batch_size,
                                            device, shared.pad_id), shared.tokens["dev"].labels).accuracy
            if hooks.log is not None:
                hooks.log({f"{phase}/epoch": epoch, f"{phase}/dev_accuracy": accuracy}, None)
            if hooks.epoch_end is not None:
                hooks.epoch_end(epochs_done + epoch, accuracy)
            return accuracy
        return evaluate

    hard_label_temperature = 1.0 if pipeline.hard_label_temperature == "one" else None
    logit_kd = LogitKD(trial.alpha, trial.T, trial.T_s, hard_label_temperature)
    plan = [  # TinyBERT's intermediate phase matches hidden states and attentions only
        ("intermediate", pipeline.intermediate, None, matching_loss(shared, projection, None, 1.0, 1.0)),
        ("distill", pipeline.distill, trial.lr, matching_loss(
            shared, projection, logit_kd, trial.hidden_weight, trial.attention_weight)),
        ("finetune", pipeline.finetune, None, cross_entropy_loss),
    ]
    matches_attention = pipeline.intermediate.epochs > 0 or trial.attention_weight > 0
    results = {}
    with attention_maps(student, shared.teacher, matches_attention):
        for name, phase, lr, loss_fn in plan:
            if phase.epochs <= 0:
                continue
            results[name] = train_phase(
                name, student, shared.tokens["train"], loss_fn,
                settings_for(study, phase, trial.seed, lr), device, shared.pad_id,
                extra_parameters=extra, on_epoch_end=epoch_hook(name), log_step=hooks.log)
            epochs_done += len(results[name].epoch_dev_accuracy)
    return results


@contextlib.contextmanager
def attention_maps(student, teacher, needed: bool):
    """Eager attention (SDPA returns no attention maps) and no dropout on the student's
    attention probabilities (matching would compare maps with holes), then back.

    The teacher is shared by every trial in the process, so it must leave as it came.
    """
    if not needed:
        yield
        return
    implementations = student.config._attn_implementation, teacher.config._attn_implementation
    dropouts = [m.dropout for name, m in student.named_modules()
                if name.endswith("attention.self") and isinstance(getattr(m, "dropout", None),
                                                                   torch.nn.Dropout)]
    probabilities = [d.p for d in dropouts]
    student.set_attn_implementation("eager")
    teacher.set_attn_implementation("eager")
    for dropout in dropouts:
        dropout.p = 0.0
    try:
        yield
    finally:
        student.set_attn_implementation(implementations[0])
        teacher.set_attn_implementation(implementations[1])
        for dropout, p in zip(dropouts, probabilities):
            dropout.p = p


@dataclass(frozen=True)
class LogitKD:
    alpha: float
    T: float
    T_s: float
    hard_label_temperature: float | None


def matching_loss(shared: SharedArtifacts, projection, logit_kd: LogitKD | None,
                  hidden_weight: float, attention_weight: float):
    """Logit KD (teacher logits read from the cache: no teacher forward pass) plus
    weighted hidden-state and attention matching, which do need a teacher forward."""
    train_logits = shared.teacher_logits["train"]

    def loss_fn(model, batch) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "output_hidden_states": hidden_weight > 0,
                  "output_attentions": attention_weight > 0}
        output = model(**inputs)
        losses = {}
        if logit_kd is not None:
            teacher_logits = train_logits[batch["index"].cpu()].to(output.logits.device)
            terms = distillation_loss_terms(output.logits, teacher_logits, batch["labels"],
                                            logit_kd.alpha, logit_kd.T, logit_kd.T_s,
                                            logit_kd.hard_label_temperature)
            losses = {"loss": terms.total, **{k: v for k, v in (("kd", terms.kd), ("ce", terms.ce))
                                              if v is not None}}
        if hidden_weight > 0 or attention_weight > 0:
            with torch.no_grad():
                teacher_output = shared.teacher(**inputs)
            chosen = layer_map(model.config.num_hidden_layers,
                               shared.teacher.config.num_hidden_layers)
            if hidden_weight > 0:  # hidden_states[0] is the embeddings: match layer outputs
                losses["hidden"] = hidden_state_loss(
                    output.hidden_states[1:], [teacher_output.hidden_states[1 + j] for j in chosen],
                    projection, batch["attention_mask"])
            if attention_weight > 0:
                losses["attention"] = attention_loss(
                    output.attentions, [teacher_output.attentions[j] for j in chosen],
                    batch["attention_mask"])
            matching = (hidden_weight * losses.get("hidden", 0.0)
                        + attention_weight * losses.get("attention", 0.0))
            losses["loss"] = losses.get("loss", 0.0) + matching
        return losses

    return loss_fn
