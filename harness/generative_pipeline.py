"""One trial of a generative study (``task: causal-lm`` or ``seq2seq``), end to end:
``run_generative_trial`` is the method, one named call per stage.

It returns the classification pipeline's ``TrialResult``, so the sweep, its confirmation
and the analysis read it as any trial: an example is right when greedy generation writes
its target exactly, so ``dev_accuracy`` is the dev exact match and ``kd_gain`` its paired
difference; ``flops_per_example`` is a forward over a dev example of mean length (prompt
and target; ``generative_shared.example_cost``), as for a classifier; ``task_scores`` adds
token accuracy, per-token NLL (and, for seq2seq, corpus BLEU) and ``flops_per_token`` (one
generated token at the mean prompt length, from the key-value cache) for the student, its
baseline and the teacher, and the student's ``latency_per_token_ms``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from harness.artifacts import write_folder_atomically
from harness.budget import equal_budgets
from harness.compute import count_generated_token_flops, measure_token_latency_ms
from harness.config import StudyConfig, TrialConfig
from harness.evaluation import Evaluation, evaluate_outcomes
from harness.generative import bleu, exact_matches, mean_prompt_length
from harness.generative_shared import GenerativeShared, example_cost
from harness.generative_trial import DistilledLM, GenerativeLoss, distil_generative
from harness.models import save_model, student_shape
from harness.pipeline import TrialHooks, TrialResult
from harness.train import train_settings

GENERATIONS_FILE = "generations.json"  # beside a saved student: its dev and test generations


def run_generative_trial(study_config: StudyConfig, trial_config: TrialConfig,
                        shared: GenerativeShared, hooks: TrialHooks = TrialHooks(),
                        save_student_to: Path | None = None) -> TrialResult:
    """Distil one generative student configuration and measure it against its baseline."""
    started = time.perf_counter()
    pipeline, device = study_config.pipeline, shared.device
    shape = student_shape(shared.pretrained_teacher, trial_config.num_layers,
                          trial_config.hidden_size, study_config.student.head_dim,
                          trial_config.intermediate_size)
    distilled, student = distil_generative(
        shared.pretrained_teacher, shared.distill_on[trial_config.kd_level], shared.data,
        shape, trial_config.init,
        GenerativeLoss(trial_config.alpha, trial_config.T, trial_config.T_s,
                       study_config.generation.reverse_kl),
        train_settings(pipeline, pipeline.baseline.epochs, pipeline.baseline.lr,
                       trial_config.seed),
        train_settings(pipeline, pipeline.distill.epochs, trial_config.lr, trial_config.seed),
        device, pipeline.eval_batch_size, hooks.log)
    evaluation = evaluate_generations(distilled, shared)
    cost = example_cost(student, shared.data, device, pipeline.latency_repeats)
    if save_student_to is not None:
        save_generative_lm(student, shared.tokenizer, distilled.student.generations,
                           save_student_to)
    teacher_cost, phase = shared.teacher_cost, distilled.student.phase
    return TrialResult(
        trial=trial_config, shape=shape, init=distilled.init, evaluation=evaluation, cost=cost,
        train_flops=phase.examples_seen * cost.train_flops_per_example,
        wall_seconds=time.perf_counter() - started, select_accuracies=phase.select_accuracies,
        distill_lr=trial_config.lr, distill_steps=phase.steps, distill_best_step=phase.best_step,
        baseline_lr=pipeline.baseline.lr, baseline_steps=distilled.baseline.phase.steps,
        baseline_best_step=distilled.baseline.phase.best_step, transfer_examples=0,
        flops_share=cost.flops_per_example / teacher_cost.flops_per_example,
        budget_matched=equal_budgets(pipeline, len(shared.data.train)),
        teacher_dev_accuracy=shared.teacher_scores["dev"].exact_match,
        teacher_test_accuracy=shared.teacher_scores["test"].exact_match,
        teacher_flops_per_example=teacher_cost.flops_per_example,
        teacher_params=teacher_cost.params, teacher_latency_ms=teacher_cost.latency_ms,
        teacher_member_dev_accuracies=(), teacher_member_test_accuracies=(),
        task_scores=generative_scores(distilled, shared, count_generated_token_flops(
            student, mean_prompt_length(shared.data.dev), device), measure_token_latency_ms(
            student, mean_prompt_length(shared.data.dev), device, pipeline.latency_repeats)))


def evaluate_generations(distilled: DistilledLM, shared: GenerativeShared) -> Evaluation:
    """Exact match per example for both arms; agreement: the share of test examples whose
    generation is the teacher's."""
    data = shared.data

    def right(generations: dict[str, list[list[int]]]) -> dict[str, torch.Tensor]:
        return {name: torch.tensor(exact_matches(generations[name], getattr(data, name)))
                for name in ("dev", "test")}

    def agreement(generations: dict[str, list[list[int]]]) -> float:
        pairs = zip(generations["test"], shared.teacher_generations["test"], strict=True)
        return sum(a == b for a, b in pairs) / len(data.test)

    student, baseline = distilled.student.generations, distilled.baseline.generations
    return evaluate_outcomes(right(student), right(baseline), agreement(student),
                             agreement(baseline))


def generative_scores(distilled: DistilledLM, shared: GenerativeShared, flops_per_token: int,
                      latency_per_token_ms: float) -> dict[str, float]:
    # The latency is measured in the trial, while peers may train: a reported axis only.
    scores = {"flops_per_token": flops_per_token,
              "teacher_flops_per_token": shared.teacher_flops_per_token,
              "latency_per_token_ms": latency_per_token_ms}
    arms = (("", distilled.student), ("baseline_", distilled.baseline))
    for prefix, scored, generations in (
            *((prefix, arm.scores, arm.generations) for prefix, arm in arms),
            ("teacher_", shared.teacher_scores, shared.teacher_generations)):
        for split, split_scores in scored.items():
            for name in ("exact_match", "token_accuracy", "nll"):
                scores[f"{prefix}{split}_{name}"] = getattr(split_scores, name)
            if shared.task == "seq2seq":
                scores[f"{prefix}{split}_bleu"] = bleu(shared.tokenizer, generations[split],
                                                       getattr(shared.data, split))
    return scores


def save_generative_lm(model, tokenizer, generations: dict[str, list[list[int]]],
                   folder: Path) -> None:
    """A folder ``AutoModelForCausalLM`` (or ``AutoModelForSeq2SeqLM``) loads, with the
    greedy generations the trial scored, so a reloaded student can be checked against them."""
    def write(staging: Path) -> None:
        save_model(model, tokenizer, staging)
        (staging / GENERATIONS_FILE).write_text(json.dumps(generations))

    write_folder_atomically(folder, write)

