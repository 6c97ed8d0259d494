"""The attacks against their equations, computed directly with autograd on small tensors."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from apoda.attacks import AttackConfig, l2_distance, l2_distance_grad, perturb_features
from apoda.errors import ApodaError
from apoda.losses import cross_entropy, domain_loss, lovasz_softmax
from apoda.models import Discriminator, upsample_logits

SIZE = (32, 32)
C = 4


def _setup(seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    classifier = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, C, 1))
    disc = Discriminator(C)
    features = torch.randn(2, 6, 8, 8)
    labels = torch.randint(0, C, (2, *SIZE))
    labels[:, :2] = 255
    return classifier, disc, features, labels


def _grads(classifier, disc, f, labels, domain, seg="lovasz"):  # type: ignore[no-untyped-def]
    """Direct autograd gradients of each objective w.r.t. f (F and D in eval mode)."""
    f = f.detach().requires_grad_(True)
    logits = upsample_logits(classifier(f), SIZE)
    probs = logits.softmax(1)
    g_adv = torch.autograd.grad(domain_loss(disc(probs), domain), f, retain_graph=True)[0]
    g_seg = None
    if domain == "source":
        loss = lovasz_softmax(probs, labels) if seg == "lovasz" else cross_entropy(logits, labels)
        g_seg = torch.autograd.grad(loss, f)[0]
    return g_adv, g_seg


def _l2_grad(f_star: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    x = f_star.detach().requires_grad_(True)
    return torch.autograd.grad(l2_distance(x, f), x)[0]


def test_l2_gradient_closed_form_matches_autograd() -> None:
    f = torch.randn(2, 5, 3, 4)
    f_star = f + 0.1 * torch.randn_like(f)
    f_star[0, :, 0, 0] = f[0, :, 0, 0]  # a position where f* = f: gradient 0
    assert torch.allclose(l2_distance_grad(f_star, f), _l2_grad(f_star, f), atol=1e-7)


def test_i_fgspm_source_follows_eq6() -> None:
    classifier, disc, f, labels = _setup()
    cfg = AttackConfig(name="i_fgspm", iterations=3)
    got, diag = perturb_features(classifier, disc, f, "source", cfg, SIZE, labels=labels)
    classifier.eval()
    disc.eval()
    expected = f.clone()
    for _ in range(3):
        g_adv, g_seg = _grads(classifier, disc, expected, labels, "source")
        g_l2 = _l2_grad(expected, f)
        # Eq. (6); the step is summed before it is added, as in the code: otherwise rounding
        # can leave f* - f at 1e-10 instead of 0 where steps cancel, and flip sign(grad L2).
        expected = expected + (
            cfg.eps_adv * g_adv.sign() - cfg.eps_l2 * g_l2.sign() + cfg.eps_seg * g_seg.sign()
        )
    assert torch.allclose(got, expected, atol=1e-6)
    assert set(diag) >= {f"grad_{o}/k{k}" for o in ("adv", "l2", "seg") for k in range(3)}
    # Exact: the logged L2 is l2_distance of the returned f* (checked against Eq. (6) above).
    # Against `expected` it would carry f*'s rounding (ulps of |f| ~ 4) relative to |f* - f|.
    assert diag["l2/k2"].item() == l2_distance(got, f).item()
    assert diag["grad_l2/k0"].item() == 0.0  # f*^0 = f


def test_i_fgspm_target_follows_eq5_without_seg_term() -> None:
    classifier, disc, f, _ = _setup(1)
    cfg = AttackConfig(name="i_fgspm", iterations=2)
    got, diag = perturb_features(classifier, disc, f, "target", cfg, SIZE)
    classifier.eval()
    disc.eval()
    expected = f.clone()
    for _ in range(2):
        g_adv, _ = _grads(classifier, disc, expected, None, "target")
        expected = expected + (
            cfg.eps_adv * g_adv.sign() - cfg.eps_l2 * _l2_grad(expected, f).sign()
        )
    assert torch.allclose(got, expected, atol=1e-6)
    assert not any(k.startswith("grad_seg") for k in diag)


def test_i_fgsm_follows_eq4_one_sign_over_weighted_sum() -> None:
    classifier, disc, f, labels = _setup(2)
    cfg = AttackConfig(name="i_fgsm", iterations=2, fgsm_eps=0.02, beta_seg=2.0, beta_adv=0.5)
    got, _ = perturb_features(classifier, disc, f, "source", cfg, SIZE, labels=labels)
    classifier.eval()
    disc.eval()
    expected = f.clone()
    for _ in range(2):
        g_adv, g_seg = _grads(classifier, disc, expected, labels, "source")
        combined = 2.0 * g_seg - 1.0 * _l2_grad(expected, f) + 0.5 * g_adv
        expected = expected + 0.02 * combined.sign()  # Eq. (4)
    assert torch.allclose(got, expected, atol=1e-6)


def test_fgspm_is_one_step_with_eps_scaled_by_k() -> None:
    classifier, disc, f, labels = _setup(3)
    cfg = AttackConfig(name="fgspm", iterations=3, seg_objective="ce")
    got, diag = perturb_features(classifier, disc, f, "source", cfg, SIZE, labels=labels)
    classifier.eval()
    disc.eval()
    g_adv, g_seg = _grads(classifier, disc, f, labels, "source", seg="ce")
    expected = f + 3 * cfg.eps_adv * g_adv.sign() + 3 * cfg.eps_seg * g_seg.sign()
    assert torch.allclose(got, expected, atol=1e-6)
    assert "grad_adv/k1" not in diag
    unscaled, _ = perturb_features(
        classifier,
        disc,
        f,
        "source",
        AttackConfig(name="fgspm", fgspm_scale_eps=False, seg_objective="ce"),
        SIZE,
        labels=labels,
    )
    assert torch.allclose(
        unscaled, f + cfg.eps_adv * g_adv.sign() + cfg.eps_seg * g_seg.sign(), atol=1e-6
    )


def test_mi_fgspm_signs_each_objectives_momentum() -> None:
    classifier, disc, f, labels = _setup(4)
    cfg = AttackConfig(name="mi_fgspm", iterations=2, momentum=0.5)
    got, _ = perturb_features(classifier, disc, f, "source", cfg, SIZE, labels=labels)
    classifier.eval()
    disc.eval()

    def norm(g: torch.Tensor) -> torch.Tensor:
        return g / g.abs().flatten(1).mean(1).clamp_min(1e-30).view(-1, 1, 1, 1)

    expected = f.clone()
    mom = {"adv": 0.0, "seg": 0.0, "l2": 0.0}
    for _ in range(2):
        g_adv, g_seg = _grads(classifier, disc, expected, labels, "source")
        g_l2 = _l2_grad(expected, f)
        for k, g in (("adv", g_adv), ("seg", g_seg), ("l2", g_l2)):
            mom[k] = 0.5 * mom[k] + norm(g)
        expected = expected + (
            cfg.eps_adv * mom["adv"].sign()
            - cfg.eps_l2 * mom["l2"].sign()
            + cfg.eps_seg * mom["seg"].sign()
        )
    assert torch.allclose(got, expected, atol=1e-6)


def test_none_returns_the_features_and_relative_eps_scales_with_std() -> None:
    classifier, disc, f, labels = _setup(5)
    same, diag = perturb_features(
        classifier, disc, f, "source", AttackConfig(name="none"), SIZE, labels=labels
    )
    assert torch.equal(same, f) and diag == {}
    cfg = AttackConfig(name="i_fgspm", iterations=1, eps_mode="relative")
    scaled, _ = perturb_features(classifier, disc, 10 * f, "target", cfg, SIZE)
    step = (scaled - 10 * f).abs().flatten(1).max(1).values
    std = (10 * f).flatten(1).std(1)
    # one step moves each element by eps1 * std (the L2 term is 0 at k = 0)
    assert torch.allclose(step, cfg.eps_adv * std, rtol=1e-4)


def test_attack_leaves_f_and_d_untouched() -> None:
    classifier, disc, f, labels = _setup(6)
    classifier.train()
    marker = [torch.full_like(p, 7.0) for p in classifier.parameters()]
    for p, m in zip(classifier.parameters(), marker, strict=True):
        p.grad = m.clone()
    before_f = copy.deepcopy(classifier.state_dict())
    before_d = copy.deepcopy(disc.state_dict())
    perturb_features(classifier, disc, f, "source", AttackConfig(), SIZE, labels=labels)
    for p, m in zip(classifier.parameters(), marker, strict=True):
        assert torch.equal(p.grad, m)  # .grad untouched
    assert all(p.grad is None for p in disc.parameters())
    for k, v in classifier.state_dict().items():
        assert torch.equal(v, before_f[k]), k  # weights and BN running stats
    for k, v in disc.state_dict().items():
        assert torch.equal(v, before_d[k]), k
    assert classifier.training  # mode restored


def test_without_a_discriminator_the_attack_follows_eq6_without_its_domain_term() -> None:
    classifier, _, f, labels = _setup(7)
    classifier, f = classifier.double(), f.double()  # float64: the reference's signs are exact
    cfg = AttackConfig(name="i_fgspm", iterations=1)
    got1, diag1 = perturb_features(classifier, None, f, "source", cfg, SIZE, labels=labels)
    got2, diag2 = perturb_features(
        classifier, None, f, "source", dataclasses.replace(cfg, iterations=2), SIZE, labels=labels
    )
    classifier.eval()

    def g_seg(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        probs = upsample_logits(classifier(x), SIZE).softmax(1)
        return torch.autograd.grad(lovasz_softmax(probs, labels), x)[0]

    # A wrong sign anywhere would put an element 2 * eps_seg = 0.022 off; 1e-12 is rounding.
    # Iteration 1 starts at f* = f, where the L2 term's gradient is 0 (sign 0): L_seg alone moves.
    expected1 = f + cfg.eps_seg * g_seg(f).sign()
    torch.testing.assert_close(got1, expected1, rtol=0, atol=1e-12)
    # Iteration 2: Eq. (6) without L_adv; f* != f everywhere now, so the L2 sign is -1 or +1.
    g_l2 = _l2_grad(expected1, f)
    assert bool((g_l2 != 0).all())
    expected2 = expected1 + (cfg.eps_seg * g_seg(expected1).sign() - cfg.eps_l2 * g_l2.sign())
    torch.testing.assert_close(got2, expected2, rtol=0, atol=1e-12)
    for diag in (diag1, diag2):
        assert not any(k.startswith("grad_adv") for k in diag) and "grad_seg/k0" in diag
    assert diag1["grad_l2/k0"].item() == 0.0 and "grad_seg/k1" in diag2
    # I-FGSM (Eq. 4) without its beta_adv term: one sign over beta_seg * g_seg - beta_l2 * g_l2
    fgsm = AttackConfig(name="i_fgsm", iterations=1, fgsm_eps=0.02, beta_seg=2.0)
    got, _ = perturb_features(classifier, None, f, "source", fgsm, SIZE, labels=labels)
    torch.testing.assert_close(got, f + 0.02 * g_seg(f).sign(), rtol=0, atol=1e-12)
    with pytest.raises(ApodaError, match="without a discriminator"):
        perturb_features(classifier, None, f, "target", cfg, SIZE, labels=labels)
    with pytest.raises(ApodaError, match="without a discriminator"):
        perturb_features(classifier, None, f, "source", cfg, SIZE)


def test_bad_settings_are_named() -> None:
    classifier, disc, f, _ = _setup()
    with pytest.raises(ApodaError, match=r"attack\.name 'pgd'"):
        perturb_features(classifier, disc, f, "target", AttackConfig(name="pgd"), SIZE)
    with pytest.raises(ApodaError, match="source labels"):
        perturb_features(classifier, disc, f, "source", AttackConfig(), SIZE)
