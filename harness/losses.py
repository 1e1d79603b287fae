"""Distillation losses: pure functions of tensors, no state, no modules.

Every loss computes in float32 whatever the input dtype (bf16/fp16 are upcast, float64
is cast down) and detaches the teacher, so no gradient ever reaches it.

- ``distillation_loss`` / ``distillation_loss_terms``: soft-target logit distillation
  (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network").
- ``hidden_state_loss`` with ``layer_map`` and ``make_projection``: hidden-state matching
  through a learned projection (Romero et al. 2015, "FitNets"; Jiao et al. 2020,
  "TinyBERT", eq. 8 and the uniform layer mapping of sec. 4.2).
- ``attention_loss``: attention-distribution matching by KL (Wang et al. 2020, "MiniLM:
  Deep Self-Attention Distillation").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LOG_EPS = 1e-12  # attention probabilities are clamped to this before log


class LossTerms(NamedTuple):
    """Parts of the distillation loss, for logging: ``total = alpha*kd + (1-alpha)*ce``.

    ``kd`` is ``T^2 * KL(q || p)`` (temperature-scaled, not weighted by alpha) and ``ce``
    is ``CE(y, p)``. A term whose weight is exactly 0 is not computed and is ``None``.
    """

    total: Tensor
    kd: Tensor | None
    ce: Tensor | None


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                      alpha: float, T: float, T_s: float,
                      hard_label_temperature: float | None = None) -> Tensor:
    """Scalar distillation loss (Hinton et al. 2015), the KD loss:

        L = alpha * T^2 * KL(q || p) + (1 - alpha) * CE(y, p)
        q = softmax(z_t / T),  p = softmax(z_s / T_s)

    ``alpha`` weights the soft-target (KL) term; the KL is scaled by the *teacher*
    temperature squared, ``T^2``. See ``distillation_loss_terms`` for details and options.
    """
    return distillation_loss_terms(student_logits, teacher_logits, labels, alpha, T, T_s,
                                   hard_label_temperature).total


def distillation_loss_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                            alpha: float, T: float, T_s: float,
                            hard_label_temperature: float | None = None) -> LossTerms:
    """Distillation loss and its parts (Hinton, Vinyals, Dean 2015):

        L  = alpha * kd + (1 - alpha) * ce
        kd = T^2 * (1/B) sum_b sum_c q[b,c] * (log q[b,c] - log p[b,c])
        ce = -(1/B) sum_b log p'[b, y_b]
        q = softmax(z_t / T),  p = softmax(z_s / T_s),  p' = softmax(z_s / T_h)

    ``T_h`` is ``T_s`` (hard labels at the student's temperature, the seed's form) unless
    ``hard_label_temperature`` is given; ``hard_label_temperature=1.0`` is the classic
    variant (hard labels at temperature 1).
    Shapes: logits (B, C), labels (B,) integer class indices. ``alpha`` in [0, 1];
    ``T``, ``T_s``, ``T_h`` finite and > 0. Raises ValueError on anything else.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    T, T_s = _positive("T", T), _positive("T_s", T_s)
    T_h = T_s if hard_label_temperature is None else _positive(
        "hard_label_temperature", hard_label_temperature)
    _check_logits(student_logits, teacher_logits, labels)

    z_s = student_logits.float()  # (B, C)
    kd = ce = None
    if alpha > 0.0:
        log_p = F.log_softmax(z_s / T_s, dim=-1)
        # Teacher in log space too: a q that underflows to 0 contributes 0, not 0 * log 0.
        log_q = F.log_softmax(teacher_logits.detach().float() / T, dim=-1)
        # T^2 (teacher temperature, not T_s): with T == T_s it undoes the 1/T^2 shrink of
        # soft-target gradients, so with hard labels at T_h = 1 alpha keeps its meaning
        # across temperatures (at T_h = T_s it is not the
        # teacher's weight: the README's section on the loss).
        kd = T * T * F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    if alpha < 1.0:
        ce = F.cross_entropy(z_s / T_h, labels.long())
    if kd is None:
        total = ce
    elif ce is None:
        total = kd
    else:
        total = alpha * kd + (1.0 - alpha) * ce
    return LossTerms(total, kd, ce)


