"""Tests for harness.train: the learning-rate schedule against a hand computation, the
length-grouped batching as a permutation of the split, and fractional epochs counted
step by step on a tiny BERT."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import AutoModelForSequenceClassification, BertConfig

from harness.data import TokenizedSplit
from harness.train import (
    TrainSettings,
    _warmup_linear_decay,
    cross_entropy_loss,
    length_grouped_batches,
    train_phase,
)

PAD_ID = 0
VOCAB = 50


def _split(n: int, seed: int, min_len: int = 2, max_len: int = 12) -> TokenizedSplit:
    """``n`` examples of random lengths in [min_len, max_len], ids in [1, VOCAB)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    ids = torch.randint(1, VOCAB, (int(offsets[-1]),), generator=g)
    labels = torch.randint(2, (n,), generator=g)
    return TokenizedSplit(ids, offsets, labels)


# ---- learning-rate schedule ----

def _hand_lr(peak: float, warmup: int, total: int, step: int) -> float:
    """The lr the ``step``-th optimiser step (1-based) uses: a linear ramp from 0 (at step
    0) that reaches ``peak`` at step ``warmup + 1``, then a straight line from ``peak`` there
    to 0 at step ``total + 1``, the step after the last, so the last step still learns."""
    if step <= warmup:
        return peak * step / (warmup + 1)
    return peak * (total + 1 - step) / (total - warmup)


@pytest.mark.parametrize("warmup,total", [(4, 10), (0, 5), (3, 3)])
def test_warmup_linear_decay_matches_hand_computation(warmup, total):
    peak = 0.5
    weight = torch.nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([weight], lr=peak)
    scheduler = _warmup_linear_decay(optimizer, warmup, total)
    used = []
    for step in range(1, total + 1):
        before = weight.detach().clone()
        weight.backward(torch.ones(()))  # gradient 1: plain SGD moves the weight by -lr
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        used.append(float(before - weight.detach()))
        assert used[-1] == pytest.approx(_hand_lr(peak, warmup, total, step), rel=1e-6)
    # After the last step the rate has decayed to exactly 0.
    assert optimizer.param_groups[0]["lr"] == 0.0
    assert scheduler.get_last_lr()[0] == 0.0


def test_warmup_linear_decay_chosen_steps():
    # warmup 4, total 10, peak 0.5: hand values at the first step, the end of warm-up,
    # the middle of the decay and the last step.
    peak, warmup, total = 0.5, 4, 10
    weight = torch.nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([weight], lr=peak)
    scheduler = _warmup_linear_decay(optimizer, warmup, total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        weight.backward(torch.ones(()))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    assert lrs[0] == pytest.approx(0.5 * 1 / 5)  # first step: 1/(warmup + 1) of the peak
    assert lrs[3] == pytest.approx(0.5 * 4 / 5)  # last warm-up step
    assert lrs[4] == pytest.approx(0.5)  # peak, right after warm-up
    assert lrs[7] == pytest.approx(0.5 * 3 / 6)  # halfway from step 5 (peak) to 11 (zero)
    assert lrs[9] == pytest.approx(0.5 * 1 / 6)  # last step: the smallest non-zero rate
    # The weight moved by the sum of the rates: every step used them.
    assert float(-weight.detach()) == pytest.approx(sum(lrs))
    assert max(lrs) == lrs[4] and all(a < b for a, b in zip(lrs[:4], lrs[1:5]))
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))


# ---- length-grouped batches ----

def test_length_grouped_batches_are_a_partition_of_the_split():
    split = _split(537, seed=0)  # two windows of 50 batches of 8: 400 + 137 examples
    batches = length_grouped_batches(split, 8, torch.Generator().manual_seed(1))
    flat = torch.cat(batches)
    assert sorted(flat.tolist()) == list(range(len(split)))  # each index exactly once
    assert all(1 <= len(b) <= 8 for b in batches)
    assert len(batches) == math.ceil(400 / 8) + math.ceil(137 / 8)
    # Grouped: within a batch examples are sorted by length, longest first.
    lengths = split.lengths()
    assert all(torch.all(lengths[b][:-1] >= lengths[b][1:]) for b in batches)
    # Grouping pays: far less padding than the same examples batched in index order.
    def padded(bs):
        return sum(int(lengths[b].max()) * len(b) for b in bs)
    assert padded(batches) < 0.9 * padded(torch.arange(len(split)).split(8))


def test_length_grouped_batches_are_seeded():
    split = _split(300, seed=2)

    def order(seed):
        return torch.cat(length_grouped_batches(split, 8, torch.Generator().manual_seed(seed)))

    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    # One generator across epochs (as train_phase uses it): each epoch reshuffles.
    g = torch.Generator().manual_seed(3)
    first, second = (torch.cat(length_grouped_batches(split, 8, g)) for _ in range(2))
    assert not torch.equal(first, second)


# ---- fractional epochs ----

def _tiny_bert(seed: int = 0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=16,
                        max_position_embeddings=16, num_labels=2, pad_token_id=PAD_ID)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.mark.parametrize("epochs,n,batch_size", [(1.5, 10, 4), (0.4, 10, 4), (2.0, 10, 4),
                                                 (1.5, 7, 3)])
