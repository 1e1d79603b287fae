"""Scores from predicted logits: accuracy, F1, Matthews correlation, agreement, paired
counts and, where the data groups its examples, the counts per group. F1 and the Matthews
correlation are the GLUE tasks' reported metrics (MRPC and QQP report F1 of the positive
class, CoLA the Matthews correlation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Scores:
    accuracy: float
    macro_f1: float
    f1: float  # of class 1 with two classes (GLUE's F1), else macro_f1
    mcc: float  # Matthews correlation (Gorodkin's multi-class form); 0 where undefined
    examples: int


def score(logits: torch.Tensor, labels: torch.Tensor) -> Scores:
    classes = logits.shape[-1]
    predictions = logits.argmax(dim=-1)
    # confusion[true, predicted], in float64 so the correlation's products cannot overflow
    confusion = torch.zeros(classes, classes, dtype=torch.float64)
    confusion.index_put_((labels.long(), predictions.long()),
                         torch.ones(len(labels), dtype=torch.float64), accumulate=True)
    correct, actual, predicted = confusion.diagonal(), confusion.sum(1), confusion.sum(0)
    f1s = torch.where(actual + predicted > 0, 2 * correct / (actual + predicted), 0.0)
    total, agree = confusion.sum(), correct.sum()
    covariance = agree * total - (actual * predicted).sum()
    spread = ((total ** 2 - (predicted ** 2).sum()) * (total ** 2 - (actual ** 2).sum())).sqrt()
    return Scores(accuracy=(agree / total).item(), macro_f1=f1s.mean().item(),
                  f1=(f1s[1] if classes == 2 else f1s.mean()).item(),
                  mcc=(covariance / spread).item() if spread > 0 else 0.0,
                  examples=len(labels))


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
class ClusterCounts:
    """Per group of a split's examples (groups in sorted order): its examples and how many
    of them the distilled student and its baseline got right. Examples of one group (the
    snippets of one movie) are correlated, so intervals over examples need these
    (``analysis.stats.cluster_robust_interval``), not only the totals."""

    sizes: tuple[int, ...]
    correct: tuple[int, ...]
    baseline_correct: tuple[int, ...]


def cluster_counts(logits: torch.Tensor, baseline_logits: torch.Tensor, labels: torch.Tensor,
                   groups: tuple[str, ...]) -> ClusterCounts:
    names = sorted(set(groups))
    index = {name: i for i, name in enumerate(names)}
    ids = torch.tensor([index[group] for group in groups], dtype=torch.int64)

    def per_group(values: torch.Tensor) -> tuple[int, ...]:
        totals = torch.zeros(len(names), dtype=torch.int64).index_add_(0, ids, values.long())
        return tuple(totals.tolist())

    return ClusterCounts(sizes=per_group(torch.ones_like(labels)),
                         correct=per_group(logits.argmax(-1) == labels),
                         baseline_correct=per_group(baseline_logits.argmax(-1) == labels))


@dataclass(frozen=True)
class Evaluation:
    """A distilled student against its label-only baseline and the teacher, on dev and
    test; the field names are the stored attributes'."""

    dev_accuracy: float
    test_accuracy: float
    # None for a generative task, whose outcome per example is right or wrong, not a class
    dev_macro_f1: float | None
    test_macro_f1: float | None
    dev_f1: float | None
    test_f1: float | None
    dev_mcc: float | None
    test_mcc: float | None
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
    dev_clusters: ClusterCounts | None  # None where the data has no groups
    test_clusters: ClusterCounts | None


def evaluate_against_baseline(logits: dict[str, torch.Tensor],
                              baseline_logits: dict[str, torch.Tensor],
                              teacher_logits: dict[str, torch.Tensor],
                              labels: dict[str, torch.Tensor],
                              groups: dict[str, tuple[str, ...] | None]) -> Evaluation:
    """Each argument maps "dev" and "test" to that split's logits (or labels, or each
    example's group: None where the data has none)."""
    clusters = {split: None if groups[split] is None else cluster_counts(
        logits[split], baseline_logits[split], labels[split], groups[split])
        for split in ("dev", "test")}
    dev, test = score(logits["dev"], labels["dev"]), score(logits["test"], labels["test"])
    baseline_dev = score(baseline_logits["dev"], labels["dev"])
    kd_dev, base_dev = discordant_counts(logits["dev"], baseline_logits["dev"], labels["dev"])
    kd_test, base_test = discordant_counts(logits["test"], baseline_logits["test"], labels["test"])
    return Evaluation(
        dev_accuracy=dev.accuracy, test_accuracy=test.accuracy,
        dev_macro_f1=dev.macro_f1, test_macro_f1=test.macro_f1,
        dev_f1=dev.f1, test_f1=test.f1, dev_mcc=dev.mcc, test_mcc=test.mcc,
        baseline_dev_accuracy=baseline_dev.accuracy,
        baseline_test_accuracy=score(baseline_logits["test"], labels["test"]).accuracy,
        kd_gain=dev.accuracy - baseline_dev.accuracy,
        teacher_agreement=agreement(logits["test"], teacher_logits["test"]),
        baseline_teacher_agreement=agreement(baseline_logits["test"], teacher_logits["test"]),
        dev_examples=dev.examples, test_examples=test.examples,
        kd_only_correct_dev=kd_dev, baseline_only_correct_dev=base_dev,
        kd_only_correct_test=kd_test, baseline_only_correct_test=base_test,
        dev_clusters=clusters["dev"], test_clusters=clusters["test"])


def evaluate_outcomes(right: dict[str, torch.Tensor], baseline_right: dict[str, torch.Tensor],
                      teacher_agreement: float, baseline_teacher_agreement: float) -> Evaluation:
    """The evaluation of a task scored right or wrong per example (a generation that is its
    target exactly): ``right`` and ``baseline_right`` map "dev" and "test" to (n,) bools."""
    def only(a: torch.Tensor, b: torch.Tensor) -> int:
        return int((a & ~b).sum())

    accuracy = {split: float(right[split].double().mean()) for split in ("dev", "test")}
    baseline = {split: float(baseline_right[split].double().mean()) for split in ("dev", "test")}
    return Evaluation(
        dev_accuracy=accuracy["dev"], test_accuracy=accuracy["test"],
        dev_macro_f1=None, test_macro_f1=None, dev_f1=None, test_f1=None, dev_mcc=None,
        test_mcc=None, baseline_dev_accuracy=baseline["dev"],
        baseline_test_accuracy=baseline["test"], kd_gain=accuracy["dev"] - baseline["dev"],
        teacher_agreement=teacher_agreement,
        baseline_teacher_agreement=baseline_teacher_agreement,
        dev_examples=len(right["dev"]), test_examples=len(right["test"]),
        kd_only_correct_dev=only(right["dev"], baseline_right["dev"]),
        baseline_only_correct_dev=only(baseline_right["dev"], right["dev"]),
        kd_only_correct_test=only(right["test"], baseline_right["test"]),
        baseline_only_correct_test=only(baseline_right["test"], right["test"]),
        dev_clusters=None, test_clusters=None)