def teacher_blocks(num_student_layers: int, num_teacher_layers: int) -> tuple[range, ...]:
    """The teacher layers (0-based) each student layer stands in for: the teacher's stack cut
    into ``n_s`` consecutive blocks, block i = [floor(i * n_t / n_s), floor((i + 1) * n_t / n_s)).

    Both teacher-layer maps come from these blocks: a ``teacher-layers`` student copies the
    first layer of each block (``models.teacher_layer_choice``: DistilBERT's every other
    layer, starting at the bottom), and hidden-state and attention matching target the last
    (``layer_map``: TinyBERT's, ending at the top), where the block's output is. With 3 of
    6 layers, init copies 0, 2, 4 and matching targets 1, 3, 5.
    """
    for name, n in (("num_student_layers", num_student_layers),
                    ("num_teacher_layers", num_teacher_layers)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    if num_student_layers > num_teacher_layers:
        raise ValueError(f"cannot map {num_student_layers} student layers onto "
                         f"{num_teacher_layers} teacher layers one-to-one")
    # Integer arithmetic: no float rounding ties, exact last index.
    return tuple(range(i * num_teacher_layers // num_student_layers,
                       (i + 1) * num_teacher_layers // num_student_layers)
                 for i in range(num_student_layers))


def layer_map(num_student_layers: int, num_teacher_layers: int) -> tuple[int, ...]:
    """0-based teacher layer for each student layer, uniform as in TinyBERT (sec. 4.2): the
    last layer of its ``teacher_blocks`` block,

        j(i) = floor((i + 1) * n_t / n_s) - 1,   i = 0 .. n_s - 1

    When n_s divides n_t this is TinyBERT's g(m) = m * n_t / n_s in 1-based numbering;
    otherwise it floors, e.g. (2, 6) -> (2, 5), (4, 6) -> (0, 2, 3, 5). Strictly increasing,
    and the last student layer always maps to the last teacher layer (n_t - 1).
    Indices count Transformer layers: with Hugging Face outputs use ``hidden_states[j + 1]``
    (index 0 is the embeddings) and ``attentions[j]``.
    """
    return tuple(block[-1] for block in teacher_blocks(num_student_layers, num_teacher_layers))


def make_projection(student_width: int, teacher_width: int) -> nn.Linear | None:
    """Linear map from student to teacher width for ``hidden_state_loss`` (FitNets'
    regressor, TinyBERT's W_h), or None when the widths are equal. The caller owns it,
    trains it with the student and drops it after distillation."""
    if student_width < 1 or teacher_width < 1:
        raise ValueError(f"widths must be positive, got {student_width}, {teacher_width}")
    return None if student_width == teacher_width else nn.Linear(student_width, teacher_width)


def hidden_state_loss(student_hidden: Sequence[Tensor], teacher_hidden: Sequence[Tensor],
                      projection: nn.Module | None = None,
                      attention_mask: Tensor | None = None) -> Tensor:
    """Mean squared error between paired hidden states (FitNets; TinyBERT eq. 8):

        L = (1/L) sum_l sum_{(b,t) valid} ||P(h_s^l[b,t]) - h_t^l[b,t]||^2 / (N_valid * d_t)

    ``student_hidden[l]`` (B, S, d_s) is paired with ``teacher_hidden[l]`` (B, S, d_t) by
    the caller (see ``layer_map``). ``P`` is ``projection`` (one module shared by all
    layers, required when d_s != d_t) or the identity. ``attention_mask`` (B, S), 1 for
    tokens and 0 for padding, excludes padding from the mean; None counts every position.
    """
    losses = []
    for s, t in _pairs("hidden state", student_hidden, teacher_hidden):
        if s.ndim != 3 or t.ndim != 3 or s.shape[:2] != t.shape[:2]:
            raise ValueError(f"hidden states must be (batch, seq, width) with matching "
                             f"batch and seq, got {tuple(s.shape)} and {tuple(t.shape)}")
        keep, n_valid = _token_mask(attention_mask, s.shape[:2], s.device)
        keep = None if keep is None else keep[..., None]  # (B, S, 1)
        # Mask before projecting so padding (even inf/NaN) reaches neither the value nor
        # the projection's gradient, and again after, where the projection's bias appears.
        s = _zero_where_padded(s.float(), keep)
        if projection is not None:
            s = _zero_where_padded(projection(s).float(), keep)
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(f"student width {s.shape[-1]} != teacher width {t.shape[-1]}: "
                             f"pass projection=make_projection(d_s, d_t)")
        t = _zero_where_padded(t.detach().float(), keep)
        losses.append((s - t).pow(2).sum() / (n_valid * t.shape[-1]))
    return torch.stack(losses).mean()


def attention_loss(student_attentions: Sequence[Tensor], teacher_attentions: Sequence[Tensor],
                   attention_mask: Tensor | None) -> Tensor:
    """KL from teacher to student attention distributions (MiniLM, Wang et al. 2020):

        KL[b,h,q] = sum_{k valid} A_t[b,h,q,k] * (log A_t[b,h,q,k] - log A_s[b,h,q,k])
        L = (1/L) sum_l sum_{b, h, q valid} KL^l[b,h,q] / (H * N_valid)

    Attention tensors are (B, H, S, S) probabilities, as Hugging Face returns with
    ``output_attentions=True``, paired layer-to-layer by the caller. When the student and
    teacher head counts differ, heads have no correspondence, so each side is averaged
    over its heads first (H = 1). Probabilities are clamped to 1e-12 before the log.
    ``attention_mask`` (B, S), 1 for tokens and 0 for padding, excludes padded queries
    and keys; None counts every position.
    """
    losses = []
    for s, t in _pairs("attention", student_attentions, teacher_attentions):
        if (s.ndim != 4 or t.ndim != 4 or s.shape[0] != t.shape[0]
                or s.shape[2:] != t.shape[2:] or s.shape[2] != s.shape[3]):
            raise ValueError(f"attentions must be (batch, heads, seq, seq) with matching "
                             f"batch and seq, got {tuple(s.shape)} and {tuple(t.shape)}")
        keep, n_valid = _token_mask(attention_mask, (s.shape[0], s.shape[2]), s.device)
        s, t = s.float(), t.detach().float()
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        keys, queries = (None, None) if keep is None else (keep[:, None, None], keep[:, None])
        log_ratio = t.clamp_min(_LOG_EPS).log() - s.clamp_min(_LOG_EPS).log()
        kl = _zero_where_padded(t * log_ratio, keys).sum(-1)  # (B, H, S)
        losses.append(_zero_where_padded(kl, queries).sum() / (s.shape[1] * n_valid))
    return torch.stack(losses).mean()


def _positive(name, value) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def _check_logits(student_logits, teacher_logits, labels) -> None:
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must both be (batch, classes), got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if not (student_logits.is_floating_point() and teacher_logits.is_floating_point()):
        raise ValueError("logits must be floating point")
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must be (batch,) = ({student_logits.shape[0]},), "
                         f"got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")


def _pairs(kind: str, student: Sequence[Tensor], teacher: Sequence[Tensor]):
    if len(student) == 0 or len(student) != len(teacher):
        raise ValueError(f"need the same non-zero number of student and teacher {kind} "
                         f"layers, got {len(student)} and {len(teacher)}")
    return zip(student, teacher)


def _token_mask(attention_mask, batch_seq, device):
    """(keep (B, S) bool or None, number of kept positions); at least 1 so an all-padding
    batch gives 0 rather than 0/0, without a device sync to check for it."""
    if attention_mask is None:
        return None, batch_seq[0] * batch_seq[1]
    if tuple(attention_mask.shape) != tuple(batch_seq):
        raise ValueError(f"attention_mask must be (batch, seq) = {tuple(batch_seq)}, "
                         f"got {tuple(attention_mask.shape)}")
    keep = attention_mask.to(device=device) != 0
    return keep, keep.sum().clamp_min(1)


def _zero_where_padded(x: Tensor, keep: Tensor | None) -> Tensor:
    return x if keep is None else torch.where(keep, x, 0.0)
