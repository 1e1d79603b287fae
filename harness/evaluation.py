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


@dataclass(frozen=True)
class Evaluation:
    """A distilled student against its label-only baseline and the teacher, on dev and
    test; the field names are the stored attributes'."""

    dev_accuracy: float
    test_accuracy: float
    dev_macro_f1: float
    test_macro_f1: float
    baseline_dev_accuracy: float
    baseline_test_accuracy: float
    kd_gain: float  # dev accuracy, distilled minus label-only baseline
    teacher_agreement: float  # share of test predictions equal to the teacher's
    baseline_teacher_agreement: float
    dev_examples: int
    test_examples: int
    kd_only_correct_dev: int  # the paired counts an interval on the KD gain needs
    baseline_only_correct_dev: int
    kd_only_correct_test: int
    baseline_only_correct_test: int


def evaluate_against_baseline(logits: dict[str, torch.Tensor],
                              baseline_logits: dict[str, torch.Tensor],
                              teacher_logits: dict[str, torch.Tensor],
                              labels: dict[str, torch.Tensor]) -> Evaluation:
    """Each argument maps "dev" and "test" to that split's logits (or labels)."""
    dev, test = score(logits["dev"], labels["dev"]), score(logits["test"], labels["test"])
    baseline_dev = score(baseline_logits["dev"], labels["dev"])
    kd_dev, base_dev = discordant_counts(logits["dev"], baseline_logits["dev"], labels["dev"])
    kd_test, base_test = discordant_counts(logits["test"], baseline_logits["test"], labels["test"])
    return Evaluation(
        dev_accuracy=dev.accuracy, test_accuracy=test.accuracy,
        dev_macro_f1=dev.macro_f1, test_macro_f1=test.macro_f1,
        baseline_dev_accuracy=baseline_dev.accuracy,
        baseline_test_accuracy=score(baseline_logits["test"], labels["test"]).accuracy,
        kd_gain=dev.accuracy - baseline_dev.accuracy,
        teacher_agreement=agreement(logits["test"], teacher_logits["test"]),
        baseline_teacher_agreement=agreement(baseline_logits["test"], teacher_logits["test"]),
        dev_examples=dev.examples, test_examples=test.examples,
        kd_only_correct_dev=kd_dev, baseline_only_correct_dev=base_dev,
        kd_only_correct_test=kd_test, baseline_only_correct_test=base_test)
