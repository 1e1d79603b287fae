"""harness.student_loss.attention_maps: eager attention and no attention-probability dropout
inside the block, and the student and the shared teacher back as they came after it."""

from __future__ import annotations

import pytest
import torch
import transformers

from harness.student_loss import attention_maps

from .families import CONFIGS

ATTENTION_DROPOUT, HIDDEN_DROPOUT = 0.25, 0.15
# The module whose dropout acts on the attention probabilities, per family.
ATTENTION_MODULE = {"bert": "attention.self", "distilbert": "attention"}


def tiny(model_type: str, attn_implementation: str):
    config = CONFIGS[model_type]()
    config.vocab_size = 100
    if model_type == "distilbert":
        config.attention_dropout = ATTENTION_DROPOUT
        config.dropout = config.seq_classif_dropout = HIDDEN_DROPOUT
    else:
        config.attention_probs_dropout_prob = ATTENTION_DROPOUT
        config.hidden_dropout_prob = HIDDEN_DROPOUT
    model = transformers.AutoModelForSequenceClassification.from_config(
        config, attn_implementation=attn_implementation)
    assert model.config._attn_implementation == attn_implementation
    return model


def dropouts(model) -> dict[str, float]:
    """Every dropout module's p, by name."""
    return {name: module.p for name, module in model.named_modules()
            if isinstance(module, torch.nn.Dropout)}


def state(student, teacher) -> tuple:
    return (student.config._attn_implementation, teacher.config._attn_implementation,
            dropouts(student), dropouts(teacher))


@pytest.fixture(params=["bert", "distilbert"])
def models(request):
    # Two implementations that are not eager, and not the same: a swapped restore shows.
    student, teacher = tiny(request.param, "sdpa"), tiny("bert", "flex_attention")
    return request.param, student, teacher


def test_inside_eager_and_no_attention_dropout_on_the_student_alone(models):
    model_type, student, teacher = models
    before = dropouts(student)
    attention = [name for name in before
                 if name.endswith(f"{ATTENTION_MODULE[model_type]}.dropout")]
    assert len(attention) == 2  # one per layer
    with attention_maps(student, teacher, needed=True):
        assert student.config._attn_implementation == "eager"
        assert teacher.config._attn_implementation == "eager"
        inside = dropouts(student)
        assert all(inside[name] == 0.0 for name in attention)
        # Hidden-state and classifier dropouts keep their p.
        assert {k: v for k, v in inside.items() if k not in attention} == {
            k: v for k, v in before.items() if k not in attention}
        ids = torch.randint(0, 100, (2, 5))
        output = student(input_ids=ids, output_attentions=True)
        assert len(output.attentions) == 2 and output.attentions[0].shape == (2, 2, 5, 5)


def test_both_models_leave_as_they_came(models):
    _, student, teacher = models
    before = state(student, teacher)
    assert set(before[2].values()) == {ATTENTION_DROPOUT, HIDDEN_DROPOUT}
    with attention_maps(student, teacher, needed=True):
        pass
    assert state(student, teacher) == before


def test_both_models_leave_as_they_came_when_the_block_raises(models):
    _, student, teacher = models
    before = state(student, teacher)
    with pytest.raises(RuntimeError, match="diverged"):
        with attention_maps(student, teacher, needed=True):
            assert student.config._attn_implementation == "eager"
            raise RuntimeError("diverged")
    assert state(student, teacher) == before


def test_not_needed_changes_nothing(models):
    _, student, teacher = models
    before = state(student, teacher)
    with attention_maps(student, teacher, needed=False):
        assert state(student, teacher) == before
    assert state(student, teacher) == before