def test_fractional_epochs_count_steps_hooks_and_examples(epochs, n, batch_size):
    split = _split(n, seed=5)
    steps_per_pass = math.ceil(n / batch_size)
    expected_steps = math.ceil(epochs * steps_per_pass)
    expected_passes = math.ceil(expected_steps / steps_per_pass)  # the partial one included

    fed = []  # index tensors of every batch the loss saw

    def counting_loss(model, batch):
        fed.append(batch["index"].clone())
        return cross_entropy_loss(model, batch)

    hook_epochs = []

    def on_evaluation(epoch):
        hook_epochs.append((epoch, len(fed)))  # and how many steps had run by then
        return 0.5 + epoch / 100

    optimizer_steps = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: optimizer_steps.append(1))
    try:
        settings = TrainSettings(epochs=epochs, lr=1e-3, batch_size=batch_size,
                                 warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0, seed=0)
        result = train_phase("test", _tiny_bert(), split, counting_loss, settings,
                             torch.device("cpu"), PAD_ID, on_evaluation=on_evaluation)
    finally:
        handle.remove()

    assert len(optimizer_steps) == expected_steps
    assert result.steps == expected_steps == len(fed)
    # The hook runs after every pass, full or partial, with the pass number.
    assert [e for e, _ in hook_epochs] == list(range(1, expected_passes + 1))
    assert [s for _, s in hook_epochs] == [min(k * steps_per_pass, expected_steps)
                                           for k in range(1, expected_passes + 1)]
    assert result.select_accuracies == tuple(0.5 + e / 100 for e, _ in hook_epochs)
    assert result.examples_seen == sum(len(b) for b in fed)
    # Each full pass feeds every example once.
    for k in range(expected_steps // steps_per_pass):
        one_pass = torch.cat(fed[k * steps_per_pass:(k + 1) * steps_per_pass])
        assert sorted(one_pass.tolist()) == list(range(n))


def test_zero_epochs_trains_nothing():
    calls = []
    settings = TrainSettings(epochs=0.0, lr=1e-3, batch_size=4, warmup_ratio=0.1,
                             weight_decay=0.0, max_grad_norm=1.0, seed=0)
    result = train_phase("test", _tiny_bert(), _split(10, seed=6),
                         lambda m, b: calls.append(1), settings, torch.device("cpu"), PAD_ID,
                         on_evaluation=lambda e: calls.append(e))
    assert (result.steps, result.examples_seen, result.select_accuracies) == (0, 0, ())
    assert calls == []


# ---- step budgets, early stops and the best checkpoint ----

def _settings(**schedule) -> TrainSettings:
    return TrainSettings(epochs=1.0, lr=1e-2, batch_size=4, warmup_ratio=0.0, weight_decay=0.0,
                         max_grad_norm=1.0, seed=0, **schedule)


def _scripted(model, accuracies):
    """An evaluation hook that returns ``accuracies`` in turn and keeps the weights it saw."""
    seen = []

    def evaluate(evaluation):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return accuracies[evaluation - 1]

    return evaluate, seen


def test_min_steps_sets_the_budget_of_a_small_split():
    # 10 examples at batch 4: 3 steps an epoch; one epoch asked, at least 13 steps given.
    settings = _settings(min_steps=13, eval_every=5)
    model = _tiny_bert()
    evaluate, seen = _scripted(model, [0.1, 0.2, 0.3])
    result = train_phase("test", model, _split(10, seed=7), cross_entropy_loss, settings,
                         torch.device("cpu"), PAD_ID, on_evaluation=evaluate)
    assert result.steps == 13 == settings.total_steps(10)
    assert len(seen) == settings.evaluations(10) == 3  # steps 5, 10 and the last, 13
    assert result.best_step == 13  # keep_best off: the last weights


def test_keep_best_ends_on_the_weights_of_the_best_evaluation():
    settings = _settings(min_steps=12, eval_every=3, keep_best=True)
    model = _tiny_bert()
    evaluate, seen = _scripted(model, [0.5, 0.9, 0.6, 0.7])
    result = train_phase("test", model, _split(10, seed=7), cross_entropy_loss, settings,
                         torch.device("cpu"), PAD_ID, on_evaluation=evaluate)
    assert result.steps == 12 and result.best_step == 6
    assert not torch.equal(seen[1]["classifier.weight"], seen[3]["classifier.weight"])
    for name, value in model.state_dict().items():
        assert torch.equal(value, seen[1][name]), name


def test_patience_stops_after_evaluations_without_a_better_dev_accuracy():
    settings = _settings(min_steps=30, eval_every=2, patience=2, keep_best=True)
    model = _tiny_bert()
    # Ties do not count as better: the stop comes after the 2nd evaluation past the best.
    evaluate, seen = _scripted(model, [0.5, 0.8, 0.8, 0.7, 0.9, 0.9])
    result = train_phase("test", model, _split(10, seed=7), cross_entropy_loss, settings,
                         torch.device("cpu"), PAD_ID, on_evaluation=evaluate)
    assert result.select_accuracies == (0.5, 0.8, 0.8, 0.7)
    assert (result.steps, result.best_step) == (8, 4)
    assert torch.equal(model.state_dict()["classifier.weight"], seen[1]["classifier.weight"])
