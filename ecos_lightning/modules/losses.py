"""Pure loss functions used by the LightningModules (tensors in, scalar tensor out).

Labels use ``-1`` (:data:`IGNORE_INDEX`) for "no label".  Every loss stays
finite when a batch holds no label at all: the supervised term is then an
exact zero that is still attached to the graph (so ``backward()`` works and
gives zero gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "masked_cross_entropy", "kd_loss", "distillation_loss", "fixmatch_loss"]

#: Label value meaning "this sample has no label".
IGNORE_INDEX = -1


def masked_cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over the labelled entries only.

    Args:
        logits: [B, C] float.
        labels: [B] int64, ``-1`` = no label.
    Returns:
        scalar; exactly 0 (still attached to the graph) when no entry is labelled.
    """
    per_sample = F.cross_entropy(
        logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none", label_smoothing=label_smoothing
    )  # 0 where unlabelled; no host sync
    return per_sample.sum() / (labels != IGNORE_INDEX).sum().clamp(min=1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's distillation term ``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch.

    ``KL(p || q) = sum_c p_c (log p_c - log q_c)``; "batchmean" divides the sum
    over [B, C] by B.  Args: student_logits, teacher_logits [B, C].  Returns a scalar.
    """
    t = float(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=1)
    log_p = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Knowledge-distillation loss (Hinton et al. 2015)::

        L = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))

    with ``s`` / ``t`` the student / teacher logits [B, C] and ``y`` the labels
    [B] (int64, ``-1`` = no label).  ``CE`` is the mean over labelled entries
    only (0 when there are none); the KL term is summed over classes and
    averaged over all B entries ("batchmean").  ``T^2`` keeps the gradient
    scale of the soft term independent of ``T``.  Returns a scalar.
    """
    ce = masked_cross_entropy(student_logits, labels, label_smoothing)
    return alpha * ce + (1.0 - alpha) * kd_loss(student_logits, teacher_logits, temperature)


def fixmatch_loss(
    weak_logits: Tensor, strong_logits: Tensor, threshold: float, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """FixMatch consistency loss (Sohn et al. 2020).

    Pseudo-labels ``y_hat = argmax softmax(weak / T)`` (no gradient through
    ``weak_logits``); ``mask = max softmax(weak / T) >= threshold``;
    ``loss = mean_U(mask * CE(strong, y_hat))``.

    Args:
        weak_logits, strong_logits: [U, C] logits of the weak / strong views.
    Returns:
        (scalar loss, mask [U] bool).
    """
    if weak_logits.shape[0] == 0:
        return strong_logits.sum() * 0.0, torch.zeros(0, dtype=torch.bool, device=weak_logits.device)
    probs = torch.softmax(weak_logits.detach().float() / float(temperature), dim=1)
    max_prob, pseudo = probs.max(dim=1)
    mask = max_prob >= threshold
    ce = F.cross_entropy(strong_logits.float(), pseudo, reduction="none")
    return (ce * mask.float()).mean(), mask
