"""One generative trial: a causal-LM student distilled token by token from its teacher's
top-k cache (``harness.token_kd``), measured against its label-only baseline.

    teacher = fine_tune_teacher(teacher, data, settings.teacher, device)
    top = teacher_top_k(teacher, data.train, k, ...)            # once per teacher and data
    result = run_generative_trial(untrained_teacher, top, data, shape, init, settings, device)

Both arms start from one student (built once: same init and seed), read the training
examples in the same order for the same maximum steps, and keep the weights of their best
token accuracy on the select split, so ``kd_gain`` (dev exact match, distilled minus
baseline) measures distillation alone. Dev and test score each final model once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from harness.compute import count_generated_token_flops, count_params
from harness.config import ModelShape
from harness.generative import (GenerativeScores, GenerativeSplit, label_loss,
                                mean_prompt_length, score_generative, target_logits,
                                teacher_forced)
from harness.models import build_student
from harness.token_kd import TopK, token_distillation_loss
from harness.train import PhaseResult, TrainSettings, train_phase


@dataclass(frozen=True)
class GenerativeData:
    train: GenerativeSplit
    select: GenerativeSplit  # chooses checkpoints
    dev: GenerativeSplit
    test: GenerativeSplit
    pad_id: int
    eos_id: int


@dataclass(frozen=True)
class GenerativeLoss:
    alpha: float
    T: float
    T_s: float
    reverse_kl: bool = False  # KL(p_{T_s} || q_T): mode-seeking (MiniLLM, GKD)


@dataclass(frozen=True)
class ArmResult:
    dev: GenerativeScores
    test: GenerativeScores
    steps: int
    best_step: int
    select_token_accuracies: tuple[float, ...]


@dataclass(frozen=True)
class GenerativeTrialResult:
    init: str  # the initialisation actually used
    student: ArmResult
    baseline: ArmResult
    kd_gain: float  # dev exact match, distilled minus baseline
    kd_gain_test: float
    flops_per_token: int  # forward FLOPs of one generated token at the mean prompt length
    params: int


def fine_tune_teacher(teacher: PreTrainedModel, data: GenerativeData, settings: TrainSettings,
                      device: torch.device, eval_batch_size: int = 64) -> PhaseResult:
    """The teacher learns the targets (cross-entropy), keeping its best select weights."""
    teacher.to(device)
    return train_phase("teacher", teacher, data.train, label_loss, settings, device, data.pad_id,
                       on_evaluation=_select_hook(teacher, data, eval_batch_size, device))


def kd_loss(loss: GenerativeLoss, vocab_size: int):
    def loss_fn(model, batch) -> dict[str, torch.Tensor]:
        logits, targets = target_logits(model, batch)
        top = TopK(batch["top_ids"], batch["top_log_probs"], batch["top_tail"], vocab_size)
        return token_distillation_loss(logits, top, targets, loss.alpha, loss.T, loss.T_s,
                                       loss.reverse_kl)

    return loss_fn


def run_generative_trial(teacher: PreTrainedModel, top: TopK, data: GenerativeData,
                         shape: ModelShape, init: str, loss: GenerativeLoss,
                         settings: TrainSettings, device: torch.device,
                         eval_batch_size: int = 64) -> tuple[GenerativeTrialResult, PreTrainedModel]:
    """Distil a student of ``shape`` (``init`` from ``teacher`` as loaded, before its
    fine-tune) on the fine-tuned teacher's ``top``; returns the result and the student."""
    student, used = build_student(teacher, shape, init, settings.seed,
                                  auto_class=AutoModelForCausalLM)
    baseline = copy.deepcopy(student).to(device)
    student.to(device)
    arms = {}
    for name, model, split, loss_fn in (
            ("baseline", baseline, data.train, label_loss),
            ("distill", student, data.train.with_teacher(top), kd_loss(loss, top.vocab_size))):
        phase = train_phase(name, model, split, loss_fn, settings, device, data.pad_id,
                            on_evaluation=_select_hook(model, data, eval_batch_size, device))
        arms[name] = ArmResult(
            *(score_generative(model, split_, eval_batch_size, device, data.pad_id, data.eos_id)
              for split_ in (data.dev, data.test)),
            phase.steps, phase.best_step, phase.select_accuracies)
    student_arm, baseline_arm = arms["distill"], arms["baseline"]
    result = GenerativeTrialResult(
        init=used, student=student_arm, baseline=baseline_arm,
        kd_gain=student_arm.dev.exact_match - baseline_arm.dev.exact_match,
        kd_gain_test=student_arm.test.exact_match - baseline_arm.test.exact_match,
        flops_per_token=count_generated_token_flops(student, mean_prompt_length(data.dev),
                                                    device),
        params=count_params(student)[0])
    return result, student


def _select_hook(model, data: GenerativeData, batch_size: int, device: torch.device):
    return lambda _evaluation: teacher_forced(model, data.select, batch_size, device,
                                              data.pad_id)[0]
