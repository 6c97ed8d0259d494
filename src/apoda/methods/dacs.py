"""Self-training with cross-domain mixing (DACS, Tranheden et al., WACV 2021; the settings of
DAFormer's `mmseg/models/uda/dacs.py`): a mean teacher's pseudo-labels on target images, source
classes pasted onto them (ClassMix), and the student trained on source and on the mixed images.
Unlike APODA, G trains.

With `perturbation_lambda > 0` (ours, issue 25) APODA's point-wise feature perturbation
regularises the mixed-image term: the mixed images' features are attacked with the mixed labels
(Eq. 6 without its L_adv term: DACS has no D) and F is also trained on the perturbed features
(Eq. 9's L_seg(P*) term). The perturbed features are detached, so that term trains F only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from apoda.attacks import AttackConfig, perturb_features
from apoda.config import check_fields, non_negative, require
from apoda.data.transforms import Normalisation
from apoda.errors import ApodaError
from apoda.losses import SegLossName
from apoda.methods.base import Batch, LoopSettings, Method, RunContext, StepLog
from apoda.methods.parts import EMATeacher, ImageNetFeatureDistance, SupervisedLoss
from apoda.mixing import (
    class_mix_masks,
    mix,
    mixed_pixel_weight,
    pseudo_labels,
    strong_photometric,
    weighted_cross_entropy,
)
from apoda.models import Segmenter
from apoda.registry import register_method


@dataclass
class DACSSettings:
    """DACS: `ema_alpha` of the teacher (DACS 0.99, DAFormer 0.999), `pseudo_threshold` tau of
    the confidence weight, the strong transform of the mixed image, the pseudo-label rows to
    ignore on real data (ego-car hood), which network evaluation scores, and DAFormer's
    ImageNet feature distance (weight 0.005 there, on the thing classes, needs model.pretrained).

    `perturbation_lambda` (ours; 0 = off, plain DACS) weights the weighted CE of F on the mixed
    images' features perturbed by `attack` (APODA's step 2 without D, on the mixed labels)."""

    name: Literal["dacs"] = "dacs"
    seg_loss: SegLossName = "ce"
    lambda_seg_aux: float = 0.1
    ema_alpha: float = 0.99
    pseudo_threshold: float = 0.968
    color_jitter_strength: float = 0.2
    color_jitter_probability: float = 0.2
    blur: bool = True
    pseudo_ignore_top: int = 0
    pseudo_ignore_bottom: int = 0
    evaluate: Literal["student", "teacher"] = "student"
    imnet_feature_dist_lambda: float = 0.0
    imnet_feature_dist_classes: list[str] | None = None
    imnet_feature_dist_scale_min_ratio: float = 0.75
    perturbation_lambda: float = 0.0
    attack: AttackConfig = field(default_factory=AttackConfig)

    def __post_init__(self) -> None:
        check_fields(self, "method")
        non_negative(self, "method", ["lambda_seg_aux", "color_jitter_strength"])
        non_negative(self, "method", ["imnet_feature_dist_lambda", "perturbation_lambda"])
        non_negative(self, "method", ["pseudo_ignore_top", "pseudo_ignore_bottom"])
        for key in ("ema_alpha", "pseudo_threshold", "color_jitter_probability"):
            value = getattr(self, key)
            require(0 <= value <= 1, f"method.{key}", value, "in [0, 1]")


@register_method("dacs", DACSSettings)
class DACS(Method):
    """Student: L_seg on source + confidence-weighted CE on ClassMix images whose labels are the
    source's where pasted and the EMA teacher's elsewhere."""

    name = "dacs"
    settings: DACSSettings

    def __init__(self, segmenter: Segmenter, settings: Any, loop: LoopSettings) -> None:
        super().__init__(segmenter, settings, loop)
        if settings.perturbation_lambda > 0 and segmenter.aux_head is not None:
            raise ApodaError(
                "method.perturbation_lambda > 0 needs model.multi_level=false: the feature "
                "perturbation is defined for the main head only"
            )
        self.supervised = SupervisedLoss(segmenter, settings.seg_loss, settings.lambda_seg_aux)
        self.optimizers["segmenter"] = self.segmenter_optimizer()
        self.teacher = EMATeacher(segmenter)
        self.modules["teacher"] = self.teacher.network
        self.normalisation = Normalisation(loop.normalisation)
        self.feature_distance: ImageNetFeatureDistance | None = None  # set by `prepare`

    def prepare(self, context: RunContext) -> None:
        self.supervised.prepare(context.class_names, context.source_pixel_fraction)
        s = self.settings
        if s.imnet_feature_dist_lambda > 0:
            if self.segmenter.aux_head is not None:
                raise ApodaError("the ImageNet feature distance needs model.multi_level=false")
            names = s.imnet_feature_dist_classes
            unknown = sorted(set(names or ()) - set(context.class_names))
            if unknown:
                raise ApodaError(
                    f"method.imnet_feature_dist_classes names unknown classes {unknown}; "
                    f"valid: {list(context.class_names)}"
                )
            classes = None if names is None else [context.class_names.index(n) for n in names]
            self.feature_distance = ImageNetFeatureDistance(
                self.segmenter,
                self.loop.pretrained_file,
                classes,
                s.imnet_feature_dist_scale_min_ratio,
            )

    def _source_loss(self, source: Batch, log: StepLog) -> torch.Tensor:
        """L_seg on source, plus the weighted ImageNet feature distance when it is on."""
        if self.feature_distance is None:
            return self.supervised(source["image"], source["label"], log)[0]
        features = self.segmenter.features(source["image"])
        logits = self.segmenter.classify(features, tuple(source["image"].shape[2:]))
        loss = self.supervised.loss(logits, source["label"])
        log["loss/seg_source"] = loss.detach()
        distance = self.feature_distance(features, source["image"], source["label"])
        log["loss/imnet_feature_dist"] = distance.detach()
        return loss + self.settings.imnet_feature_dist_lambda * distance

    @property
    def evaluated(self) -> str:
        return "teacher" if self.settings.evaluate == "teacher" else "segmenter"

    def set_train_mode(self) -> None:
        """The student trains; the teacher always runs in eval mode."""
        super().set_train_mode()
        self.teacher.network.eval()

    def _mixed_batch(self, source: Batch, target: Batch, log: StepLog) -> tuple[Any, Any, Any]:
        """The ClassMix images (strongly transformed), their labels and pixel weights."""
        s = self.settings
        if source["image"].shape != target["image"].shape:
            raise ApodaError(
                "DACS pastes source pixels onto target images: both batches need one size, got "
                f"source {tuple(source['image'].shape[2:])} and target "
                f"{tuple(target['image'].shape[2:])} (set data.crop, or data.source_size and "
                "data.target_size alike)"
            )
        with torch.no_grad(), self.autocast():
            teacher_logits = self.teacher.network(target["image"])
        pseudo, weight = pseudo_labels(teacher_logits, s.pseudo_threshold)
        log["self_training/pseudo_weight"] = weight
        masks = class_mix_masks(source["label"])
        images = mix(masks, source["image"], target["image"])
        unit = strong_photometric(
            self.normalisation.to_unit_rgb(images),
            s.color_jitter_strength,
            s.color_jitter_probability,
            s.blur,
        )
        labels = mix(masks, source["label"], pseudo)
        weights = mixed_pixel_weight(masks, weight, s.pseudo_ignore_top, s.pseudo_ignore_bottom)
        return self.normalisation.from_unit_rgb(unit), labels, weights

    def _perturbed_mixed_loss(
        self, features: Tensor, labels: Tensor, weights: Tensor, log: StepLog
    ) -> Tensor:
        """Weighted CE of F on the mixed images' features perturbed point by point (APODA's step
        2 and Eq. 9's L_seg(P*) term, with the mixed labels for the source labels), unscaled."""
        size = tuple(labels.shape[1:])
        # Eq. (6) without its L_adv term (DACS has no D, so no domain term): ascend L_seg on the
        # mixed labels, descend L_2. In float32 outside autocast, as in APODA: signs must be exact.
        f_adv, diagnostics = perturb_features(
            self.segmenter.classifier,
            None,
            features.detach().float(),
            "source",
            self.settings.attack,
            (size[0], size[1]),
            labels=labels,
        )
        log.update({f"attack/mixed/{k}": v for k, v in diagnostics.items()})
        with self.autocast():
            # Eq. (9)'s L_seg(P*) term: f* is detached, so it trains F, never G.
            return weighted_cross_entropy(self.segmenter.classify(f_adv, size), labels, weights)

    def train_step(self, source: Batch, target: Batch, iteration: int) -> StepLog:
        log: StepLog = {}
        if iteration > 0:
            alpha = self.teacher.update(self.segmenter, iteration, self.settings.ema_alpha)
            log["self_training/ema_alpha"] = torch.tensor(alpha)
        self.optimizers["segmenter"].zero_grad(set_to_none=True)
        images, labels, weights = self._mixed_batch(source, target, log)
        features: Tensor | None = None
        with self.autocast():
            loss = self._source_loss(source, log)
            if self.settings.perturbation_lambda == 0:
                mixed = weighted_cross_entropy(self.segmenter(images), labels, weights)
            else:  # the same logits as `self.segmenter(images)`, keeping f = G(x) for the attack
                features = self.segmenter.features(images)
                logits = self.segmenter.classify(features, tuple(images.shape[2:]))
                mixed = weighted_cross_entropy(logits, labels, weights)
        log["loss/seg_mixed"] = mixed.detach()
        loss = loss + mixed
        if features is not None:
            adv = self._perturbed_mixed_loss(features, labels, weights, log)
            log["loss/seg_mixed_adv"] = adv.detach()
            # Eq. (9)'s L_seg(P) + L_seg(P*) pair on the mixed images, the latter weighted
            loss = loss + self.settings.perturbation_lambda * adv
        self.backward_step(loss, log, ["segmenter"])
        log["loss/total"] = loss.detach()
        return log
