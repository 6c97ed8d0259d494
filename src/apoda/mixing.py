"""Cross-domain mixing for self-training (DACS, Tranheden et al. 2021): the ClassMix mask, the
mixed image and label, a teacher's pseudo-labels with their confidence weight, and the strong
photometric transform of the mixed image. Pure functions of tensors; randomness comes from
torch's generator, which the training loop seeds and checkpoints."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from apoda.losses import IGNORE_INDEX


def class_mix_masks(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per image of `labels` `[B, H, W]`, the pixels of half of the classes it holds (ceil(n/2)
    of its n labelled classes, drawn without replacement): a bool mask `[B, H, W]`."""
    masks = []
    for label in labels:
        classes = torch.unique(label)
        classes = classes[classes != ignore_index]
        chosen = classes[torch.randperm(classes.numel())[: (classes.numel() + 1) // 2]]
        masks.append(torch.isin(label, chosen))
    return torch.stack(masks)


def mix(mask: Tensor, pasted: Tensor, background: Tensor) -> Tensor:
    """`pasted` where `mask` (`[B, H, W]`) holds, `background` elsewhere; images `[B, C, H, W]`
    or label and weight maps `[B, H, W]`."""
    where = mask if pasted.dim() == mask.dim() else mask.unsqueeze(1)
    return torch.where(where, pasted, background)


def pseudo_labels(teacher_logits: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """The teacher's argmax `[B, H, W]` and its confidence weight: the share of the batch's
    pixels whose top softmax probability is at least `threshold` (a scalar tensor)."""
    confidence, labels = F.softmax(teacher_logits.detach().float(), dim=1).max(dim=1)
    return labels, (confidence >= threshold).float().mean()


def mixed_pixel_weight(
    mask: Tensor, pseudo_weight: Tensor, ignore_top: int = 0, ignore_bottom: int = 0
) -> Tensor:
    """Per-pixel weight of the mixed label: 1 on pasted source pixels, the pseudo-label weight
    elsewhere, 0 in the `ignore_top` / `ignore_bottom` rows of pseudo-labelled pixels (the
    ego-car hood and rectification borders of real data)."""
    weight = pseudo_weight.expand(mask.shape).clone()
    if ignore_top > 0:
        weight[:, :ignore_top] = 0
    if ignore_bottom > 0:
        weight[:, -ignore_bottom:] = 0
    return torch.where(mask, torch.ones_like(weight), weight)


def blur_kernel_size(length: int) -> int:
    """The odd Gaussian kernel size for an image side of `length` pixels: about a tenth."""
    tenth = math.ceil(0.1 * length)
    return math.floor(tenth - 0.5 + tenth % 2)


def strong_photometric(
    images: Tensor, jitter_strength: float, jitter_probability: float, blur: bool
) -> Tensor:
    """Colour jitter (brightness, contrast, saturation and hue by up to `jitter_strength`), for
    the whole batch with probability 1 - `jitter_probability`, then with probability 1/2 a
    Gaussian blur (sigma uniform in [0.15, 1.15], one per image); `images` are RGB in [0, 1]."""
    jitter = float(torch.rand(())) > jitter_probability
    blurred = blur and float(torch.rand(())) > 0.5
    s = jitter_strength
    colour = v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=s)
    out = []
    for image in images:
        if jitter:
            image = colour(image)
        if blurred:
            sigma = 0.15 + float(torch.rand(()))
            size = [blur_kernel_size(image.shape[2]), blur_kernel_size(image.shape[1])]
            image = TF.gaussian_blur(image, kernel_size=size, sigma=[sigma, sigma])
        out.append(image)
    return torch.stack(out)


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weight: Tensor) -> Tensor:
    """Per-pixel CE times `weight`, averaged over every pixel (ignored pixels count 0): the
    mixed-image loss of DACS."""
    ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return (ce * weight).mean()


def majority_cells(
    labels: Tensor, cell: int, min_ratio: float, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Labels `[B, H, W]` at the resolution of `cell` x `cell` cells: each cell's majority class
    where it covers at least `min_ratio` of the cell's pixels, else `ignore_index` (DAFormer's
    downscaling of labels to the feature map for the thing-class feature distance)."""
    height, width = labels.shape[1] // cell * cell, labels.shape[2] // cell * cell
    labels = labels[:, :height, :width]
    index = torch.where(labels < num_classes, labels, num_classes)
    one_hot = F.one_hot(index, num_classes + 1).permute(0, 3, 1, 2).float()
    ratio, majority = F.avg_pool2d(one_hot, cell).max(dim=1)
    majority[(majority == num_classes) | (ratio < min_ratio)] = ignore_index
    return majority
