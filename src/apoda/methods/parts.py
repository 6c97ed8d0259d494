"""Pieces a method composes, each with its own settings: the supervised segmentation loss (with
the optional auxiliary head and class weights) and a discriminator with its optimiser."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apoda.config import OptimConfig
from apoda.distributed import global_mean_denominator
from apoda.errors import ApodaError
from apoda.losses import IGNORE_INDEX, class_weights, segmentation_loss
from apoda.methods.base import StepLog
from apoda.mixing import majority_cells
from apoda.models import Discriminator, Segmenter, upsample_logits
from apoda.models.pretrained import load_pretrained


class SupervisedLoss:
    """L_seg of a segmenter on labelled images: `seg_loss` (ce, lovasz, ce+lovasz, wce), and
    with a multi-level segmenter its auxiliary head's loss at `lambda_seg_aux`."""

    def __init__(self, segmenter: Segmenter, seg_loss: str, lambda_seg_aux: float = 0.0) -> None:
        self.segmenter = segmenter
        self.name = seg_loss
        self.lambda_seg_aux = lambda_seg_aux
        self.class_weights: Tensor | None = None

    def prepare(self, class_names: tuple[str, ...], pixel_fraction: Mapping[str, float]) -> None:
        """Class weights from the source's class frequencies, for `wce`."""
        if self.name == "wce":
            self.class_weights = class_weights([pixel_fraction.get(n, 0.0) for n in class_names])

    def loss(self, logits: Tensor, labels: Tensor, name: str | None = None) -> Tensor:
        """L_seg in float32 at the label's size."""
        logits = upsample_logits(logits, labels.shape[1:]).float()
        name = name or self.name
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

    def __call__(
        self, image: Tensor, labels: Tensor, log: StepLog
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Source L_seg (+ aux head at `lambda_seg_aux`); returns (loss, logits, aux logits)."""
        aux = None
        if self.segmenter.aux_head is not None:
            logits, aux = self.segmenter(image, with_aux=True)
            loss_aux = self.loss(aux, labels)
            log["loss/seg_source_aux"] = loss_aux.detach()
            loss = self.loss(logits, labels) + self.lambda_seg_aux * loss_aux
        else:
            logits = self.segmenter(image)
            loss = self.loss(logits, labels)
        log["loss/seg_source"] = loss.detach()
        return loss, logits, aux


def target_outputs(segmenter: Segmenter, image: Tensor) -> tuple[Tensor, Tensor | None]:
    """Target logits (and aux logits with the multi-level head)."""
    if segmenter.aux_head is not None:
        return segmenter(image, with_aux=True)
    return segmenter(image), None


def new_discriminator(
    num_classes: int, width: int, optim: OptimConfig, device: torch.device
) -> tuple[Discriminator, torch.optim.Optimizer]:
    """A fresh D of `width` on C-channel maps and its Adam optimiser (`optim.d_lr`, `d_betas`)."""
    disc = Discriminator(num_classes, ndf=width).to(device)
    opt = torch.optim.Adam(disc.parameters(), lr=optim.d_lr, betas=tuple(optim.d_betas))
    return disc, opt


class EMATeacher:
    """A copy of the student whose parameters follow it as an exponential moving average
    (alpha_t = min(1 - 1/(t + 1), alpha), as DACS and DAFormer); its buffers (batch-norm
    statistics) follow the student's. It never trains and runs in eval mode."""

    def __init__(self, student: nn.Module) -> None:
        self.network = copy.deepcopy(student)
        self.network.requires_grad_(False)
        self.network.eval()

    @torch.no_grad()
    def update(self, student: nn.Module, iteration: int, alpha: float) -> float:
        """Move the teacher towards the student; returns the alpha used."""
        alpha_t = min(1.0 - 1.0 / (iteration + 1), alpha)
        for teacher_p, student_p in zip(
            self.network.parameters(), student.parameters(), strict=True
        ):
            teacher_p.mul_(alpha_t).add_(student_p.detach(), alpha=1.0 - alpha_t)
        for teacher_b, student_b in zip(self.network.buffers(), student.buffers(), strict=True):
            teacher_b.copy_(student_b)
        return alpha_t


class ImageNetFeatureDistance:
    """DAFormer's thing-class feature distance: the L2 distance between the student's
    bottleneck features (G's output) and those of a frozen copy of G with its ImageNet weights,
    averaged over the feature cells whose label (majority of at least `min_ratio` of the cell)
    is one of `classes` (every cell when None)."""

    def __init__(
        self,
        segmenter: Segmenter,
        pretrained_file: Path | None,
        classes: list[int] | None,
        min_ratio: float,
    ) -> None:
        if pretrained_file is None:
            raise ApodaError(
                "the ImageNet feature distance needs an ImageNet-pretrained G: set "
                "model.pretrained (or leave method.imnet_feature_dist_lambda at 0)"
            )
        self.network = copy.deepcopy(segmenter)
        load_pretrained(self.network, pretrained_file, log=lambda _line: None)
        self.network.requires_grad_(False)
        self.network.eval()
        self.classes = classes
        self.min_ratio = min_ratio

    def __call__(self, features: Tensor, image: Tensor, labels: Tensor) -> Tensor:
        """The mean distance over the selected cells (0 when there is none)."""
        with torch.no_grad():
            reference = self.network.features(image).float()
        distance = (features.float() - reference).norm(dim=1)
        if self.classes is not None:
            cell = labels.shape[-1] // distance.shape[-1]
            cells = majority_cells(labels, cell, self.min_ratio, self.network.num_classes)
            selected = torch.isin(cells, torch.tensor(self.classes, device=cells.device))
            distance = distance[..., : cells.shape[1], : cells.shape[2]][selected]
        return distance.mean() if distance.numel() else features.sum() * 0.0
