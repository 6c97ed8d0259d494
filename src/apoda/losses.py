"""Losses of the paper and its baselines: cross-entropy (Eq. 1), Lovász-Softmax (Eq. 3),
consistency (Eq. 7), entropy (Eq. 8), the domain-adversarial loss (Eq. 2) and AdvEnt's
self-information map. Shapes follow DESIGN.md: logits/probs [B,C,H,W], labels int64 [B,H,W]."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from apoda.errors import ApodaError

IGNORE_INDEX = 255

# The paper's label convention for Eq. (2): D(P_s) -> 1 ("source"), D(P_t) -> 0 ("target").
# Every domain label in apoda comes from this one table.
DOMAIN_LABEL: dict[str, float] = {"source": 1.0, "target": 0.0}

SegLossName = Literal["ce", "lovasz", "ce+lovasz", "wce"]


def cross_entropy(logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Eq. (1), averaged over labelled pixels: pixels labelled 255 are ignored."""
    if not torch.any(labels != IGNORE_INDEX):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_INDEX)


def class_weights(pixel_fraction: Sequence[float]) -> Tensor:
    """Median-frequency balancing, w_c = median(f) / f_c, for the "ASN + Weighted CE" baseline.

    Classes absent from the source (f_c = 0) get weight 1: they never occur in the loss anyway.
    """
    freq = np.asarray(pixel_fraction, dtype=np.float64)
    if freq.ndim != 1 or np.any(freq < 0):
        raise ApodaError(
            f"class frequencies must be a 1-D list of non-negative numbers, got {freq}"
        )
    present = freq > 0
    weights = np.ones_like(freq)
    if present.any():
        weights[present] = np.median(freq[present]) / freq[present]
    return torch.tensor(weights, dtype=torch.float32)


def _lovasz_flat(probs: Tensor, labels: Tensor, classes: str | Sequence[int]) -> Tensor:
    """Lovász-Softmax on flattened pixels: probs [P,C], labels [P] (ignored pixels removed).

    The selected classes are sorted at once (one sort on a [P,K] matrix) instead of a Python
    loop; under "present" the absent classes are dropped before the sort.
    """
    num_classes = probs.shape[1]
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    if classes == "present":
        selected = torch.bincount(labels, minlength=num_classes).nonzero().flatten()
    elif classes == "all":
        selected = torch.arange(num_classes, device=probs.device)
    else:
        selected = torch.as_tensor(list(classes), dtype=torch.long, device=probs.device)
    if selected.numel() == 0:
        return probs.sum() * 0.0
    fg = (labels[:, None] == selected[None, :]).to(probs.dtype)  # [P,K]
    errors = (fg - probs.index_select(1, selected)).abs()
    errors_sorted, order = torch.sort(errors, dim=0, descending=True)
    fg_sorted = torch.gather(fg, 0, order)
    gts = fg_sorted.sum(0)  # [K]
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    # Gradient of the Lovász extension of the Jaccard loss (Berman et al. 2018, Alg. 1).
    jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)
    return (errors_sorted * jaccard.detach()).sum(0).mean()


def lovasz_softmax(
    probs: Tensor,
    labels: Tensor,
    classes: str | Sequence[int] = "present",
    per_image: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Eq. (3): the Lovász-Softmax loss of Berman et al. (2018) on softmax probabilities.

    `classes="present"` averages over classes that occur in the labels; pixels labelled
    `ignore_index` are removed; an all-ignored input gives 0 that still has a gradient.
    """
    if probs.dim() != 4 or labels.dim() != 3 or probs.shape[2:] != labels.shape[1:]:
        raise ApodaError(
            f"lovasz_softmax expects probs [B,C,H,W] and labels [B,H,W] of the same size, got "
            f"{tuple(probs.shape)} and {tuple(labels.shape)}"
        )
    if per_image:
        losses = [
            lovasz_softmax(p[None], y[None], classes, False, ignore_index)
            for p, y in zip(probs, labels, strict=True)
        ]
        return torch.stack(losses).mean()
    flat_probs = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1])
    flat_labels = labels.reshape(-1)
    keep = flat_labels != ignore_index
    return _lovasz_flat(flat_probs[keep], flat_labels[keep], classes)


def segmentation_loss(
    name: SegLossName, logits: Tensor, labels: Tensor, weight: Tensor | None = None
) -> Tensor:
    """L_seg as a config chooses it: cross-entropy, Lovász-Softmax, their sum, or weighted CE."""
    if name == "ce":
        return cross_entropy(logits, labels)
    if name == "wce":
        if weight is None:
            raise ApodaError("seg_loss 'wce' needs class weights from the source statistics")
        return cross_entropy(logits, labels, weight=weight.to(logits.device))
    if name == "lovasz":
        return lovasz_softmax(logits.softmax(1), labels)
    if name == "ce+lovasz":
        return cross_entropy(logits, labels) + lovasz_softmax(logits.softmax(1), labels)
    raise ApodaError(
        f"unknown segmentation loss {name!r}; expected one of ce, lovasz, ce+lovasz, wce"
    )


def self_information(logits: Tensor) -> Tensor:
    """AdvEnt's weighted self-information map -p log p / log C, per class: [B,C,H,W]."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p) / math.log(logits.shape[1])


def entropy_loss(logits: Tensor) -> Tensor:
    """Eq. (8): mean over pixels of -sum_c p log p / log C (computed from logits, stably)."""
    return self_information(logits).sum(1).mean()


def consistency_loss(probs: Tensor, probs_perturbed: Tensor) -> Tensor:
    """Eq. (7): mean over pixels of the L2 norm over classes of P_t - P_t*."""
    return torch.linalg.vector_norm(probs - probs_perturbed, ord=2, dim=1).mean()


def domain_loss(d_logits: Tensor, domain: Literal["source", "target"]) -> Tensor:
    """One term of Eq. (2): BCE of D's logits against the domain's label (source 1, target 0)."""
    target = torch.full_like(d_logits, DOMAIN_LABEL[domain])
    return F.binary_cross_entropy_with_logits(d_logits, target)


def adversarial_loss(d_logits_source: Tensor, d_logits_target: Tensor) -> Tensor:
    """Eq. (2): L_adv = -E[log D(P_s)] - E[log(1 - D(P_t))]."""
    return domain_loss(d_logits_source, "source") + domain_loss(d_logits_target, "target")
