"""What every method shares: the segmenter, the optimisers it owns, mixed precision, the
guarded backward step and its state in checkpoints (the losses are parts, `methods.parts`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from apoda.checkpoints import load_module_state
from apoda.config import ModelConfig, OptimConfig
from apoda.distributed import average_gradients
from apoda.models import Segmenter
from apoda.models.segmenter import upgrade_state_keys

Batch = dict[str, Tensor]
StepLog = dict[str, Tensor]


class NonFiniteError(Exception):
    """A loss term or gradient became NaN or infinite; `term` names it."""

    def __init__(self, term: str) -> None:
        super().__init__(f"non-finite value in {term}")
        self.term = term


@dataclass(frozen=True)
class RunContext:
    """What a method may need from the run's data before its first step."""

    class_names: tuple[str, ...]
    source_pixel_fraction: dict[str, float]
    """Each class's share of labelled source pixels (the source statistics)."""


@dataclass
class LoopSettings:
    """What the training loop gives every method besides its own settings: the optimiser
    settings, bf16 autocast, the non-finite rule, the device, and the model section (how the
    segmenter was built and where its weights came from)."""

    optim: OptimConfig
    model: ModelConfig
    device: torch.device
    amp: bool = True
    nonfinite: str = "stop"
    normalisation: str = "imagenet"
    """How the loop's images are normalised (`data.normalisation`), for photometric steps."""
    pretrained_file: Path | None = None
    """The file `model.pretrained` resolved to (ImageNet weights), for methods that keep a
    frozen copy of the pretrained backbone."""


class Method(ABC):
    """One adaptation method: owns its modules, optimisers and counters and takes one step.

    The training loop owns data, schedule, evaluation, checkpoints and logs; it calls
    `prepare` once, then `train_step`, and saves and restores the method through
    `state_dict` / `load_state_dict`. It knows no method by name. A subclass registers itself
    with its settings dataclass (`apoda.registry.register_method`) and reads only those.
    """

    name: ClassVar[str] = "method"

    def __init__(self, segmenter: Segmenter, settings: Any, loop: LoopSettings) -> None:
        self.segmenter = segmenter
        self.settings = settings
        self.loop = loop
        self.device = loop.device
        self.modules: dict[str, nn.Module] = {"segmenter": segmenter}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.skipped_steps = 0

    def prepare(self, context: RunContext) -> None:
        """Take what the method needs from the run's data before its first step (by default
        nothing)."""
        del context

    @property
    def evaluated(self) -> str:
        """The module in `self.modules` that evaluation scores and `apoda eval` loads (a
        self-training method may name its teacher)."""
        return "segmenter"

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Modules, optimisers and counters, as a checkpoint holds them."""
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        """Restore what `state_dict` saved; `path` names the checkpoint in errors."""
        for name, module in self.modules.items():
            load_module_state(module, state["modules"][name], name, path, upgrade_state_keys)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.skipped_steps = int(state.get("skipped_steps", 0))

    # -- helpers shared by the methods -------------------------------------------------------
    def autocast(self) -> AbstractContextManager[object]:
        """bf16 autocast on CUDA when the loop asks for it; float32 everywhere else."""
        if self.device.type == "cuda" and self.loop.amp and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def segmenter_optimizer(self) -> torch.optim.Optimizer:
        """SGD (or AdamW) over the segmenter's trainable parameters (classifier at
        `classifier_lr_mult`)."""
        optim = self.loop.optim
        groups = self.segmenter.parameter_groups(
            optim.lr, classifier_lr_mult=optim.classifier_lr_mult
        )
        if optim.segmenter_optimizer == "adamw":
            betas = (optim.betas[0], optim.betas[1])
            return torch.optim.AdamW(
                groups, lr=optim.lr, betas=betas, weight_decay=optim.weight_decay
            )
        return torch.optim.SGD(
            groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
        )

    def backward_step(self, loss: Tensor, terms: StepLog, optimizers: list[str]) -> bool:
        """Backward, average gradients over ranks, guard against non-finite values, step.

        With `train.nonfinite: stop` a non-finite loss term or gradient raises NonFiniteError
        naming the term; with `skip` the step is dropped (returns False) and counted.
        """
        loss.backward()
        params = [
            p
            for name in optimizers
            for g in self.optimizers[name].param_groups
            for p in g["params"]
        ]
        average_gradients(params)
        grads = [p.grad.detach().abs().sum() for p in params if p.grad is not None]
        values = torch.stack([loss.detach().float(), *(t.float() for t in terms.values()), *grads])
        if not bool(torch.isfinite(values).all()):
            bad = [k for k, t in terms.items() if not bool(torch.isfinite(t).all())]
            what = bad[0] if bad else ("the loss" if not torch.isfinite(loss) else "a gradient")
            for name in optimizers:
                self.optimizers[name].zero_grad(set_to_none=True)
            if self.loop.nonfinite == "skip":
                self.skipped_steps += 1
                return False
            raise NonFiniteError(what)
        for name in optimizers:
            self.optimizers[name].step()
        return True

    def set_train_mode(self) -> None:
        """Put every owned module in train mode (frozen parts keep themselves in eval)."""
        for module in self.modules.values():
            module.train()

    @abstractmethod
    def train_step(self, source: Batch, target: Batch, iteration: int) -> StepLog:
        """Take one optimisation step; return every loss term (detached) for logging."""
