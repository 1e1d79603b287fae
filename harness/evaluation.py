"""Scores from predicted logits: accuracy, macro-F1, agreement and paired counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Scores:
    accuracy: float
    macro_f1: float
    examples: int


def score(logits: torch.Tensor, labels: torch.Tensor) -> Scores:
    predictions = logits.argmax(dim=-1)
    f1s = []
    for label in range(logits.shape[-1]):
        true_positive = ((predictions == label) & (labels == label)).sum().item()
        predicted, actual = (predictions == label).sum().item(), (labels == label).sum().item()
        f1s.append(2 * true_positive / (predicted + actual) if predicted + actual else 0.0)
    accuracy = (predictions == labels).double().mean().item()
    return Scores(accuracy, sum(f1s) / len(f1s), len(labels))


def agreement(logits: torch.Tensor, reference_logits: torch.Tensor) -> float:
    """Share of examples where both predict the same class."""
    return (logits.argmax(-1) == reference_logits.argmax(-1)).double().mean().item()


def discordant_counts(logits: torch.Tensor, other_logits: torch.Tensor,
                      labels: torch.Tensor) -> tuple[int, int]:
    """(examples only ``logits`` gets right, examples only ``other_logits`` gets right).

    These two counts are what a paired interval on the accuracy difference needs.
    """
    right, other_right = logits.argmax(-1) == labels, other_logits.argmax(-1) == labels
    return int((right & ~other_right).sum()), int((other_right & ~right).sum())
