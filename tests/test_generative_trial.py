"""A generative trial on a synthetic task whose answer is a function of the prompt
(reverse four digits): a teacher trained on it first, then a smaller causal-LM student
distilled from its top-k cache against its label-only baseline."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch
import transformers

from harness.config import ModelShape
from harness.generative import (GenerativeData, greedy_targets, label_loss, score_generative,
                                teacher_top_k, tokenize_examples, with_targets)
from harness.generative_trial import GenerativeLoss, distil_generative, fine_tune_teacher
from harness.models import build_student
from harness.train import TrainSettings, length_grouped_batches, train_phase

from .generative_task import digit_tokenizer, reversal_examples, tiny_lm

CPU = torch.device("cpu")


def settings(epochs: float, seed: int) -> TrainSettings:
    return TrainSettings(epochs=epochs, lr=3e-3, batch_size=32, warmup_ratio=0.1,
                         weight_decay=0.0, max_grad_norm=1.0, seed=seed, eval_every=40,
                         keep_best=True)


def reversal_data(tokenizer, train: int = 1500) -> GenerativeData:
    splits = [tokenize_examples(tokenizer, *reversal_examples(n, seed), 16)
              for n, seed in ((train, 0), (100, 1), (200, 2), (200, 3))]
    return GenerativeData(*splits, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)


def scored(model, data: GenerativeData):
    return score_generative(model, data.dev, 64, CPU, data.pad_id, data.eos_id,
                            data.max_new_tokens)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tokenizer = digit_tokenizer()
    data = reversal_data(tokenizer)
    untrained = tiny_lm("llama", 2, 64, 4, key_value_heads=2)  # grouped-query attention
    teacher = copy.deepcopy(untrained)
    fine_tune_teacher(teacher, data, settings(8, seed=0), CPU)
    top = teacher_top_k(teacher, data.train, k=4, batch_size=64, device=CPU, pad_id=data.pad_id)
    loss = GenerativeLoss(alpha=0.8, T=2.0, T_s=2.0)
    shape = ModelShape(num_layers=1, hidden_size=64, num_heads=4, intermediate_size=256)
    result, student = distil_generative(untrained, data.train.with_teacher(top), data, shape,
                                        "teacher-layers", loss, settings(4, seed=1),
                                        settings(4, seed=1), CPU)
    return tokenizer, data, teacher, result, student


def test_the_distilled_student_reads_the_prompt_and_a_prompt_blind_one_cannot(trained):
    tokenizer, data, teacher, result, _ = trained
    teacher_scores, _ = scored(teacher, data)
    assert teacher_scores.exact_match > 0.9
    # The same student trained on the targets with every prompt replaced by "=": the best it
    # can do is the targets' marginal, and 4 random digits match by chance 1 in 10^4.
    prompts, targets = reversal_examples(1500, 0)
    blind_train = tokenize_examples(tokenizer, ["="] * len(prompts), targets, 16)
    blind, _ = build_student(tiny_lm("llama", 2, 64, 4, key_value_heads=2),
                             ModelShape(1, 64, 4, 256), "teacher-layers", seed=1,
                             auto_class=transformers.AutoModelForCausalLM)
    train_phase("blind", blind, blind_train, label_loss, settings(4, seed=1), CPU, data.pad_id)
    blind_scores, _ = scored(blind, data)
    assert blind_scores.exact_match < 0.02
    assert result.student.scores["dev"].exact_match > 0.5 > blind_scores.exact_match + 0.4
    assert result.init == "teacher-layers"
    assert result.baseline.scores["dev"].exact_match > 0.5


def test_both_arms_have_the_same_budget_and_selection_rule(trained):
    _, data, _, result, _ = trained
    budget = settings(4, seed=1).total_steps(len(data.train))
    assert result.student.phase.steps == result.baseline.phase.steps == budget
    evaluations = len(result.student.phase.select_accuracies)
    assert evaluations == len(result.baseline.phase.select_accuracies) == -(-budget // 40)
    for arm in (result.student.phase, result.baseline.phase):  # each kept its best evaluation
        best = max(range(evaluations), key=lambda i: (arm.select_accuracies[i], -i))
        assert arm.best_step == min(40 * (best + 1), budget)


def test_the_saved_student_reloads_and_reproduces_its_generations(trained, tmp_path):
    tokenizer, data, _, result, student = trained
    student.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("1 2 =")["input_ids"] == tokenizer("1 2 =")["input_ids"]
    generated = greedy_targets(again, data.dev, 64, CPU, data.pad_id, data.eos_id,
                               data.max_new_tokens)
    assert generated == greedy_targets(student, data.dev, 64, CPU, data.pad_id, data.eos_id,
                                       data.max_new_tokens)
    scores, again_generated = scored(again, data)
    assert scores.exact_match == result.student.scores["dev"].exact_match
    assert again_generated == result.student.generations["dev"]


def test_with_alpha_zero_the_distilled_arm_is_its_baseline_exactly(trained):
    # alpha = 0 leaves the labels' cross-entropy alone: if both arms share init, seed, data
    # order, steps and selection, the distilled arm must come out as its baseline, bit for bit.
    _, data, teacher, _, _ = trained
    top = teacher_top_k(teacher, data.train, k=4, batch_size=64, device=CPU, pad_id=data.pad_id)
    result, _ = distil_generative(tiny_lm("llama", 2, 64, 4, key_value_heads=2),
                                  data.train.with_teacher(top), data,
                                  ModelShape(1, 64, 4, 256), "teacher-layers",
                                  GenerativeLoss(alpha=0.0, T=2.0, T_s=2.0),
                                  settings(2, seed=5), settings(2, seed=5), CPU)
    assert result.student.phase == dataclasses.replace(
        result.baseline.phase, wall_seconds=result.student.phase.wall_seconds)
    assert result.student.generations == result.baseline.generations
    assert result.student.scores == result.baseline.scores


def test_the_teachers_outputs_replace_the_targets_and_come_in_the_baselines_batches(trained):
    tokenizer, data, _, _, _ = trained
    generator = random.Random(0)
    # Outputs of other lengths than the targets: batches grouped by their own lengths differ.
    outputs = [[generator.randrange(4, 14) for _ in range(generator.randrange(1, 7))]
               for _ in range(len(data.train))]
    outputs[0] = list(range(4, 14)) * 2  # longer than max_length leaves it room for
    relabelled = with_targets(data.train, outputs, data.eos_id, max_length=16)
    for i in range(len(data.train)):
        prompt = data.train.sequence(i)[:int(data.train.prompt_lengths[i])].tolist()
        room = 16 - len(prompt) - 1
        assert relabelled.sequence(i).tolist() == prompt + outputs[i][:room] + [data.eos_id]
    assert len(relabelled.sequence(0)) == 16
    ours = length_grouped_batches(relabelled, 32, torch.Generator().manual_seed(3),
                                  data.train.lengths())
    baselines = length_grouped_batches(data.train, 32, torch.Generator().manual_seed(3))
    own = length_grouped_batches(relabelled, 32, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(ours, baselines, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(own, baselines, strict=True))


def test_sequence_level_kd_learns_the_teachers_outputs_not_the_data_targets(trained):
    # A "teacher" whose outputs copy the prompt where the data reverses it: at alpha = 0 the
    # distilled arm learns its outputs alone (pseudo-labels), the baseline the data's targets.
    tokenizer, data, teacher, _, _ = trained
    copies = [data.train.sequence(i)[:int(data.train.prompt_lengths[i]) - 1].tolist()
              for i in range(len(data.train))]  # the digits before "="
    relabelled = with_targets(data.train, copies, data.eos_id, max_length=16)
    top = teacher_top_k(teacher, relabelled, k=4, batch_size=64, device=CPU, pad_id=0)
    result, _ = distil_generative(tiny_lm("llama", 2, 64, 4, key_value_heads=2),
                                  relabelled.with_teacher(top), data, ModelShape(1, 64, 4, 256),
                                  "teacher-layers", GenerativeLoss(alpha=0.0, T=1.0, T_s=1.0),
                                  settings(4, seed=1), settings(4, seed=1), CPU)
    dev = data.dev
    prompts = [dev.sequence(i)[:int(dev.prompt_lengths[i]) - 1].tolist() for i in range(len(dev))]
    copied = sum(g == p for g, p in zip(result.student.generations["dev"], prompts)) / len(dev)
    assert copied > 0.5 and result.student.scores["dev"].exact_match < 0.2
    assert result.baseline.scores["dev"].exact_match > 0.5
    assert result.student.phase.steps == result.baseline.phase.steps
