"""Generative examples: target-only labels, the teacher's top-k cache in batch order,
greedy generation and its exact match, FLOPs per generated token."""

from __future__ import annotations

import pytest
import torch

from harness.compute import count_generated_token_flops, measure_token_latency_ms
from harness.generative import (IGNORE, greedy_targets, label_loss, score_generative,
                                target_logits, teacher_top_k, tokenize_examples)
from harness.token_kd import TopK

from .generative_task import digit_tokenizer, reversal_examples, tiny_lm

CPU = torch.device("cpu")


def test_only_the_target_tokens_are_labelled_each_at_the_position_before_it():
    tokenizer = digit_tokenizer()
    split = tokenize_examples(tokenizer, ["1 2 =", "3 ="], ["2 1", "3"], max_length=16)
    assert split.prompt_lengths.tolist() == [3, 2] and split.target_lengths().tolist() == [3, 2]
    batch = split.batch(torch.tensor([0, 1]), pad_id=0)
    eos = tokenizer.eos_token_id
    assert batch["input_ids"].tolist() == [tokenizer("1 2 = 2 1")["input_ids"] + [eos],
                                           tokenizer("3 = 3")["input_ids"] + [eos, 0, 0]]
    two, one, three = (tokenizer.convert_tokens_to_ids(t) for t in ("2", "1", "3"))
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, two, one, eos, IGNORE],
                                        [IGNORE, three, eos, IGNORE, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1] * 4 + [0] * 2]


def test_a_long_example_keeps_its_prompt_end_and_its_eos():
    split = tokenize_examples(digit_tokenizer(), ["1 2 3 4 5 6 7 ="], ["9 9 9 9 9 9 9"], 10)
    sequence = digit_tokenizer().convert_ids_to_tokens(split.sequence(0).tolist())
    # The target keeps 10 // 2 tokens with its eos, the prompt the other 5, from its end.
    assert sequence == ["4", "5", "6", "7", "=", "9", "9", "9", "9", "</s>"]


def test_the_teacher_cache_follows_the_split_and_every_batch_reads_its_own_rows():
    tokenizer = digit_tokenizer()
    prompts, targets = reversal_examples(12, seed=0)
    prompts[3], targets[3] = "5 =", "5 5 5 5 5"  # lengths differ, so batches reorder
    split = tokenize_examples(tokenizer, prompts, targets, 16)
    teacher = tiny_lm("gpt2", 1, 32, 2)
    top = teacher_top_k(teacher, split, k=5, batch_size=4, device=CPU, pad_id=0)
    with_teacher = split.with_teacher(top)
    for indices in (torch.tensor([3, 0, 7]), torch.tensor([11])):
        batch = with_teacher.batch(indices, pad_id=0)
        logits, _ = target_logits(teacher.eval(), batch)  # one by one below: no padding
        expected = TopK.of(logits, 5)
        assert torch.equal(batch["top_ids"], expected.ids)
        torch.testing.assert_close(batch["top_log_probs"], expected.log_probs)
    with pytest.raises(ValueError, match="target tokens"):
        split.with_teacher(top.rows(torch.arange(3)))


def test_batched_greedy_generation_equals_one_prompt_at_a_time():
    tokenizer = digit_tokenizer()
    prompts, targets = reversal_examples(6, seed=1)
    prompts[2] = "7 ="  # left padding in its batch
    split = tokenize_examples(tokenizer, prompts, targets, 16)
    for family in ("gpt2", "llama"):
        model = tiny_lm(family, 1, 32, 2, seed=3)
        together = greedy_targets(model, split, 6, CPU, 0, tokenizer.eos_token_id, 5)
        alone = [greedy_targets(model, tokenize_examples(tokenizer, [p], [t], 16), 1, CPU, 0,
                                tokenizer.eos_token_id, 5)[0] for p, t in zip(prompts, targets)]
        assert together == alone, family


def test_exact_match_counts_generations_that_are_the_target_exactly():
    tokenizer = digit_tokenizer()
    prompts, targets = reversal_examples(200, seed=2)
    split = tokenize_examples(tokenizer, prompts, targets, 16)
    model = tiny_lm("gpt2", 1, 32, 2)
    from harness.train import TrainSettings, train_phase
    train_phase("lm", model, split, label_loss,
                TrainSettings(epochs=30, lr=3e-3, batch_size=32, warmup_ratio=0.1,
                              weight_decay=0.0, max_grad_norm=1.0, seed=0), CPU, 0)
    scores, generated = score_generative(model, split, 64, CPU, 0, tokenizer.eos_token_id, 5)
    assert generated == greedy_targets(model, split, 64, CPU, 0, tokenizer.eos_token_id, 5)
    assert all(len(tokens) <= 5 for tokens in generated)
    wanted = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in targets]
    assert scores.exact_match == sum(g == w for g, w in zip(generated, wanted)) / 200
    assert 0 < scores.exact_match and scores.target_tokens == 5 * 200
    assert 0 <= scores.token_accuracy <= 1 and scores.nll > 0


@pytest.mark.parametrize("prompt_len", [5, 13])
def test_flops_per_generated_token_are_the_matrix_products_of_one_cached_step(prompt_len):
    layers, d, vocab = 2, 32, 14
    model = tiny_lm("gpt2", layers, d, 2)
    keys = prompt_len + 1
    per_layer = 2 * (4 * d * d + 2 * d * 4 * d) + 2 * 2 * keys * d  # projections, FFN, QK and AV
    assert count_generated_token_flops(model, prompt_len, CPU) == layers * per_layer + 2 * d * vocab


def test_token_latency_is_timed_on_cached_steps_within_the_models_positions():
    model = tiny_lm("gpt2", 1, 32, 2)  # 32 positions: a prompt of 30 leaves 2 steps
    for prompt_len in (5, 30):
        latency = measure_token_latency_ms(model, prompt_len, CPU, repeats=20)
        assert 0 < latency < 1000
    assert model.training  # the flag restored
