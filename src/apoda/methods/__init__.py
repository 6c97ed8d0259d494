"""Methods: one file each (its `Method` subclass and its settings dataclass, registered together
under the name a user types), all driven by the same training loop."""

from __future__ import annotations

import torch

from apoda.config import Config

# Importing a method's module registers it: this order is the order the names are listed in.
# isort: off
from apoda.methods import source_only, output_adversarial, apoda, adabn, dacs  # noqa: F401

# isort: on
from apoda.methods.base import Batch, LoopSettings, Method, RunContext, StepLog
from apoda.models import Segmenter
from apoda.registry import METHODS


def loop_settings(config: Config, device: torch.device) -> LoopSettings:
    """What the loop gives every method, from the run's config."""
    train = config.train
    return LoopSettings(
        config.optim, config.model, device, train.amp, train.nonfinite, config.data.normalisation
    )


def build_method(segmenter: Segmenter, config: Config, device: torch.device) -> Method:
    """The method named by `config.method.name`, around an already-built segmenter, given its
    own settings (`config.method`) and the loop's (`loop_settings`)."""
    entry = METHODS.get(config.method.name, what="method.name")
    return entry.cls(segmenter, config.method, loop_settings(config, device))


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
