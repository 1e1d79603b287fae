"""The teacher-labelled transfer set: seeded augmentation rules, the KD-only loss on its
examples against a float64 hand computation, and a smoke study that distils on it."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from harness.config import TransferConfig
from harness.data import TokenizedSplit
from harness.student_loss import LogitKD, logit_losses
from harness.transfer import UNLABELED, augmented_copy, neighbour_table
from tests.test_study import load, run_smoke

CLS, SEP, MASK = 101, 102, 103
SPECIALS = [0, CLS, SEP, MASK]


def _split(n: int = 400, seed: int = 0) -> TokenizedSplit:
    g = torch.Generator().manual_seed(seed)
    sequences = [torch.cat([torch.tensor([CLS]), torch.randint(1000, 2000, (int(k),), generator=g),
                            torch.tensor([SEP])])
                 for k in torch.randint(1, 20, (n,), generator=g)]
    lengths = torch.tensor([len(s) for s in sequences])
    return TokenizedSplit(torch.cat(sequences), torch.cat([torch.zeros(1, dtype=torch.int64),
                                                           lengths.cumsum(0)]),
                          torch.randint(2, (n,), generator=g))


def _examples(split: TokenizedSplit) -> list[list[int]]:
    return [split.ids[split.offsets[i]:split.offsets[i + 1]].tolist() for i in range(len(split))]


def test_masking_replaces_word_pieces_at_the_asked_rate_and_never_the_template():
    split = _split()
    copy = augmented_copy(split, 0, TransferConfig(mask_prob=0.3, ngram_prob=0.0), MASK,
                          SPECIALS, seed=0)
    assert torch.equal(copy.offsets, split.offsets)  # no n-grams: same lengths
    assert (copy.labels == UNLABELED).all()
    words = ~torch.isin(split.ids, torch.tensor(SPECIALS))
    assert torch.equal(copy.ids[~words], split.ids[~words])  # [CLS], [SEP] untouched
    changed = copy.ids[words] != split.ids[words]
    assert (copy.ids[words][changed] == MASK).all()
    rate, n = changed.double().mean().item(), int(words.sum())
    assert abs(rate - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5  # four standard errors


def test_ngram_sampling_keeps_a_contiguous_run_between_the_special_tokens():
    split = _split()
    rules = TransferConfig(mask_prob=0.0, ngram_prob=0.5, max_ngram=3)
    copy = augmented_copy(split, 1, rules, MASK, SPECIALS, seed=0)
    shortened = 0
    for before, after in zip(_examples(split), _examples(copy)):
        assert after[0] == CLS and after[-1] == SEP
        inner, kept = before[1:-1], after[1:-1]
        if kept != inner:
            shortened += 1
            assert 1 <= len(kept) <= 3
            assert any(inner[i:i + len(kept)] == kept for i in range(len(inner)))
    eligible = sum(len(e) > 3 for e in _examples(split))  # 2+ word-pieces to choose from
    assert 0.4 * eligible < shortened < 0.6 * eligible


def test_the_neighbour_table_holds_each_word_pieces_nearest_candidates():
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(3000, 16, generator=g)
    candidates = torch.arange(1000, 2000)
    table = neighbour_table(embeddings, candidates, 5)
    unit = embeddings / embeddings.norm(dim=-1, keepdim=True)
    for token in (1000, 1234, 1999):  # by brute force, in float64
        similarity = {int(c): float(unit[token].double() @ unit[c].double())
                      for c in candidates if c != token}
        nearest = sorted(similarity, key=similarity.get, reverse=True)[:5]
        assert table[token].tolist() == nearest
    assert torch.equal(table[5], torch.full((5,), 5))  # not a candidate: left as it is


def test_neighbour_replacement_keeps_length_and_never_emits_special_tokens():
    split = _split()
    g = torch.Generator().manual_seed(1)
    embeddings = torch.randn(3000, 16, generator=g)
    candidates = torch.unique(split.ids)
    candidates = candidates[~torch.isin(candidates, torch.tensor(SPECIALS))]
    table = neighbour_table(embeddings, candidates, 4)
    rules = TransferConfig(mask_prob=0.0, ngram_prob=0.0, neighbour_prob=0.4)
    copy = augmented_copy(split, 0, rules, MASK, SPECIALS, seed=0, neighbours=table)
    assert torch.equal(copy.offsets, split.offsets)  # every example keeps its length
    words = ~torch.isin(split.ids, torch.tensor(SPECIALS))
    assert torch.equal(copy.ids[~words], split.ids[~words])  # the template untouched
    assert not torch.isin(copy.ids[words], torch.tensor(SPECIALS)).any()
    changed = copy.ids[words] != split.ids[words]
    before, after = split.ids[words][changed], copy.ids[words][changed]
    assert all(int(a) in table[int(b)].tolist() for b, a in zip(before, after))
    rate, n = changed.double().mean().item(), int(words.sum())
    assert abs(rate - 0.4) < 4 * (0.4 * 0.6 / n) ** 0.5
    # Without neighbour replacement a copy is what it was before the rule existed.
    plain = TransferConfig(mask_prob=0.2, ngram_prob=0.3)
    assert torch.equal(augmented_copy(split, 0, plain, MASK, SPECIALS, seed=3, neighbours=table).ids,
                       augmented_copy(split, 0, plain, MASK, SPECIALS, seed=3).ids)


def test_copies_are_seeded_and_differ_from_each_other():
    split, rules = _split(), TransferConfig(mask_prob=0.2, ngram_prob=0.3)
    first = augmented_copy(split, 0, rules, MASK, SPECIALS, seed=5)
    again = augmented_copy(split, 0, rules, MASK, SPECIALS, seed=5)
    second = augmented_copy(split, 1, rules, MASK, SPECIALS, seed=5)
    assert torch.equal(first.ids, again.ids) and torch.equal(first.offsets, again.offsets)
    assert _examples(first) != _examples(second)


def test_transfer_examples_get_the_kd_term_alone():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(6, 3, generator=g, dtype=torch.float64)
    teacher = torch.randn(6, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 2, UNLABELED, 1, UNLABELED, UNLABELED])
    alpha, T, T_s = 0.3, 2.0, 3.0
    losses = logit_losses(LogitKD(alpha, T, T_s, None), student.float(), teacher.float(), labels)

    def kd(i):
        q = torch.softmax(teacher[i] / T, -1)
        return T * T * (q * (q.log() - torch.log_softmax(student[i] / T_s, -1))).sum()

    def ce(i):
        return -torch.log_softmax(student[i] / T_s, -1)[labels[i]]

    expected = sum(alpha * kd(i) + (1 - alpha) * ce(i) if labels[i] >= 0 else kd(i)
                   for i in range(6)) / 6
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["transfer_kd"].item() == pytest.approx(
        (sum(kd(i) for i in (2, 4, 5)) / 3).item(), rel=1e-5)


def test_smoke_study_distils_pruned_students_on_a_transfer_set_built_once(in_tmp, smoke_shared):
    pruned = ("--set", "student.init=teacher-pruned", "--set", "student.head_dim=32",
              "--set", "transfer.copies=2", "--set", "search.hidden_size={choices: [32]}")
    code, storage = run_smoke(in_tmp, 1, *pruned)
    assert code == 0
    cache = Path(smoke_shared.cache) / "transfer"
    (artifact,) = [p for p in cache.iterdir() if p.is_dir()]
    manifest = artifact / "manifest.json"
    written = manifest.stat().st_mtime_ns
    code, _ = run_smoke(in_tmp, 2, *pruned)  # a second process: the next trial
    assert code == 0
    assert [p for p in cache.iterdir() if p.is_dir()] == [artifact]
    assert manifest.stat().st_mtime_ns == written  # reused, not rebuilt

    trials = [t for t in load(storage).trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2
    train_examples = len(smoke_shared.text.tokens["train"])
    for trial in trials:
        attrs = trial.user_attrs
        assert attrs["init"] == "teacher-pruned"
        assert attrs["transfer_examples"] == 2 * train_examples
        assert attrs["transfer_copies"] == 2
        # The distillation's 2 epochs are passes over the labelled examples and the transfer
        # examples on top; the baseline trains as many steps (harness.budget).
        batches = math.ceil(3 * train_examples / 32)
        assert attrs["distill_steps"] == attrs["baseline_steps"] == 2 * batches
        assert attrs["budget_matched"] is True
        assert attrs["train_flops"] > attrs["transfer_examples"] * attrs["teacher_flops_per_example"]


def test_unlabeled_texts_join_the_transfer_set(in_tmp, smoke_shared):
    texts = [f"an unlabelled review number {i} of a film" for i in range(37)]
    pd.DataFrame({"text": texts}).to_csv(in_tmp / "unlabeled.csv", index=False)
    code, storage = run_smoke(in_tmp, 1, "--set", "transfer.unlabeled=unlabeled.csv",
                              "--set", "transfer.copies=1")
    assert code == 0
    (trial,) = [t for t in load(storage).trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert trial.user_attrs["transfer_examples"] == len(smoke_shared.text.tokens["train"]) + 37


def test_an_unlabeled_file_without_the_text_column_is_refused_before_training(in_tmp, capsys):
    pd.DataFrame({"review": ["a text"]}).to_csv(in_tmp / "unlabeled.csv", index=False)
    code, storage = run_smoke(in_tmp, 1, "--set", "transfer.unlabeled=unlabeled.csv")
    error = capsys.readouterr().err
    assert code == 2 and "transfer.unlabeled" in error and "'text'" in error, error
    assert not Path(storage.removeprefix("journal:")).exists() and not (in_tmp / "runs").exists()


def test_a_study_builds_neighbour_views_from_its_teachers_embeddings(smoke_config, tmp_path):
    import dataclasses

    from harness.shared import prepare_shared

    rules = TransferConfig(copies=1, mask_prob=0.0, ngram_prob=0.0, neighbour_prob=0.5,
                           neighbours=5)
    config = dataclasses.replace(smoke_config, transfer=rules)
    shared = prepare_shared(config, torch.device("cpu"), tmp_path / "cache")
    train, views = shared.text.tokens["train"], shared.transfer.tokens
    assert torch.equal(views.offsets, train.offsets)  # one view per example, lengths kept
    special = torch.tensor(shared.text.tokenizer.all_special_ids)
    words = ~torch.isin(train.ids, special)
    assert torch.equal(views.ids[~words], train.ids[~words])
    assert not torch.isin(views.ids[words], special).any()
    assert set(views.ids[words].tolist()) <= set(train.ids[words].tolist())  # the data's own
    changed = (views.ids[words] != train.ids[words]).double().mean().item()
    assert 0.4 < changed < 0.6
    # The teacher labelled each view as it is.
    from harness.train import predict_logits

    labelled = predict_logits(shared.teacher, views, config.pipeline.eval_batch_size,
                              torch.device("cpu"), shared.text.pad_id)
    torch.testing.assert_close(shared.transfer.teacher_logits, labelled, rtol=0, atol=1e-5)
