"""Each loss against a direct computation on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from apoda.errors import ApodaError
from apoda.losses import (
    adversarial_loss,
    class_weights,
    consistency_loss,
    cross_entropy,
    domain_loss,
    entropy_loss,
    lovasz_softmax,
    segmentation_loss,
    self_information,
)


def _lovasz_reference(probs: torch.Tensor, labels: torch.Tensor, classes=None) -> float:  # type: ignore[no-untyped-def]
    """Berman et al.'s Algorithm 1, one class at a time, in float64 Python; `classes` None means
    the classes present in the labels."""
    p = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1]).double()
    y = labels.reshape(-1)
    keep = y != 255
    p, y = p[keep], y[keep]
    losses = []
    for c in range(p.shape[1]) if classes is None else classes:
        fg = (y == c).double()
        if classes is None and fg.sum() == 0:
            continue
        errors = (fg - p[:, c]).abs()
        order = torch.argsort(errors, descending=True)
        e, g = errors[order].tolist(), fg[order].tolist()
        gts = sum(g)
        prev, total, cum_fg, cum_bg = 0.0, 0.0, 0.0, 0.0
        for ei, gi in zip(e, g, strict=True):
            cum_fg += gi
            cum_bg += 1 - gi
            jac = 1 - (gts - cum_fg) / (gts + cum_bg)
            total += ei * (jac - prev)
            prev = jac
        losses.append(total)
    return sum(losses) / len(losses)


def _lovasz_tol(labels: torch.Tensor) -> float:
    """How far float32 `lovasz_softmax` may be from the float64 reference with n labelled pixels:
    the sum of n non-negative products error x Jaccard step (total <= 1) rounds within
    (n - 1) * 2^-24; the errors, the Jaccard values (entering as max|error| x e_1 <= 1 after
    summation by parts, errors sorted), their steps, the products and the class mean add
    <= 5 * 2^-24."""
    return (int((labels != 255).sum()) + 4) * 2.0**-24


def test_lovasz_matches_reference_on_random_probs() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.randn(2, 4, 5, 6, generator=gen).softmax(1)
    labels = torch.randint(0, 3, (2, 5, 6), generator=gen)  # class 3 absent: skipped
    labels[0, 0, :3] = 255
    assert lovasz_softmax(probs, labels).item() == pytest.approx(
        _lovasz_reference(probs, labels), abs=_lovasz_tol(labels)
    )


def test_lovasz_all_and_listed_classes_include_absent_ones() -> None:
    gen = torch.Generator().manual_seed(7)
    probs = torch.randn(1, 4, 5, 5, generator=gen).softmax(1)
    labels = torch.randint(0, 2, (1, 5, 5), generator=gen)  # classes 2 and 3 absent
    got_all = lovasz_softmax(probs, labels, classes="all").item()
    tol = _lovasz_tol(labels)
    assert got_all == pytest.approx(_lovasz_reference(probs, labels, range(4)), abs=tol)
    got_list = lovasz_softmax(probs, labels, classes=[1, 3]).item()
    assert got_list == pytest.approx(_lovasz_reference(probs, labels, [1, 3]), abs=tol)


def test_lovasz_on_one_hot_is_one_minus_mean_iou_of_present_classes() -> None:
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (1, 8, 8), generator=gen)
    pred = labels.clone()
    pred[0, :3] = (pred[0, :3] + 1) % 5  # some mistakes, including class 4 never in labels
    probs = torch.nn.functional.one_hot(pred, 5).permute(0, 3, 1, 2).float()
    ious = []
    for c in labels.unique().tolist():
        inter = ((labels == c) & (pred == c)).sum().item()
        union = ((labels == c) | (pred == c)).sum().item()
        ious.append(inter / union)
    got = lovasz_softmax(probs, labels).item()
    assert got == pytest.approx(1 - np.mean(ious), abs=_lovasz_tol(labels))


def test_lovasz_all_ignored_is_zero_with_gradient() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = lovasz_softmax(logits.softmax(1), torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_lovasz_per_image_is_mean_of_images() -> None:
    gen = torch.Generator().manual_seed(2)
    probs = torch.randn(2, 3, 4, 4, generator=gen).softmax(1)
    labels = torch.randint(0, 3, (2, 4, 4), generator=gen)
    per = lovasz_softmax(probs, labels, per_image=True)
    each = [lovasz_softmax(probs[i : i + 1], labels[i : i + 1]) for i in range(2)]
    assert per.item() == pytest.approx(torch.stack(each).mean().item())


def test_lovasz_rejects_mismatched_shapes() -> None:
    with pytest.raises(ApodaError, match="same size"):
        lovasz_softmax(torch.rand(1, 3, 4, 4), torch.zeros(1, 5, 4, dtype=torch.long))


def test_cross_entropy_eq1_ignores_255() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, 2, 2, generator=gen)
    labels = torch.tensor([[[0, 2], [255, 1]]])
    logp = logits.log_softmax(1)
    direct = -(logp[0, 0, 0, 0] + logp[0, 2, 0, 1] + logp[0, 1, 1, 1]) / 3
    assert cross_entropy(logits, labels).item() == pytest.approx(direct.item(), abs=1e-6)
    assert cross_entropy(logits, torch.full_like(labels, 255)).item() == 0.0


def test_class_weights_median_frequency() -> None:
    w = class_weights([0.5, 0.25, 0.0, 0.25])
    # median of present (0.5, 0.25, 0.25) = 0.25
    assert w.tolist() == pytest.approx([0.5, 1.0, 1.0, 1.0])
    with pytest.raises(ApodaError, match="non-negative"):
        class_weights([0.5, -0.1])


def test_weighted_ce_needs_weights() -> None:
    logits, labels = torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ApodaError, match="class weights"):
        segmentation_loss("wce", logits, labels)
    with pytest.raises(ApodaError, match="unknown segmentation loss"):
        segmentation_loss("dice", logits, labels)  # type: ignore[arg-type]


def test_entropy_eq8_and_self_information() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 3, 3, generator=gen)
    p = logits.softmax(1).double()
    direct = (-(p * p.log()).sum(1) / math.log(5)).mean()
    # float32 against float64: each log-softmax value is off by <= (6 + |lse| + |log p|) * 2^-24,
    # moving sum_c -p log p by <= (1 + log 5) x that (sum of p (1 + |log p|)); the reference's
    # float32 softmax, exp, product, division and the 4 + 17 roundings of the two sums add
    # <= 30 * 2^-24 of the value (<= 1).
    worst = logits.logsumexp(1).abs().max() + logits.log_softmax(1).abs().max()
    tol = (2 * (6 + worst.item()) + 30) * 2.0**-24
    assert entropy_loss(logits).item() == pytest.approx(direct.item(), abs=tol)
    info = self_information(logits)
    assert info.shape == logits.shape
    assert torch.allclose(info.double(), -(p * p.log()) / math.log(5), atol=1e-6)
    # Uniform predictions have normalised entropy 1.
    assert entropy_loss(torch.zeros(1, 5, 2, 2)).item() == pytest.approx(1.0)


def test_consistency_eq7() -> None:
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(2, 4, 3, 3, generator=gen).softmax(1)
    b = torch.randn(2, 4, 3, 3, generator=gen).softmax(1)
    direct = ((a - b) ** 2).sum(1).sqrt().mean()
    assert consistency_loss(a, b).item() == pytest.approx(direct.item(), abs=1e-6)
    # Equal inputs: zero, with a finite (zero) gradient.
    x = a.clone().requires_grad_(True)
    consistency_loss(x, a).backward()
    assert torch.all(torch.isfinite(x.grad))


def test_adversarial_eq2_label_convention() -> None:
    ds = torch.tensor([[[[2.0, -1.0]]]])
    dt = torch.tensor([[[[0.5, -3.0]]]])
    sig = torch.sigmoid
    direct = -torch.log(sig(ds)).mean() - torch.log(1 - sig(dt)).mean()
    assert adversarial_loss(ds, dt).item() == pytest.approx(direct.item(), abs=1e-6)
    assert domain_loss(ds, "source").item() == pytest.approx(-torch.log(sig(ds)).mean().item())
