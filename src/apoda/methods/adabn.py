"""AdaBN (Li et al. 2016), a control beyond the paper: no weight is trained; G's batch-norm
running statistics are re-estimated on target images. It measures how much of a benchmark's
domain gap is first- and second-order feature statistics, which methods that forward target
images through train-mode batch norm (ASN, AdvEnt with `model.bn_mode: train`) get for free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from apoda.config import check_fields
from apoda.errors import ApodaError
from apoda.methods.base import Batch, LoopSettings, Method, StepLog
from apoda.models import Segmenter
from apoda.registry import register_method


@dataclass
class AdaBNSettings:
    """AdaBN: G's batch-norm statistics re-estimated on target (needs `model.bn_mode: train`);
    nothing is trained, so it has no setting besides its name."""

    name: Literal["adabn"] = "adabn"

    def __post_init__(self) -> None:
        check_fields(self, "method")


@register_method("adabn", AdaBNSettings)
class AdaBN(Method):
    """Replace every BN layer's running statistics by their average over target batches."""

    name = "adabn"

    def __init__(self, segmenter: Segmenter, settings: Any, loop: LoopSettings) -> None:
        super().__init__(segmenter, settings, loop)
        self.norms = [m for m in self.segmenter.modules() if isinstance(m, nn.BatchNorm2d)]
        bn_mode = loop.model.bn_mode
        if bn_mode != "train" or not self.norms:
            raise ApodaError(
                "method adabn re-estimates batch-norm statistics: it needs model.bn_mode=train "
                f"and a backbone with batch norm (got bn_mode={bn_mode!r}, "
                f"{len(self.norms)} batch-norm layers)"
            )
        for norm in self.norms:
            norm.momentum = None  # cumulative average over every target batch seen

    def train_step(self, source: Batch, target: Batch, iteration: int) -> StepLog:
        if iteration == 0:  # forget the source statistics (a resumed run keeps its average)
            for norm in self.norms:
                norm.reset_running_stats()
        with torch.no_grad(), self.autocast():
            logits = self.segmenter(target["image"])
        mean_abs = torch.stack([n.running_mean.abs().mean() for n in self.norms]).mean()
        return {
            "bn/running_mean_abs": mean_abs.detach(),
            "target/max_prob": logits.float().softmax(1).amax(1).mean(),
        }
