"""Feature-space attacks of the paper (step 2): I-FGSPM (Eq. 5, 6), I-FGSM (Eq. 4), FGSPM,
MI-FGSPM and "none".

`perturb_features` is a pure function of (F, D, features, labels, settings): it never steps an
optimiser, never calls G, takes gradients with respect to the features only (the `.grad` of
F's and D's parameters stay untouched) and runs F and D in eval mode so no running statistic
moves. Gradients of the attack objectives:
  L_adv(P*)  the term of Eq. (2) for the features' own domain (ascent confuses D),
  L_2(f*, f) mean over positions of the channel-wise L2 distance (descent keeps f* near f),
  L_seg(P*)  Lovász-Softmax (Eq. 3) or cross-entropy on source labels (ascent).

Without a discriminator (D = None, ours: for methods that have no D, such as DACS) there is no
domain term: the attack ascends L_seg on the given labels (required then; they may be
pseudo-labels) and descends L_2, i.e. Eq. (6) without its L_adv term (Eq. (4) without its
beta_adv term for I-FGSM), and the diagnostics hold no `grad_adv` entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from apoda.errors import ApodaError
from apoda.losses import cross_entropy, domain_loss, lovasz_softmax
from apoda.models.segmenter import upsample_logits

AttackName = Literal["none", "i_fgspm", "i_fgsm", "fgspm", "mi_fgspm"]
ATTACKS: tuple[str, ...] = ("none", "i_fgspm", "i_fgsm", "fgspm", "mi_fgspm")


@dataclass
class AttackConfig:
    """Settings of step 2. Defaults are the paper's (K=3; eps1, eps2, eps3 = 0.01, 0.002, 0.011).

    eps_mode "relative" (ours, not the paper's) multiplies every eps by the standard deviation of
    each sample's clean features, so the step size follows the feature scale of the backbone.
    FGSPM takes one step; with `fgspm_scale_eps` its eps are multiplied by the K it replaces.
    I-FGSM (Eq. 4) uses one eps and the betas (seg, l2, adv); the paper gives no values for them.
    """

    name: AttackName = "i_fgspm"
    iterations: int = 3
    eps_adv: float = 0.01
    eps_l2: float = 0.002
    eps_seg: float = 0.011
    eps_mode: Literal["absolute", "relative"] = "absolute"
    seg_objective: Literal["lovasz", "ce"] = "lovasz"
    fgsm_eps: float = 0.011
    beta_seg: float = 1.0
    beta_l2: float = 1.0
    beta_adv: float = 1.0
    momentum: float = 1.0
    fgspm_scale_eps: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ApodaError for a setting outside its allowed values (also run on creation)."""
        import math

        if self.name not in ATTACKS:
            raise ApodaError(f"attack.name {self.name!r} is not one of {', '.join(ATTACKS)}")
        if self.eps_mode not in ("absolute", "relative"):
            raise ApodaError(f"attack.eps_mode {self.eps_mode!r}: expected absolute or relative")
        if self.seg_objective not in ("lovasz", "ce"):
            raise ApodaError(f"attack.seg_objective {self.seg_objective!r}: expected lovasz or ce")
        if self.iterations < 1:
            raise ApodaError(f"attack.iterations must be >= 1, got {self.iterations}")
        numbers = ("eps_adv", "eps_l2", "eps_seg", "fgsm_eps", "beta_seg", "beta_l2", "beta_adv")
        for key in (*numbers, "momentum"):
            if not math.isfinite(getattr(self, key)):
                raise ApodaError(f"attack.{key} must be a finite number, got {getattr(self, key)}")
        for key in ("eps_adv", "eps_l2", "eps_seg", "fgsm_eps"):
            if getattr(self, key) < 0:
                raise ApodaError(f"attack.{key} must be >= 0, got {getattr(self, key)}")


@contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run modules in eval mode (no BN statistic updates, no dropout) and restore their modes."""
    modes = [[m.training for m in module.modules()] for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(modules, modes, strict=True):
            for m, training in zip(module.modules(), mode, strict=True):
                m.training = training


def l2_distance(perturbed: Tensor, clean: Tensor) -> Tensor:
    """L_2(f*, f) of Eq. (4)-(6): mean over samples and positions of ||f* - f|| over channels."""
    return torch.linalg.vector_norm(perturbed - clean, ord=2, dim=1).mean()


def l2_distance_grad(perturbed: Tensor, clean: Tensor) -> Tensor:
    """Closed-form gradient of `l2_distance` w.r.t. f* (zero where f* = f); no autograd needed."""
    diff = perturbed - clean
    norm = torch.linalg.vector_norm(diff, ord=2, dim=1, keepdim=True)
    positions = diff[:, 0].numel()  # B*H*W: the mean of Eq. (4)-(6)'s L2 term
    return torch.where(norm > 0, diff / norm.clamp_min(1e-30), torch.zeros_like(diff)) / positions


def _seg_loss(logits: Tensor, probs: Tensor, labels: Tensor, seg_objective: str) -> Tensor:
    """L_seg(P*) of Eq. (4) and (6): Lovász-Softmax (Eq. 3) or cross-entropy on `labels`."""
    if seg_objective == "lovasz":
        return lovasz_softmax(probs, labels)
    return cross_entropy(logits, labels)


def _objective_grads(
    classifier: nn.Module,
    discriminator: nn.Module | None,
    perturbed: Tensor,
    domain: Literal["source", "target"],
    labels: Tensor | None,
    out_size: tuple[int, int],
    seg_objective: str,
) -> dict[str, Tensor]:
    """Gradients w.r.t. f* of L_adv (with a D) and (for source) L_seg, from one forward of F
    and D."""
    f_star = perturbed.detach().requires_grad_(True)
    logits = upsample_logits(classifier(f_star), out_size)
    probs = logits.softmax(1)
    if discriminator is None:
        # Eq. (6) without its L_adv term: no D, so L_seg is the only objective F's output gives.
        assert labels is not None
        (grad_seg,) = torch.autograd.grad(_seg_loss(logits, probs, labels, seg_objective), f_star)
        return {"seg": grad_seg}
    loss_adv = domain_loss(discriminator(probs), domain)
    if domain == "target":
        (grad_adv,) = torch.autograd.grad(loss_adv, f_star)
        return {"adv": grad_adv}
    assert labels is not None
    loss_seg = _seg_loss(logits, probs, labels, seg_objective)
    grad_adv, grad_seg = (
        torch.autograd.grad(loss_adv, f_star, retain_graph=True)[0],
        torch.autograd.grad(loss_seg, f_star)[0],
    )
    return {"adv": grad_adv, "seg": grad_seg}


def _normalise_l1(grad: Tensor) -> Tensor:
    """MI-FGSM's per-sample L1 normalisation of a gradient (mean absolute value)."""
    scale = grad.abs().flatten(1).mean(1).clamp_min(1e-30)
    return grad / scale.view(-1, *([1] * (grad.dim() - 1)))


def perturb_features(
    classifier: nn.Module,
    discriminator: nn.Module | None,
    features: Tensor,
    domain: Literal["source", "target"],
    config: AttackConfig,
    out_size: tuple[int, int],
    labels: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Step 2: return perturbed features f* (detached) and per-iteration diagnostics.

    Diagnostics hold, for each iteration k, the mean |gradient| of each objective
    (`grad_adv/k{k}`, `grad_l2/k{k}`, `grad_seg/k{k}`: the paper's Fig. 3) and the L2 distance of
    f* from f after the update (`l2/k{k}`), as 0-dim tensors (converted only when logged).

    `discriminator=None` drops the domain term (L_adv) from every update: the attack then needs
    `domain="source"` and `labels` (L_seg is its only objective besides L_2).
    """
    config.validate()
    if discriminator is None and (domain != "source" or labels is None):
        raise ApodaError(
            "an attack without a discriminator has L_seg as its only objective: it needs "
            f'domain "source" and labels, got domain {domain!r}'
            + (" and no labels" if labels is None else "")
        )
    if domain == "source" and labels is None:
        raise ApodaError("perturbing source features needs the source labels (Eq. 6)")
    clean = features.detach()
    diagnostics: dict[str, Tensor] = {}
    if config.name == "none":
        return clean, diagnostics

    scale: Tensor | float = 1.0
    if config.eps_mode == "relative":
        scale = clean.flatten(1).std(1).view(-1, *([1] * (clean.dim() - 1)))
    steps = 1 if config.name == "fgspm" else config.iterations
    eps_factor = (
        float(config.iterations) if config.name == "fgspm" and config.fgspm_scale_eps else 1.0
    )
    eps = {
        "adv": config.eps_adv * eps_factor,
        "l2": config.eps_l2 * eps_factor,
        "seg": config.eps_seg * eps_factor,
    }
    momentum: dict[str, Tensor] = {}
    perturbed = clean
    modules = [m for m in (classifier, discriminator) if m is not None]
    with _eval_mode(*modules):
        for k in range(steps):
            grads = _objective_grads(
                classifier, discriminator, perturbed, domain, labels, out_size, config.seg_objective
            )
            # The L2 term is descended: its sign enters with a minus in Eq. (4)-(6).
            grads["l2"] = l2_distance_grad(perturbed, clean)
            for name, grad in grads.items():
                diagnostics[f"grad_{name}/k{k}"] = grad.abs().mean()
            if config.name == "i_fgsm":
                # Eq. (4): one sign over the weighted sum of the objectives' gradients.
                if "adv" in grads:
                    combined = config.beta_adv * grads["adv"] - config.beta_l2 * grads["l2"]
                else:  # no D: Eq. (4) without its beta_adv term
                    combined = -config.beta_l2 * grads["l2"]
                if "seg" in grads:
                    combined = combined + config.beta_seg * grads["seg"]
                step = config.fgsm_eps * combined.sign()
            else:
                if config.name == "mi_fgspm":
                    for name, grad in grads.items():
                        momentum[name] = config.momentum * momentum.get(name, 0.0) + _normalise_l1(
                            grad
                        )
                    grads = dict(momentum)
                # Eq. (5) (target) and Eq. (6) (source): each objective signed on its own.
                if "adv" in grads:
                    step = eps["adv"] * grads["adv"].sign() - eps["l2"] * grads["l2"].sign()
                else:  # no D: Eq. (6) without its L_adv term
                    step = -eps["l2"] * grads["l2"].sign()
                if "seg" in grads:
                    step = step + eps["seg"] * grads["seg"].sign()
            perturbed = perturbed + scale * step
            diagnostics[f"l2/k{k}"] = l2_distance(perturbed, clean)
    return perturbed.detach(), diagnostics
