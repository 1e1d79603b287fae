"""Tests for harness.compute: FLOPs and params against hand counts, mode and grads restored."""

import math

import pytest
import torch
import transformers

from harness.compute import (
    ComputeCost,
    count_forward_flops,
    count_params,
    count_train_flops_per_example,
    measure_compute,
    measure_latency_ms,
)

CPU = torch.device("cpu")
H, I, LAYERS, HEADS, LABELS, VOCAB, POSITIONS, TYPES = 32, 64, 2, 2, 3, 100, 64, 2
L = 7  # sequence length the counts are made at


def tiny_bert(attn_implementation: str = "eager", attention_dropout: float = 0.1):
    # A fresh config per model: from_config writes the attention implementation into it.
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=I, max_position_embeddings=POSITIONS, type_vocab_size=TYPES,
        num_labels=LABELS, attention_probs_dropout_prob=attention_dropout,
    )
    model = transformers.AutoModelForSequenceClassification.from_config(
        config, attn_implementation=attn_implementation
    )
    assert model.config._attn_implementation == attn_implementation
    return model


def hand_forward_flops(L: int) -> int:
    """Matmul FLOPs of the tiny BERT classifier, batch 1, from the architecture (2 per multiply-add)."""
    qkvo = 4 * 2 * L * H * H  # Q, K, V and output projections
    scores = 2 * L * L * H  # Q @ K^T over all heads: heads * (L x d) @ (d x L), heads * d = H
    weighted_sum = 2 * L * L * H  # softmax(scores) @ V
    ffn = 2 * 2 * L * H * I  # H -> I -> H
    pooler = 2 * H * H  # dense on the first token only
    classifier = 2 * H * LABELS
    return LAYERS * (qkvo + scores + weighted_sum + ffn) + pooler + classifier  # embeddings: lookups


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_forward_flops_match_hand_count(impl):
    assert count_forward_flops(tiny_bert(impl), L, CPU) == hand_forward_flops(L)
    assert count_forward_flops(tiny_bert(impl), 2 * L, CPU) == hand_forward_flops(2 * L)


def test_train_flops_are_three_times_forward_when_backward_is_plain_matmuls():
    # Embeddings are trainable, so every matmul's inputs require grad: its backward computes
    # both operands' gradients, two matmuls of the forward's size. Eager attention is bmms.
    model = tiny_bert("eager")
    forward = count_forward_flops(model, L, CPU)
    assert count_train_flops_per_example(model, L, CPU) == 3 * forward


def test_train_flops_with_fused_sdpa_count_the_recomputed_scores():
    # Without attention dropout, CPU training runs the fused sdpa kernel, whose backward
    # recomputes Q @ K^T: one extra scores matmul per layer on top of 3x forward.
    model = tiny_bert("sdpa", attention_dropout=0.0)
    forward = count_forward_flops(model, L, CPU)
    train = count_train_flops_per_example(model, L, CPU)
    assert train == 3 * forward + LAYERS * 2 * L * L * H
    assert 2.5 * forward <= train <= 3.5 * forward


def test_params_match_hand_count():
    embedding_tables = (VOCAB + POSITIONS + TYPES) * H  # word, position, token type
    embedding_layernorm = 2 * H
    layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H  # attention, LN, FFN, LN
    pooler, classifier = H * H + H, H * LABELS + LABELS
    total = embedding_tables + embedding_layernorm + LAYERS * layer + pooler + classifier

    model = tiny_bert()
    assert total == sum(p.numel() for p in model.parameters())
    assert count_params(model) == (total, total - embedding_tables)


@pytest.mark.parametrize("training", [True, False])
def test_every_measure_restores_mode_and_leaves_no_grads(training):
    model = tiny_bert("sdpa")
    model.train(training)
    count_forward_flops(model, L, CPU)
    assert model.training is training
    count_train_flops_per_example(model, L, CPU)
    assert model.training is training
    assert all(p.grad is None for p in model.parameters())
    latency_ms = measure_latency_ms(model, L, CPU, warmup=1, repeats=3)
    assert model.training is training
    assert latency_ms > 0 and math.isfinite(latency_ms)
    assert all(p.grad is None for p in model.parameters())


def test_train_count_keeps_gradients_the_caller_already_had():
    model = tiny_bert()
    weight = model.classifier.weight
    weight.grad = torch.full_like(weight, 7.0)
    count_train_flops_per_example(model, L, CPU)
    assert torch.equal(weight.grad, torch.full_like(weight, 7.0))
    assert model.bert.embeddings.word_embeddings.weight.grad is None


def test_measure_compute_combines_the_measures():
    model = tiny_bert("sdpa")
    cost = measure_compute(model, L, CPU)
    params, non_embedding = count_params(model)
    assert cost == ComputeCost(
        flops_per_example=hand_forward_flops(L),
        train_flops_per_example=cost.train_flops_per_example,
        seq_len=L,
        params=params,
        non_embedding_params=non_embedding,
        latency_ms=cost.latency_ms,
    )
    assert 2.5 * cost.flops_per_example <= cost.train_flops_per_example <= 3.5 * cost.flops_per_example
    assert cost.latency_ms > 0


@pytest.mark.parametrize("seq_len", [0, POSITIONS + 1])
def test_rejects_sequence_lengths_the_model_cannot_take(seq_len):
    with pytest.raises(ValueError, match="seq_len"):
        count_forward_flops(tiny_bert(), seq_len, CPU)
