"""Methods: one small object each, all driven by the same training loop."""

from __future__ import annotations

import torch

from apoda.config import Config
from apoda.errors import ApodaError
from apoda.methods.apoda import Apoda
from apoda.methods.base import Batch, Method, RunContext, StepLog
from apoda.methods.bn_adaptation import TargetBatchNorm
from apoda.methods.output_adversarial import AdvEnt, AdvEntMinEnt, MinEnt, OutputAdversarial
from apoda.methods.source_only import SourceOnly
from apoda.models import Segmenter

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (SourceOnly, OutputAdversarial, AdvEnt, MinEnt, AdvEntMinEnt, Apoda, TargetBatchNorm)
}


def build_method(segmenter: Segmenter, config: Config, device: torch.device) -> Method:
    """The method named by `config.method.name`, around an already-built segmenter."""
    name = config.method.name
    if name not in METHODS:
        raise ApodaError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name](segmenter, config, device)


__all__ = ["METHODS", "Batch", "Method", "RunContext", "StepLog", "build_method"]
