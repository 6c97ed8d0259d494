"""Step 1 of the paper, and the "source only" baseline: G and F trained on labelled source
images with CE, Lovász or both, optionally plus target entropy (Eq. 8; Table 5's variants)."""

from __future__ import annotations

from apoda.losses import entropy_loss
from apoda.methods.base import Batch, Method, StepLog


class SourceOnly(Method):
    """Supervised training on source; `lambda_ent > 0` adds entropy minimisation on target."""

    name = "source_only"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.optimizers["segmenter"] = self.segmenter_optimizer()

    def train_step(self, source: Batch, target: Batch, iteration: int) -> StepLog:
        log: StepLog = {}
        self.optimizers["segmenter"].zero_grad(set_to_none=True)
        lambda_ent = self.config.method.lambda_ent
        with self.autocast():
            loss, _, _ = self.supervised_loss(source["image"], source["label"], log)
            if lambda_ent > 0:
                ent = entropy_loss(self.target_outputs(target["image"])[0].float())  # Eq. (8)
                log["loss/ent_target"] = ent.detach()
                loss = loss + lambda_ent * ent
        self.backward_step(loss, log, ["segmenter"])
        log["loss/total"] = loss.detach()
        return log
