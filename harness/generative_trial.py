"""A generative student (a causal LM, or an encoder-decoder) distilled token by token from
its teacher's top-k cache (``harness.token_kd``), measured against its label-only baseline.

    fine_tune_teacher(teacher, data, teacher_settings, device)
    top = teacher_top_k(teacher, data.train, k, ...)            # once per teacher and data
    result, student = distil_generative(untrained_teacher, data.train.with_teacher(top), data,
                                        shape, init, loss, baseline_settings,
                                        distill_settings, device)

Both arms start from one student (built once: same init and seed), read the training
examples in the same order for the same maximum steps (``harness.budget`` refuses phase
settings that differ in steps) and are evaluated on the select split by token accuracy
(stopping, and keeping the best weights, as the schedule says), so ``kd_gain`` (dev exact
match, distilled minus baseline) measures distillation alone. Dev and test score each final
model once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from harness.config import ModelShape
from harness.generative import (GenerativeData, GenerativeScores, GenerativeSplit, label_loss,
                                score_generative, target_logits, teacher_forced)
from harness.models import build_student, language_model_class
from harness.token_kd import TopK, token_distillation_loss
from harness.train import PhaseResult, StepLogger, TrainSettings, train_phase

SCORED_SPLITS = ("dev", "test")  # each final model is scored on these once


@dataclass(frozen=True)
class GenerativeLoss:
    alpha: float
    T: float
    T_s: float
    reverse_kl: bool = False  # KL(p_{T_s} || q_T): mode-seeking (MiniLLM, GKD)


@dataclass(frozen=True)
class ArmResult:
    scores: dict[str, GenerativeScores]  # "dev", "test"
    generations: dict[str, list[list[int]]]  # greedy, per example
    phase: PhaseResult


@dataclass(frozen=True)
class DistilledLM:
    init: str  # the initialisation actually used
    student: ArmResult
    baseline: ArmResult


def fine_tune_teacher(teacher: PreTrainedModel, data: GenerativeData, settings: TrainSettings,
                      device: torch.device, eval_batch_size: int = 64) -> PhaseResult:
    """The teacher learns the targets (cross-entropy), evaluated on the select split."""
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


def distil_generative(pretrained: PreTrainedModel, distill_on: GenerativeSplit,
                      data: GenerativeData, shape: ModelShape, init: str, loss: GenerativeLoss,
                      baseline_settings: TrainSettings, distill_settings: TrainSettings,
                      device: torch.device, eval_batch_size: int = 64,
                      log_step: StepLogger | None = None
                      ) -> tuple[DistilledLM, PreTrainedModel]:
    """Distil a student of ``shape`` (``init`` from the teacher as loaded, ``pretrained``,
    before its fine-tune) on ``distill_on``, the training prompts with the fine-tuned
    teacher's top-k attached at each target token (the data's targets, or the teacher's
    outputs for sequence-level KD); the baseline learns the data's targets. Returns the
    result and the student (on ``device``; the baseline is left on the CPU)."""
    if baseline_settings.seed != distill_settings.seed:
        raise ValueError("both arms train on one seed: the same init, dropout and data order")
    if distill_on.teacher is None or not torch.equal(distill_on.prompt_lengths,
                                                     data.train.prompt_lengths):
        raise ValueError("the distilled arm reads the training prompts, with the teacher's "
                         "top-k attached")
    student, used = build_student(pretrained, shape, init, distill_settings.seed,
                                  auto_class=language_model_class(pretrained.config))
    baseline = copy.deepcopy(student)
    arms = {}
    for name, model, split, loss_fn, settings in (
            ("baseline", baseline, data.train, label_loss, baseline_settings),
            ("distill", student, distill_on, kd_loss(loss, distill_on.teacher.vocab_size),
             distill_settings)):
        model.to(device)
        # Batched by the data's lengths: the teacher's outputs, of other lengths, come in the
        # baseline's batches, so both arms read the same prompts in the same order.
        phase = train_phase(name, model, split, loss_fn, settings, device, data.pad_id,
                            on_evaluation=_select_hook(model, data, eval_batch_size, device),
                            log_step=log_step, order_by=data.train.lengths())
        scored = {scored_split: score_generative(
            model, getattr(data, scored_split), eval_batch_size, device, data.pad_id,
            data.eos_id, data.max_new_tokens) for scored_split in SCORED_SPLITS}
        arms[name] = ArmResult({key: value[0] for key, value in scored.items()},
                               {key: value[1] for key, value in scored.items()}, phase)
        if model is baseline:  # scored: only one arm holds the device's memory at a time
            baseline.cpu()
    return DistilledLM(used, arms["distill"], arms["baseline"]), student


def _select_hook(model, data: GenerativeData, batch_size: int, device: torch.device):
    return lambda _evaluation: teacher_forced(model, data.select, batch_size, device,
                                              data.pad_id)[0]
