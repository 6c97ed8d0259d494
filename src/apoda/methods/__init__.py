"""Methods: one file each (its `Method` subclass and its settings dataclass, registered together
under the name a user types), all driven by the same training loop."""

from __future__ import annotations

from pathlib import Path

import torch

from apoda.config import Config

# Importing a method's module registers it: this order is the order the names are listed in.
# isort: off
from apoda.methods import source_only, output_adversarial, apoda, adabn, dacs  # noqa: F401

# isort: on
from apoda.methods.base import Batch, LoopSettings, Method, RunContext, StepLog
from apoda.models import Segmenter
from apoda.registry import METHODS


def loop_settings(
    config: Config, device: torch.device, pretrained_file: Path | None = None
) -> LoopSettings:
    """What the loop gives every method, from the run's config (`pretrained_file`: what
    built-in `model.pretrained` weights resolved to; a plain path is taken as it is)."""
    train, pretrained = config.train, config.model.pretrained
    if pretrained_file is None and pretrained and not pretrained.startswith("builtin:"):
        pretrained_file = Path(pretrained)
    return LoopSettings(
        config.optim,
        config.model,
        device,
        train.amp,
        train.nonfinite,
        config.data.normalisation,
        pretrained_file,
    )


def build_method(
    segmenter: Segmenter,
    config: Config,
    device: torch.device,
    pretrained_file: Path | None = None,
) -> Method:
    """The method named by `config.method.name`, around an already-built segmenter, given its
    own settings (`config.method`) and the loop's (`loop_settings`)."""
    entry = METHODS.get(config.method.name, what="method.name")
    return entry.cls(segmenter, config.method, loop_settings(config, device, pretrained_file))


__all__ = [
    "METHODS",
    "Batch",
    "LoopSettings",
    "Method",
    "RunContext",
    "StepLog",
    "build_method",
    "loop_settings",
]
