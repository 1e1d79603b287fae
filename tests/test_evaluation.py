"""Scores against scikit-learn's float64 implementations of the same metrics."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from harness.evaluation import score


@pytest.mark.parametrize("classes, seed", [(2, 0), (2, 1), (3, 2), (5, 3)])
def test_scores_match_sklearn(classes, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (300,), generator=generator)
    logits = torch.randn(300, classes, generator=generator)
    logits[torch.arange(300), labels] += 0.8  # better than chance, not perfect
    predicted = logits.argmax(-1).numpy()
    scores = score(logits, labels)
    assert scores.accuracy == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)
    assert scores.macro_f1 == pytest.approx(f1_score(labels, predicted, average="macro"), abs=1e-12)
    glue_f1 = f1_score(labels, predicted) if classes == 2 else f1_score(labels, predicted,
                                                                           average="macro")
    assert scores.f1 == pytest.approx(glue_f1, abs=1e-12)
    assert scores.mcc == pytest.approx(matthews_corrcoef(labels, predicted), abs=1e-12)


def test_a_constant_prediction_has_zero_correlation():
    labels = torch.tensor([0, 1, 1, 0, 1])
    logits = torch.tensor([[0.0, 1.0]] * 5)
    assert score(logits, labels).mcc == 0.0 == matthews_corrcoef(labels, [1] * 5)
