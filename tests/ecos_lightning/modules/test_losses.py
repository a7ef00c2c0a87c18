"""Tests for ecos_lightning.modules.losses: golden values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ecos_lightning.modules.losses import distillation_loss, fixmatch_loss, kd_loss, masked_cross_entropy

# Tiny 2x3 example: the second sample has no label.
S = [[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]]  # student logits
T_ = [[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]  # teacher logits
Y = [1, -1]


def _log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def _kl_batchmean(teacher, student, temp) -> float:
    """sum_i sum_c p_ic (log p_ic - log q_ic) / B with p = softmax(t/T), q = softmax(s/T)."""
    total = 0.0
    for t_row, s_row in zip(teacher, student):
        lp = _log_softmax([v / temp for v in t_row])
        lq = _log_softmax([v / temp for v in s_row])
        total += sum(math.exp(a) * (a - b) for a, b in zip(lp, lq))
    return total / len(teacher)


def _t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_golden_distillation_value():
    alpha, temp = 0.3, 2.0
    ce = -_log_softmax(S[0])[1]  # only sample 0 is labelled
    kl = _kl_batchmean(T_, S, temp)
    expected = alpha * ce + (1 - alpha) * temp**2 * kl
    # Reference numbers (independent of the helpers above).
    assert ce == pytest.approx(0.4076059644443804, abs=1e-12)
    assert kl == pytest.approx(0.0714631406930788, abs=1e-12)
    assert expected == pytest.approx(0.32237858327393476, abs=1e-12)
    got = distillation_loss(_t(S), _t(T_), torch.tensor(Y), alpha=alpha, temperature=temp)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_alpha_one_is_plain_cross_entropy_over_labelled():
    labels = torch.tensor([1, 2])
    got = distillation_loss(_t(S), _t(T_), labels, alpha=1.0, temperature=4.0)
    assert got.item() == pytest.approx(F.cross_entropy(_t(S), labels).item(), abs=1e-6)
    got_masked = distillation_loss(_t(S), _t(T_), torch.tensor(Y), alpha=1.0, temperature=4.0)
    assert got_masked.item() == pytest.approx(-_log_softmax(S[0])[1], abs=1e-6)


def test_identical_logits_and_alpha_zero_give_zero():
    logits = _t(S)
    assert distillation_loss(logits, logits.clone(), torch.tensor(Y), alpha=0.0, temperature=3.0).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_kd_term_is_scaled_by_t_squared(temp):
    got = kd_loss(_t(S), _t(T_), temp).item()
    assert got == pytest.approx(temp**2 * _kl_batchmean(T_, S, temp), abs=1e-6)
    alpha0 = distillation_loss(_t(S), _t(T_), torch.tensor(Y), alpha=0.0, temperature=temp).item()
    assert alpha0 == pytest.approx(got, abs=1e-7)


def test_unlabelled_batch_gives_zero_ce_with_grad():
    logits = _t(S).requires_grad_(True)
    loss = masked_cross_entropy(logits, torch.tensor([-1, -1]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    # distillation with no labels = (1 - alpha) * KD only, finite
    d = distillation_loss(_t(S), _t(T_), torch.tensor([-1, -1]), alpha=0.5, temperature=2.0)
    assert d.item() == pytest.approx(0.5 * 4.0 * _kl_batchmean(T_, S, 2.0), abs=1e-6)


def test_masked_cross_entropy_matches_subset():
    labels = torch.tensor([2, -1])
    assert masked_cross_entropy(_t(S), labels).item() == pytest.approx(-_log_softmax(S[0])[2], abs=1e-6)


def test_fixmatch_mask_and_loss_by_hand():
    # softmax([4,0,0]) max = e^4/(e^4+2) ~ 0.9647 >= 0.95; softmax([1,0,0]) max ~ 0.576 < 0.95;
    # softmax([0,0,5]) max ~ 0.9867 >= 0.95.
    weak = _t([[4.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    strong = _t([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).requires_grad_(True)
    loss, mask = fixmatch_loss(weak, strong, threshold=0.95)
    assert mask.tolist() == [True, False, True]
    expected = (-_log_softmax([0.0, 1.0, 0.0])[0] - _log_softmax([0.0, 0.0, 1.0])[2]) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.equal(strong.grad[1], torch.zeros(3))  # masked sample gives no gradient
    # A temperature < 1 sharpens the weak prediction: sample 1 passes at T=0.25.
    _, mask_sharp = fixmatch_loss(weak, strong.detach(), threshold=0.95, temperature=0.25)
    assert mask_sharp.tolist() == [True, True, True]


def test_fixmatch_no_gradient_through_weak_view_and_empty_batch():
    weak = _t([[4.0, 0.0, 0.0]]).requires_grad_(True)
    strong = _t([[0.0, 1.0, 0.0]]).requires_grad_(True)
    loss, _ = fixmatch_loss(weak, strong, threshold=0.5)
    loss.backward()
    assert weak.grad is None
    empty, mask = fixmatch_loss(torch.zeros(0, 3), torch.zeros(0, 3, requires_grad=True), threshold=0.5)
    assert empty.item() == 0.0 and empty.requires_grad and mask.numel() == 0


def test_masked_cross_entropy_with_label_smoothing_ignores_unlabelled():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, -1, 3, -1, 2, 1])
    keep = labels != -1
    expected = F.cross_entropy(logits[keep], labels[keep], label_smoothing=0.2)
    assert masked_cross_entropy(logits, labels, 0.2).item() == pytest.approx(expected.item(), abs=1e-6)
