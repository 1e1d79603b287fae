"""The token-level KD loss from a top-k teacher cache against float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from harness.token_kd import TopK, teacher_log_probs, token_distillation_loss

V = 23


def _tokens(seed: int, n: int = 9, spread: float = 3.0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(n, V, generator=generator) * spread
    teacher = torch.randn(n, V, generator=generator) * spread
    targets = torch.randint(0, V, (n,), generator=generator)
    return student, teacher, targets


def full_vocabulary_reference(student, teacher, targets, alpha, T, T_s, reverse=False):
    """The loss over the whole vocabulary, in float64."""
    log_q = torch.log_softmax(teacher.double() / T, -1)
    log_p = torch.log_softmax(student.double() / T_s, -1)
    kl = ((log_p.exp() * (log_p - log_q)) if reverse else (log_q.exp() * (log_q - log_p)))
    ce = torch.nn.functional.cross_entropy(student.double(), targets)
    return alpha * T * T * kl.sum(-1).mean() + (1 - alpha) * ce


def bucketed_reference(student, teacher, targets, k, alpha, T_s):
    """At T = 1: the KL over the teacher's k tokens and one outcome for the rest, in float64."""
    log_q_full = torch.log_softmax(teacher.double(), -1)
    ids = log_q_full.topk(k, -1).indices
    p_full = torch.softmax(student.double() / T_s, -1)
    q_full = log_q_full.exp()
    q = torch.cat([q_full.gather(-1, ids), 1 - q_full.gather(-1, ids).sum(-1, keepdim=True)], -1)
    p = torch.cat([p_full.gather(-1, ids), 1 - p_full.gather(-1, ids).sum(-1, keepdim=True)], -1)
    kl = (q * (q.log() - p.log())).sum(-1).mean()
    return alpha * kl + (1 - alpha) * torch.nn.functional.cross_entropy(student.double(), targets)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("alpha", "T", "T_s"), [(0.7, 4.0, 4.0), (1.0, 2.0, 5.0),
                                                 (0.3, 0.5, 1.0), (0.0, 3.0, 3.0)])
def test_a_top_k_covering_the_vocabulary_is_the_full_loss(alpha, T, T_s, reverse):
    student, teacher, targets = _tokens(seed=1)
    student64 = student.double().requires_grad_()
    reference = full_vocabulary_reference(student64, teacher, targets, alpha, T, T_s, reverse)
    (ref_grad,) = torch.autograd.grad(reference, student64)
    student.requires_grad_()
    ours = token_distillation_loss(student, TopK.of(teacher, V), targets, alpha, T, T_s,
                                   reverse)["loss"]
    (grad,) = torch.autograd.grad(ours, student)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), reference.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("k", [1, 4, 12])
def test_at_teacher_temperature_one_the_tail_is_exact_for_any_k(k):
    student, teacher, targets = _tokens(seed=2)
    ours = token_distillation_loss(student, TopK.of(teacher, k), targets, 0.6, 1.0, 2.0)
    reference = bucketed_reference(student, teacher, targets, k, 0.6, 2.0)
    torch.testing.assert_close(ours["loss"].double(), reference, rtol=1e-5, atol=1e-6)


def test_the_tail_at_another_temperature_is_spread_evenly_over_the_other_tokens():
    # A teacher whose tokens outside its top 3 have equal logits: the even spread is exact,
    # so the k + 1 outcomes' probabilities at T are the full distribution's, pooled.
    logits = torch.tensor([[5.0, 3.0, 2.0] + [0.5] * (V - 3)])
    pooled = torch.softmax(logits.double() / 3.0, -1)
    expected = torch.cat([pooled[:, :3], pooled[:, 3:].sum(-1, keepdim=True)], -1)
    torch.testing.assert_close(teacher_log_probs(TopK.of(logits, 3), 3.0).exp().double(),
                               expected, rtol=1e-6, atol=1e-7)


def test_the_approximation_shrinks_as_k_grows():
    student, teacher, targets = _tokens(seed=3)
    reference = full_vocabulary_reference(student, teacher, targets, 1.0, 4.0, 4.0)
    errors = [abs(float(token_distillation_loss(student, TopK.of(teacher, k), targets, 1.0,
                                                4.0, 4.0)["loss"]) - float(reference))
              for k in (2, 8, 16, V)]
    assert errors[0] > errors[1] > errors[2] > errors[3] and errors[3] < 1e-5


def test_alpha_zero_is_cross_entropy_alone_and_the_cache_round_trips():
    student, teacher, targets = _tokens(seed=4)
    top = TopK.of(teacher, 5)
    again = TopK.from_tensors(top.tensors())
    assert torch.equal(again.ids, top.ids) and again.vocab_size == V
    assert math.isclose(float(top.log_probs.exp().sum(-1)[0] + top.tail.exp()[0]), 1.0,
                        rel_tol=1e-6)
    losses = token_distillation_loss(student, again, targets, 0.0, 4.0, 4.0)
    assert torch.equal(losses["loss"], torch.nn.functional.cross_entropy(student, targets))


def test_a_student_of_another_vocabulary_is_refused():
    student, teacher, targets = _tokens(seed=5)
    with pytest.raises(ValueError, match="vocabulary"):
        token_distillation_loss(student[:, :-1], TopK.of(teacher, 3), targets, 0.5, 2.0, 2.0)
