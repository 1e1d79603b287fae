"""Online consistent views (``transfer.online``): a fresh view of every distillation batch,
the same for its label-only baseline, which the teacher scores as the student reads it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import harness.student_loss
import harness.train
from harness.config import ConfigError, TransferConfig, default_trial_config
from harness.study_file import load_study_config
from harness.transfer import OnlineViews, neighbour_table
from tests.conftest import SMOKE
from tests.test_transfer import SPECIALS, _split

PAD = 0


def _views(neighbour_prob: float = 0.5, mask_prob: float = 0.0) -> OnlineViews:
    candidates = torch.arange(1000, 2000)
    embeddings = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0))
    return OnlineViews(TransferConfig(neighbour_prob=neighbour_prob, mask_prob=mask_prob,
                                      neighbours=4),
                       mask_id=103, special_ids=tuple(SPECIALS),
                       neighbours=neighbour_table(embeddings, candidates, 4))


def test_a_view_keeps_the_template_and_padding_and_is_fresh_at_every_step():
    batch = _split(n=32).batch(torch.arange(32), PAD)
    views = _views()
    view = views(batch, seed=3, step=7)
    fixed = torch.isin(batch["input_ids"], torch.tensor(SPECIALS)) | (batch["attention_mask"] == 0)
    assert view["input_ids"].shape == batch["input_ids"].shape
    assert torch.equal(view["input_ids"][fixed], batch["input_ids"][fixed])
    words = ~fixed
    assert not torch.isin(view["input_ids"][words], torch.tensor(SPECIALS)).any()
    changed = (view["input_ids"][words] != batch["input_ids"][words]).double().mean().item()
    assert 0.4 < changed < 0.6
    assert all(torch.equal(view[k], batch[k]) for k in batch if k != "input_ids")
    # Seeded by (seed, step): the same view again, another one at the next step or seed.
    assert torch.equal(views(batch, seed=3, step=7)["input_ids"], view["input_ids"])
    assert not torch.equal(views(batch, seed=3, step=8)["input_ids"], view["input_ids"])
    assert not torch.equal(views(batch, seed=4, step=7)["input_ids"], view["input_ids"])
    masked = _views(neighbour_prob=0.0, mask_prob=0.3)(batch, seed=0, step=0)["input_ids"]
    assert set(masked[masked != batch["input_ids"]].tolist()) == {103}


def _online(config, **rules):
    return dataclasses.replace(config, transfer=dataclasses.replace(
        config.transfer, online=True, neighbour_prob=0.5, mask_prob=0.0, neighbours=5,
        **rules))


def test_online_views_make_the_teacher_score_exactly_the_students_input(
        smoke_config, smoke_shared, cache_dir, monkeypatch):
    from harness.pipeline import run_trial
    from harness.shared import prepare_shared

    config = _online(smoke_config)
    shared = prepare_shared(config, torch.device("cpu"), cache_dir)
    teacher, train = shared.teacher, shared.text.tokens["train"]
    distilled, baseline = [], []  # (model, input ids, attention mask) per forward pass

    def recording(calls, original, training_only):
        def model_inputs(model, batch):
            if model.training or not training_only:  # not the select and final evaluations
                calls.append((model, batch["input_ids"].clone(),
                              batch["attention_mask"].clone()))
            return original(model, batch)
        return model_inputs

    monkeypatch.setattr(harness.student_loss, "model_inputs",
                        recording(distilled, harness.student_loss.model_inputs, False))
    monkeypatch.setattr(harness.train, "model_inputs",
                        recording(baseline, harness.train.model_inputs, True))
    trial = default_trial_config(config, alpha=0.5, seed=5)
    result = run_trial(config, trial, shared)

    # Each step: the student's forward, then the teacher's on the very same tensor.
    students, teachers = distilled[0::2], distilled[1::2]
    assert len(students) == result.distill_steps == len(teachers)
    assert all(m is not teacher for m, _, _ in students)
    assert all(m is teacher for m, _, _ in teachers)
    for (_, ids, mask), (_, teacher_ids, teacher_mask) in zip(students, teachers):
        assert torch.equal(ids, teacher_ids) and torch.equal(mask, teacher_mask)
    # The views are not the training examples: a share of their word-pieces replaced.
    clean = {tuple(train.ids[train.offsets[i]:train.offsets[i + 1]].tolist())
             for i in range(len(train))}
    rows = [tuple(row[m.bool()].tolist()) for _, ids, mask in students
            for row, m in zip(ids, mask)]
    assert sum(row in clean for row in rows) / len(rows) < 0.2
    # The baseline read the same view at every step both arms ran.
    steps = min(result.baseline_steps, result.distill_steps)
    assert len(baseline) == result.baseline_steps
    for (_, ids, _), (_, baseline_ids, _) in zip(students[:steps], baseline[:steps]):
        assert torch.equal(ids, baseline_ids)
    # The teacher's forward on every distillation example is counted.
    examples = sum(len(ids) for _, ids, _ in teachers)
    assert result.train_flops == examples * (result.cost.train_flops_per_example
                                             + result.teacher_flops_per_example)


def test_a_baseline_on_online_views_is_its_own_artifact(smoke_config, smoke_shared, cache_dir):
    from harness.pipeline import train_baseline
    from harness.shared import prepare_shared
    from harness.student import resolve_student

    config = _online(smoke_config)
    shared = prepare_shared(config, torch.device("cpu"), cache_dir)
    student = resolve_student(config, default_trial_config(config, seed=6), shared)

    def logits(views):
        baseline = train_baseline(config.pipeline, student, 0, shared.teacher_key, cache_dir,
                                  shared.device, views)
        return torch.cat([baseline.logits["dev"], baseline.logits["test"]])

    clean, online = logits(None), logits(shared.views)
    assert not torch.allclose(clean, online)
    assert torch.equal(logits(shared.views), online)  # and reused as such


@pytest.mark.parametrize("overrides, expected", [
    (["transfer.online=true", "transfer.neighbour_prob=0.3", "transfer.copies=2"],
     "transfer.online: views are made online or offline"),
    (["transfer.online=true", "transfer.mask_prob=0"],
     "transfer.online: every view would be the example itself"),
    (["transfer.online=true", "transfer.neighbour_prob=0.3", "teacher.ensemble=2"],
     "transfer.online: the teacher scores every view as it is made"),
])
def test_online_views_refuse_what_they_cannot_do(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_study_config(SMOKE, overrides)
