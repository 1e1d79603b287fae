"""Token-level distillation of a generative model from a top-k cache of its teacher.

A teacher's full next-token distribution over a 30k-150k vocabulary, for every target token
of a training set, does not fit on disk; its ``k`` most likely tokens do. ``TopK`` holds,
per target token, the teacher's k largest log-probabilities at temperature 1, their token
ids and the log of the probability left over (the *tail*: every other token together).

The loss, per target token and averaged over the target tokens of a batch:

    L = alpha * T^2 * KL(q_T || p_{T_s}) + (1 - alpha) * CE(y, p_1)

as the classification loss (``harness.losses``, Hinton et al. 2015) with the vocabulary
as its classes, over k + 1 outcomes: the teacher's k tokens and the tail. The student's
tail is exact (one minus its probabilities of the k tokens, from its full softmax). The
teacher's tail at T = 1 is exact too; at another T the cache cannot know how the tail's mass
is spread, so it is taken as spread evenly over the V - k tokens outside the top k: each
such token gets logit ``log(tail) - log(V - k)``, then all logits are divided by T. Exact
when k covers the vocabulary (no tail), and at T = 1 for any k; elsewhere it errs by how
uneven the tail is, which shrinks as k grows. ``reverse=True`` is KL(p_{T_s} || q_T) over
the same k + 1 outcomes (mode-seeking, as MiniLLM and GKD argue for generative students).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class TopK:
    """The teacher's top-k next-token log-probabilities (T = 1) at N target tokens."""

    ids: Tensor  # (N, k) int64, most likely first
    log_probs: Tensor  # (N, k) float32
    tail: Tensor  # (N,) float32, log of the probability outside the k tokens (-inf: none)
    vocab_size: int

    @staticmethod
    def of(logits: Tensor, k: int) -> TopK:
        """The top-k of teacher logits (N, V), computed in float32."""
        if not 1 <= k <= logits.shape[-1]:
            raise ValueError(f"k must lie in [1, {logits.shape[-1]}], got {k}")
        log_probs = F.log_softmax(logits.float(), dim=-1)
        top, ids = log_probs.topk(k, dim=-1)
        rest = log_probs.scatter(-1, ids, -math.inf)
        return TopK(ids, top, torch.logsumexp(rest, dim=-1), logits.shape[-1])

    def rows(self, index: Tensor) -> TopK:
        return TopK(self.ids[index], self.log_probs[index], self.tail[index], self.vocab_size)

    def tensors(self) -> dict[str, Tensor]:
        return {"ids": self.ids, "log_probs": self.log_probs, "tail": self.tail,
                "vocab_size": torch.tensor(self.vocab_size)}

    @staticmethod
    def from_tensors(named: dict[str, Tensor]) -> TopK:
        return TopK(named["ids"], named["log_probs"], named["tail"],
                    int(named["vocab_size"]))


def teacher_log_probs(top: TopK, T: float) -> Tensor:
    """log q_T over the k + 1 outcomes (the k tokens, then the tail), (N, k + 1)."""
    outside = top.vocab_size - top.ids.shape[-1]
    if outside == 0:
        tail_logit = torch.full_like(top.tail, -math.inf)
    else:  # the tail's mass spread evenly: V - k tokens of logit tail - log(V - k) each
        tail_logit = math.log(outside) + (top.tail - math.log(outside)) / T
    return F.log_softmax(torch.cat([top.log_probs / T, tail_logit[:, None]], dim=-1), dim=-1)


def student_log_probs(logits: Tensor, ids: Tensor, T_s: float) -> Tensor:
    """log p_{T_s} over the teacher's k tokens, then the rest of the vocabulary, (N, k + 1)."""
    scaled = logits.float() / T_s
    total = torch.logsumexp(scaled, dim=-1, keepdim=True)
    top = scaled.gather(-1, ids) - total
    rest = torch.logsumexp(scaled.scatter(-1, ids, -math.inf), dim=-1, keepdim=True) - total
    return torch.cat([top, rest], dim=-1)


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) per row; an outcome a gives no mass adds nothing (0 log 0 = 0)."""
    # Masked before the product, not after: a torch.where over inf - inf would pass NaN
    # gradients back from the branch it drops.
    some = log_a > -math.inf
    log_a, log_b = log_a.masked_fill(~some, 0.0), log_b.masked_fill(~some, 0.0)
    return (some * log_a.exp() * (log_a - log_b)).sum(-1)


def token_distillation_loss(student_logits: Tensor, top: TopK, targets: Tensor, alpha: float,
                            T: float, T_s: float, reverse: bool = False) -> dict[str, Tensor]:
    """The loss above over N target tokens: student logits (N, V), the teacher's ``top``
    at the same N tokens, ``targets`` (N,) the true next tokens. Returns the total
    (``loss``) and its terms, ``kd`` (T^2 * KL, unweighted) and ``ce``."""
    if student_logits.shape[-1] != top.vocab_size:
        raise ValueError(f"student vocabulary {student_logits.shape[-1]} != the teacher's "
                         f"{top.vocab_size}")
    ce = F.cross_entropy(student_logits.float(), targets)
    if alpha == 0:
        return {"loss": ce, "ce": ce}
    log_q = teacher_log_probs(top, T)
    log_p = student_log_probs(student_logits, top.ids, T_s)
    kd = T * T * (_kl(log_p, log_q) if reverse else _kl(log_q, log_p)).mean()
    return {"loss": alpha * kd + (1 - alpha) * ce, "kd": kd, "ce": ce}
