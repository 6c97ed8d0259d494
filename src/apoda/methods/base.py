"""What every method shares: the segmenter, the optimisers it owns, mixed precision, and the
supervised segmentation loss (with the optional multi-level auxiliary head)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apoda.checkpoints import load_module_state
from apoda.config import Config
from apoda.distributed import average_gradients, global_mean_denominator
from apoda.losses import IGNORE_INDEX, class_weights, segmentation_loss
from apoda.models import Discriminator, Segmenter, upsample_logits
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


class Method(ABC):
    """One adaptation method: owns its modules, optimisers and counters and takes one step.

    The training loop owns data, schedule, evaluation, checkpoints and logs; it calls
    `prepare` once, then `train_step`, and saves and restores the method through
    `state_dict` / `load_state_dict`. It knows no method by name.
    """

    name: ClassVar[str] = "method"

    def __init__(self, segmenter: Segmenter, config: Config, device: torch.device) -> None:
        self.segmenter = segmenter
        self.config = config
        self.device = device
        self.class_weights: Tensor | None = None
        self.modules: dict[str, nn.Module] = {"segmenter": segmenter}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.skipped_steps = 0

    def prepare(self, context: RunContext) -> None:
        """Take what the method needs from the data: class weights for `seg_loss: wce`."""
        if getattr(self.config.method, "seg_loss", None) == "wce":
            fractions = [context.source_pixel_fraction.get(n, 0.0) for n in context.class_names]
            self.class_weights = class_weights(fractions)

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
        """bf16 autocast on CUDA when the config asks for it; float32 everywhere else."""
        if self.device.type == "cuda" and self.config.train.amp and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def segmenter_optimizer(self) -> torch.optim.Optimizer:
        """SGD over the segmenter's trainable parameters (classifier at `classifier_lr_mult`)."""
        optim = self.config.optim
        groups = self.segmenter.parameter_groups(
            optim.lr, classifier_lr_mult=optim.classifier_lr_mult
        )
        return torch.optim.SGD(
            groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
        )

    def discriminator(self) -> tuple[Discriminator, torch.optim.Optimizer]:
        """A fresh D on C-channel maps and its Adam optimiser (lr 1e-4, betas 0.9/0.99)."""
        width = self.config.method.discriminator_width
        disc = Discriminator(self.segmenter.num_classes, ndf=width).to(self.device)
        optim = self.config.optim
        opt = torch.optim.Adam(disc.parameters(), lr=optim.d_lr, betas=tuple(optim.d_betas))
        return disc, opt

    def seg_loss(self, logits: Tensor, labels: Tensor, name: str | None = None) -> Tensor:
        """L_seg in float32 at the label's size."""
        logits = upsample_logits(logits, labels.shape[1:]).float()
        name = name or self.config.method.seg_loss
        weighted = name == "wce" and self.class_weights is not None
        if name == "ce" or weighted:
            # Sum over labelled pixels / the mean count over ranks: in one process the plain
            # mean; under DDP the averaged gradient then equals the 1-process one exactly
            # (one formula for both, so 1 and R processes also round alike).
            weight = self.class_weights.to(logits.device) if weighted else None
            total = F.cross_entropy(
                logits, labels, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum"
            )
            valid = labels[labels != IGNORE_INDEX]
            count = weight[valid].sum() if weight is not None else valid.new_tensor(valid.numel())
            return total / global_mean_denominator(count.float())
        return segmentation_loss(name, logits, labels, self.class_weights)

    def supervised_loss(
        self, image: Tensor, labels: Tensor, log: StepLog
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Source L_seg (+ aux head at `lambda_seg_aux`); returns (loss, logits, aux logits)."""
        aux = None
        if self.config.model.multi_level:
            logits, aux = self.segmenter(image, with_aux=True)
            loss_aux = self.seg_loss(aux, labels)
            log["loss/seg_source_aux"] = loss_aux.detach()
            weight = self.config.method.lambda_seg_aux
            loss = self.seg_loss(logits, labels) + weight * loss_aux
        else:
            logits = self.segmenter(image)
            loss = self.seg_loss(logits, labels)
        log["loss/seg_source"] = loss.detach()
        return loss, logits, aux

    def target_outputs(self, image: Tensor) -> tuple[Tensor, Tensor | None]:
        """Target logits (and aux logits with the multi-level head)."""
        if self.config.model.multi_level:
            return self.segmenter(image, with_aux=True)
        return self.segmenter(image), None

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
            if self.config.train.nonfinite == "skip":
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
