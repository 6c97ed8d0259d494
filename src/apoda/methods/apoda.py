"""APODA steps 2 and 3: G frozen; perturb source and target features point by point with the
configured attack (Eq. 4-6), then train F with Eq. (9) and D to give the domain labels to clean
and perturbed outputs alike."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from apoda.attacks import AttackConfig, perturb_features
from apoda.config import at_least_one, check_fields, non_negative
from apoda.losses import SegLossName, consistency_loss, domain_loss, entropy_loss
from apoda.methods.base import Batch, LoopSettings, Method, RunContext, StepLog
from apoda.methods.parts import SupervisedLoss, new_discriminator
from apoda.models import Segmenter
from apoda.registry import register_method


@dataclass
class ApodaSettings:
    """APODA steps 2-3 (Eq. 9): G frozen, F and D against feature perturbations (`attack`)."""

    name: Literal["apoda"] = "apoda"
    seg_loss: SegLossName = "ce"
    discriminator_width: int = 64
    alpha_cst: float = 0.2
    alpha_ent: float = 0.002
    alpha_ent_adv: float = 0.0005
    attack: AttackConfig = field(default_factory=AttackConfig)

    def __post_init__(self) -> None:
        check_fields(self, "method")
        non_negative(self, "method", ["alpha_cst", "alpha_ent", "alpha_ent_adv"])
        at_least_one(self, "method", ["discriminator_width"])


@register_method("apoda", ApodaSettings)
class Apoda(Method):
    """F and D trained against pointwise feature perturbations; G never changes."""

    name = "apoda"
    settings: ApodaSettings

    def __init__(self, segmenter: Segmenter, settings: Any, loop: LoopSettings) -> None:
        super().__init__(segmenter, settings, loop)
        model = loop.model
        if not model.init_from:
            warnings.warn(
                "APODA without model.init_from starts from an untrained G; the paper's step 1 "
                "(a source-only run) should come first",
                stacklevel=2,
            )
        self.segmenter.freeze_feature_extractor()
        in_f = [m for m in self.segmenter.classifier.modules() if isinstance(m, nn.BatchNorm2d)]
        if in_f and model.bn_mode in ("train", "legacy"):
            warnings.warn(
                f"the cut at {model.cut} puts {len(in_f)} batch-norm layers into F with "
                f"bn_mode={model.bn_mode!r}: target images will re-estimate their "
                "statistics (AdaBN), which the paper's frozen-BN ResNet-101 does not do; set "
                "model.bn_mode=frozen to compare with it",
                stacklevel=2,
            )
        self.supervised = SupervisedLoss(segmenter, settings.seg_loss)
        self.optimizers["segmenter"] = self.segmenter_optimizer()
        disc, opt = new_discriminator(
            segmenter.num_classes, settings.discriminator_width, loop.optim, self.device
        )
        self.modules["discriminator"] = disc
        self.optimizers["discriminator"] = opt

    def prepare(self, context: RunContext) -> None:
        self.supervised.prepare(context.class_names, context.source_pixel_fraction)

    def _features(self, image: Tensor) -> Tensor:
        """f = G(x), computed once per step without a graph (G is frozen), in float32."""
        with torch.no_grad(), self.autocast():
            return self.segmenter.features(image).float()

    def train_step(self, source: Batch, target: Batch, iteration: int) -> StepLog:
        settings = self.settings
        disc = self.modules["discriminator"]
        classifier = self.segmenter.classifier
        size_s, size_t = tuple(source["image"].shape[2:]), tuple(target["image"].shape[2:])
        labels = source["label"]
        f_s, f_t = self._features(source["image"]), self._features(target["image"])

        # Step 2: adversarial features (the attack runs in float32: its signs must be exact).
        f_s_adv, diag_s = perturb_features(
            classifier, disc, f_s, "source", settings.attack, size_s, labels=labels
        )
        f_t_adv, diag_t = perturb_features(classifier, disc, f_t, "target", settings.attack, size_t)
        log: StepLog = {f"attack/source/{k}": v for k, v in diag_s.items()}
        log.update({f"attack/target/{k}": v for k, v in diag_t.items()})

        # Step 3: F on clean and perturbed features, in one batch per domain.
        self.optimizers["segmenter"].zero_grad(set_to_none=True)
        with self.autocast():
            logits_s = self.segmenter.classify(torch.cat([f_s, f_s_adv]), size_s)
            logits_t = self.segmenter.classify(torch.cat([f_t, f_t_adv]), size_t)
        clean_s, adv_s = logits_s.float().chunk(2)
        clean_t, adv_t = logits_t.float().chunk(2)
        seg = self.supervised.loss(clean_s, labels)
        seg_adv = self.supervised.loss(adv_s, labels)
        cst = consistency_loss(clean_t.softmax(1), adv_t.softmax(1))  # Eq. (7)
        ent, ent_adv = entropy_loss(clean_t), entropy_loss(adv_t)  # Eq. (8)
        # Eq. (9)
        loss_cls = (
            seg_adv
            + seg
            + settings.alpha_cst * cst
            + settings.alpha_ent * ent
            + settings.alpha_ent_adv * ent_adv
        )
        terms = {"loss/seg_source": seg, "loss/seg_source_adv": seg_adv, "loss/cst": cst}
        terms.update({"loss/ent_target": ent, "loss/ent_target_adv": ent_adv})
        log.update({k: v.detach() for k, v in terms.items()})
        log["loss/total"] = loss_cls.detach()
        self.backward_step(loss_cls, log, ["segmenter"])

        # D assigns the same domain label to perturbed outputs as to their clean originals.
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        probs_s = torch.cat([clean_s, adv_s]).softmax(1).detach()
        probs_t = torch.cat([clean_t, adv_t]).softmax(1).detach()
        with self.autocast():
            d_s, d_t = disc(probs_s).float(), disc(probs_t).float()
        loss_d = 0.5 * domain_loss(d_s, "source") + 0.5 * domain_loss(d_t, "target")  # Eq. (2)
        log["loss/d"] = loss_d.detach()
        self.backward_step(loss_d, {"loss/d": log["loss/d"]}, ["discriminator"])
        return log
