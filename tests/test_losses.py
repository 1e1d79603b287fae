"""Tests for harness.losses: each loss against a float64 reference written from its
formula (values and student gradients), plus edge cases and input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness.losses import (
    LossTerms,
    attention_loss,
    distillation_loss,
    distillation_loss_terms,
    hidden_state_loss,
    layer_map,
    make_projection,
)

RTOL, ATOL = 1e-5, 1e-6


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(seed, batch=8, classes=5, scale=3.0):
    g = _gen(seed)
    zs = torch.randn(batch, classes, generator=g) * scale
    zt = torch.randn(batch, classes, generator=g) * scale
    y = torch.randint(classes, (batch,), generator=g)
    return zs, zt, y


# ---- distillation loss: float64 reference from L = a*T^2*KL(q||p) + (1-a)*CE(y, p) ----

def _softmax64(z):
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def reference_distillation(zs, zt, y, alpha, T, T_s, T_h=None):
    T_h = T_s if T_h is None else T_h
    q, p, p_h = _softmax64(zt / T), _softmax64(zs / T_s), _softmax64(zs / T_h)
    kl = (q * (q.log() - p.log())).sum(-1).mean()
    ce = -p_h.log()[torch.arange(len(y)), y].mean()
    return alpha * T**2 * kl + (1 - alpha) * ce


def _value_and_grad(fn, zs, *args, **kwargs):
    zs = zs.clone().requires_grad_(True)
    out = fn(zs, *args, **kwargs)
    out.backward()
    return out.detach(), zs.grad


def _check_against_reference(zs, zt, y, alpha, T, T_s, T_h=None):
    ours, ours_grad = _value_and_grad(distillation_loss, zs.float(), zt.float(), y,
                                      alpha, T, T_s, hard_label_temperature=T_h)
    ref, ref_grad = _value_and_grad(reference_distillation, zs.double(), zt.double(), y,
                                    alpha, T, T_s, T_h)
    assert ours.dtype == torch.float32 and ours.ndim == 0
    # The KD term is float32's KL (a difference of near-equal sums at high T) times
    # alpha * T^2 (up to 400 in the property test), and its rounding error with it; the KD
    # gradient is scaled by alpha * T^2 / T_s: near-zero entries need the scaled bound.
    torch.testing.assert_close(ours.double(), ref, rtol=RTOL, atol=ATOL * max(1.0, alpha * T**2))
    grad_atol = ATOL * max(1.0, alpha * T**2 / T_s)
    torch.testing.assert_close(ours_grad.double(), ref_grad, rtol=RTOL, atol=grad_atol)


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha,T_s", [(0.5, 1.0), (0.9, 2.0), (0.1, 0.5), (0.7, "T")])
def test_distillation_matches_reference(T, alpha, T_s):
    T_s = T if T_s == "T" else T_s
    _check_against_reference(*_logits(seed=int(T * 10)), alpha, T, T_s)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_distillation_edge_alphas_match_reference(alpha):
    _check_against_reference(*_logits(seed=1), alpha, 4.0, 2.0)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), alpha=st.floats(0.0, 1.0),
       T=st.floats(0.5, 20.0), T_s=st.floats(0.5, 20.0))
def test_distillation_property_matches_reference(seed, alpha, T, T_s):
    _check_against_reference(*_logits(seed, batch=4, classes=3), alpha, T, T_s)


def test_classic_variant_uses_hard_labels_at_temperature_one():
    zs, zt, y = _logits(seed=2)
    _check_against_reference(zs, zt, y, 0.6, 4.0, 3.0, T_h=1.0)
    seed_formula = distillation_loss(zs, zt, y, 0.6, 4.0, 3.0)
    classic = distillation_loss(zs, zt, y, 0.6, 4.0, 3.0, hard_label_temperature=1.0)
    assert not torch.allclose(seed_formula, classic)


def test_terms_compose_into_total_and_skip_zero_weight_terms():
    zs, zt, y = _logits(seed=3)
    terms = distillation_loss_terms(zs, zt, y, 0.3, 4.0, 2.0)
    assert isinstance(terms, LossTerms)
    torch.testing.assert_close(terms.total, 0.3 * terms.kd + 0.7 * terms.ce)
    torch.testing.assert_close(terms.total, distillation_loss(zs, zt, y, 0.3, 4.0, 2.0))
    only_ce = distillation_loss_terms(zs, zt, y, 0.0, 4.0, 2.0)
    only_kd = distillation_loss_terms(zs, zt, y, 1.0, 4.0, 2.0)
    assert only_ce.kd is None and only_kd.ce is None
    torch.testing.assert_close(only_ce.total, terms.ce)
    torch.testing.assert_close(only_kd.total, terms.kd)


def test_identical_distributions_give_zero_kd():
    zs, _, y = _logits(seed=4)
    assert distillation_loss_terms(zs, zs.clone(), y, 0.5, 3.0, 3.0).kd.abs() <= 1e-6
    # Same distributions reached through different temperatures: q = p as well.
    assert distillation_loss_terms(zs, 2 * zs, y, 1.0, 4.0, 2.0).kd.abs() <= 1e-6


def test_very_confident_logits_are_finite_and_hand_computed():
    big = torch.tensor([[1e4, -1e4], [-1e4, 1e4]])
    y = torch.tensor([0, 1])
    for T in (0.5, 1.0, 20.0):
        for student in (big, -big):
            value, grad = _value_and_grad(distillation_loss, student, big, y, 0.5, T, T)
            assert torch.isfinite(value) and torch.isfinite(grad).all()
    # Teacher certain of the other class: KL = 2e4 / T_s per example, times T^2;
    # the gradient T^2 / T_s * (p - q) / B is exact.
    value, grad = _value_and_grad(distillation_loss, big[:1], -big[:1], y[:1], 1.0, 2.0, 1.0)
    torch.testing.assert_close(value, torch.tensor(4.0 * 2e4))
    torch.testing.assert_close(grad, torch.tensor([[4.0, -4.0]]))


def test_bf16_input_matches_float32_of_same_values():
    zs, zt, y = _logits(seed=5)
    zs16, zt16 = zs.bfloat16(), zt.bfloat16()
    low = distillation_loss(zs16, zt16, y, 0.5, 4.0, 2.0)
    full = distillation_loss(zs16.float(), zt16.float(), y, 0.5, 4.0, 2.0)
    assert low.dtype == torch.float32
    assert torch.equal(low, full)
    assert distillation_loss(zs.double(), zt.double(), y, 0.5, 4.0, 2.0).dtype == torch.float32


def test_no_gradient_reaches_teacher():
    zs, zt, y = _logits(seed=6)
    zs.requires_grad_(True)
    zt.requires_grad_(True)
    distillation_loss(zs, zt, y, 0.5, 4.0, 2.0).backward()
    assert zt.grad is None and zs.grad is not None


@pytest.mark.parametrize("change", [
    {"alpha": -0.1}, {"alpha": 1.5}, {"alpha": math.nan},
    {"T": 0.0}, {"T": -1.0}, {"T": math.inf}, {"T_s": 0.0}, {"T_s": math.nan},
    {"hard_label_temperature": 0.0},
    {"student_logits": torch.zeros(8, 4)}, {"student_logits": torch.zeros(8)},
    {"teacher_logits": torch.zeros(7, 5)}, {"labels": torch.zeros(8, 1, dtype=torch.long)},
    {"labels": torch.zeros(8)}, {"labels": torch.zeros(5, dtype=torch.long)},
])
def test_distillation_rejects_invalid_inputs(change):
    zs, zt, y = _logits(seed=7)
    kwargs = dict(student_logits=zs, teacher_logits=zt, labels=y, alpha=0.5, T=2.0, T_s=2.0)
    with pytest.raises(ValueError):
        distillation_loss(**{**kwargs, **change})


# ---- hidden-state loss ----

def _hidden(seed, layers=2, batch=3, seq=5, d_s=8, d_t=12):
    g = _gen(seed)
    hs = [torch.randn(batch, seq, d_s, generator=g) for _ in range(layers)]
    ht = [torch.randn(batch, seq, d_t, generator=g) for _ in range(layers)]
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    return hs, ht, mask


def reference_hidden(hs, ht, mask, weight=None, bias=None):
    per_layer = []
    for s, t in zip(hs, ht):
        s, t = s.double().numpy(), t.double().numpy()
        total, count = 0.0, 0
        for b, i in zip(*np.nonzero(mask.numpy())):
            h = s[b, i] if weight is None else weight @ s[b, i] + bias
            total += float(((h - t[b, i]) ** 2).sum())
            count += 1
        per_layer.append(total / (count * t.shape[-1]))
    return float(np.mean(per_layer))


def test_hidden_loss_matches_reference_with_projection():
    torch.manual_seed(0)
    hs, ht, mask = _hidden(seed=10)
    proj = make_projection(8, 12)
    ours = hidden_state_loss(hs, ht, proj, attention_mask=mask)
    ref = reference_hidden(hs, ht, mask, proj.weight.detach().double().numpy(),
                           proj.bias.detach().double().numpy())
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(ref, rel=RTOL)


def test_hidden_loss_matches_reference_without_projection_or_mask():
    hs, ht, mask = _hidden(seed=11, d_s=6, d_t=6)
    ours = hidden_state_loss(hs, ht)
    assert ours.item() == pytest.approx(reference_hidden(hs, ht, torch.ones_like(mask)),
                                        rel=RTOL)
    hs16 = [h.bfloat16() for h in hs]
    masked = hidden_state_loss(hs16, ht, attention_mask=mask)
    assert masked.dtype == torch.float32
    # Against the float64 reference on the same bf16-rounded inputs, only float32 rounding
    # remains, because the loss upcasts before any arithmetic: RTOL holds. Arithmetic in
    # bf16 (8 significant bits, ~3 decimal digits, rounding steps of 2^-8 ~ 4e-3 relative)
    # would be off by ~1e-3 and fail this.
    assert masked.item() == pytest.approx(reference_hidden(hs16, ht, mask), rel=RTOL)
    # Against the unrounded student states: each element moved by at most 2^-9 relative
    # (bf16 rounds to nearest), so the squared-error mean moves by well under 1%.
    assert masked.item() == pytest.approx(reference_hidden(hs, ht, mask), rel=1e-2)


@pytest.mark.parametrize("garbage", [1e3, math.nan, math.inf])
def test_hidden_loss_ignores_padded_positions(garbage):
    torch.manual_seed(0)
    hs, ht, mask = _hidden(seed=12)
    proj = make_projection(8, 12)
    pad = (mask == 0)[..., None]
    hs2 = [torch.where(pad, garbage * torch.randn_like(h), h).requires_grad_(True)
           for h in hs]
    ht2 = [torch.where(pad, garbage * torch.randn_like(h), h) for h in ht]
    before = hidden_state_loss(hs, ht, proj, attention_mask=mask)
    after = hidden_state_loss(hs2, ht2, proj, attention_mask=mask)
    torch.testing.assert_close(after, before)
    after.backward()
    assert all(h.grad[pad.expand_as(h)].abs().max() == 0 for h in hs2)
    assert torch.isfinite(proj.weight.grad).all()


def test_hidden_loss_gradients_reach_student_and_projection_not_teacher():
    hs, ht, mask = _hidden(seed=13)
    hs = [h.requires_grad_(True) for h in hs]
    ht = [h.requires_grad_(True) for h in ht]
    proj = make_projection(8, 12)
    hidden_state_loss(hs, ht, proj, attention_mask=mask).backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in hs)
    assert all(h.grad is None for h in ht)


def test_hidden_loss_rejects_invalid_inputs():
    hs, ht, mask = _hidden(seed=14)
    with pytest.raises(ValueError, match="projection"):
        hidden_state_loss(hs, ht, attention_mask=mask)
    proj = make_projection(8, 12)
    with pytest.raises(ValueError):
        hidden_state_loss(hs, ht[:1], proj)
    with pytest.raises(ValueError):
        hidden_state_loss([], [], proj)
    with pytest.raises(ValueError):
        hidden_state_loss(hs, ht, proj, attention_mask=mask[:, :4])


def test_make_projection():
    assert make_projection(16, 16) is None
    proj = make_projection(8, 12)
    assert isinstance(proj, nn.Linear)
    assert (proj.in_features, proj.out_features) == (8, 12)


# ---- layer map ----

@pytest.mark.parametrize("n_s,n_t,expected", [
    (6, 6, (0, 1, 2, 3, 4, 5)), (1, 6, (5,)), (2, 6, (2, 5)), (3, 12, (3, 7, 11)),
    (4, 12, (2, 5, 8, 11)), (4, 6, (0, 2, 3, 5)), (5, 7, (0, 1, 3, 4, 6)),
])
def test_layer_map_examples(n_s, n_t, expected):
    assert layer_map(n_s, n_t) == expected


@settings(max_examples=50, deadline=None)
@given(n_s=st.integers(1, 48), extra=st.integers(0, 48))
def test_layer_map_properties(n_s, extra):
    n_t = n_s + extra
    mapped = layer_map(n_s, n_t)
    assert len(mapped) == n_s and mapped[-1] == n_t - 1 and mapped[0] >= 0
    assert all(a < b for a, b in zip(mapped, mapped[1:]))
    if n_t % n_s == 0:  # TinyBERT's g(m) = m * n_t / n_s, 1-based
        assert mapped == tuple(m * (n_t // n_s) - 1 for m in range(1, n_s + 1))


@pytest.mark.parametrize("args", [(7, 6), (0, 6), (2, 0), (2.0, 6), (True, 6)])
def test_layer_map_rejects_invalid(args):
    with pytest.raises(ValueError):
        layer_map(*args)


# ---- attention loss ----

def _attentions(seed, mask, layers=2, heads=2, scale=2.0):
    """Softmax attention as a model makes it: padded keys get probability 0."""
    g = _gen(seed)
    batch, seq = mask.shape
    key_pad = (mask == 0)[:, None, None, :]
    out = []
    for _ in range(layers):
        scores = torch.randn(batch, heads, seq, seq, generator=g) * scale
        out.append(scores.masked_fill(key_pad, -math.inf).softmax(-1))
    return out


def reference_attention(sa, ta, mask):
    per_layer = []
    for s, t in zip(sa, ta):
        s, t = s.double().numpy(), t.double().numpy()
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(1, keepdims=True), t.mean(1, keepdims=True)
        terms = []
        for b, q in zip(*np.nonzero(mask.numpy())):
            for h in range(s.shape[1]):
                kl = 0.0
                for k in np.nonzero(mask.numpy()[b])[0]:
                    if t[b, h, q, k] > 0:
                        kl += t[b, h, q, k] * (np.log(t[b, h, q, k]) - np.log(s[b, h, q, k]))
                terms.append(kl)
        per_layer.append(np.mean(terms))
    return float(np.mean(per_layer))


MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])


@pytest.mark.parametrize("student_heads", [2, 3])
def test_attention_loss_matches_reference(student_heads):
    sa = _attentions(20, MASK, heads=student_heads)
    ta = _attentions(21, MASK, heads=2)
    ours = attention_loss(sa, ta, MASK)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(reference_attention(sa, ta, MASK), rel=RTOL)


def test_attention_loss_zero_for_identical_attentions():
    sa = _attentions(22, MASK)
    assert attention_loss(sa, [a.clone() for a in sa], MASK).abs() <= 1e-6


def test_attention_loss_ignores_padded_queries_and_gradients_go_to_student_only():
    sa, ta = _attentions(23, MASK), _attentions(24, MASK)
    before = attention_loss(sa, ta, MASK)
    query_pad = (MASK == 0)[:, None, :, None]
    noise = _attentions(25, torch.ones_like(MASK), layers=2)
    sa2 = [torch.where(query_pad, n, a).requires_grad_(True) for a, n in zip(sa, noise)]
    ta2 = [torch.where(query_pad, n.flip(-1), a).requires_grad_(True)
           for a, n in zip(ta, noise)]
    after = attention_loss(sa2, ta2, MASK)
    torch.testing.assert_close(after, before)
    after.backward()
    assert all(a.grad is not None and (a.grad * query_pad).abs().max() == 0 for a in sa2)
    assert all(a.grad is None for a in ta2)


def test_attention_loss_ignores_padded_keys():
    sa, ta = _attentions(28, MASK), _attentions(29, MASK)
    key_pad = (MASK == 0)[:, None, None, :]
    ta2 = [torch.where(key_pad, 0.5, a) for a in ta]  # mass a model should not put there
    torch.testing.assert_close(attention_loss(sa, ta2, MASK), attention_loss(sa, ta, MASK))


def test_attention_loss_rejects_invalid_inputs():
    sa, ta = _attentions(26, MASK), _attentions(27, MASK)
    with pytest.raises(ValueError):
        attention_loss(sa, ta[:1], MASK)
    with pytest.raises(ValueError):
        attention_loss(sa, [a[:, :, :4, :4] for a in ta], MASK)
    with pytest.raises(ValueError):
        attention_loss(sa, ta, MASK[:2])


def test_the_seeds_form_is_one_cross_entropy_against_a_blended_target():
    """With the label term at T_s (hard_label_temperature None, the seed's form), the loss
    equals (alpha T^2 + 1 - alpha) * CE(m, p) - alpha T^2 H(q) with m = w q + (1 - w) y and
    w = alpha T^2 / (alpha T^2 + 1 - alpha): the identity the README states (float64)."""
    generator = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(16, 4, generator=generator), torch.randn(16, 4, generator=generator)
    y = torch.randint(0, 4, (16,), generator=generator)
    alpha, T, T_s = 0.3, 4.0, 2.5
    p = torch.softmax(zs.double() / T_s, dim=-1)
    q = torch.softmax(zt.double() / T, dim=-1)
    w = alpha * T**2 / (alpha * T**2 + 1 - alpha)
    m = w * q + (1 - w) * torch.nn.functional.one_hot(y, 4).double()
    cross_entropy = -(m * p.log()).sum(-1).mean()
    entropy = -(q * q.log()).sum(-1).mean()
    expected = (alpha * T**2 + 1 - alpha) * cross_entropy - alpha * T**2 * entropy
    got = distillation_loss(zs, zt, y, alpha, T, T_s)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
