"""Step 1 of the paper, and the "source only" baseline: G and F trained on labelled source
images with CE, Lovász or both, optionally plus target entropy (Eq. 8; Table 5's variants)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from apoda.config import check_fields, non_negative
from apoda.losses import SegLossName, entropy_loss
from apoda.methods.base import Batch, LoopSettings, Method, RunContext, StepLog
from apoda.methods.parts import SupervisedLoss, target_outputs
from apoda.models import Segmenter
from apoda.registry import register_method


@dataclass
class SourceOnlySettings:
    """Step 1 and the source-only baselines: L_seg on source (+ aux head at `lambda_seg_aux`
    with `model.multi_level`), plus target entropy at `lambda_ent` when it is > 0."""

    name: Literal["source_only"] = "source_only"
    seg_loss: SegLossName = "ce"
    lambda_seg_aux: float = 0.1
    lambda_ent: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self, "method")
        non_negative(self, "method", ["lambda_seg_aux", "lambda_ent"])


@register_method("source_only", SourceOnlySettings)
class SourceOnly(Method):
    """Supervised training on source; `lambda_ent > 0` adds entropy minimisation on target."""

    name = "source_only"
    settings: SourceOnlySettings

    def __init__(self, segmenter: Segmenter, settings: Any, loop: LoopSettings) -> None:
        super().__init__(segmenter, settings, loop)
        self.supervised = SupervisedLoss(segmenter, settings.seg_loss, settings.lambda_seg_aux)
        self.optimizers["segmenter"] = self.segmenter_optimizer()

    def prepare(self, context: RunContext) -> None:
        self.supervised.prepare(context.class_names, context.source_pixel_fraction)

    def train_step(self, source: Batch, target: Batch, iteration: int) -> StepLog:
        log: StepLog = {}
        self.optimizers["segmenter"].zero_grad(set_to_none=True)
        lambda_ent = self.settings.lambda_ent
        with self.autocast():
            loss, _, _ = self.supervised(source["image"], source["label"], log)
            if lambda_ent > 0:
                logits_t = target_outputs(self.segmenter, target["image"])[0]
                ent = entropy_loss(logits_t.float())  # Eq. (8)
                log["loss/ent_target"] = ent.detach()
                loss = loss + lambda_ent * ent
        self.backward_step(loss, log, ["segmenter"])
        log["loss/total"] = loss.detach()
        return log
