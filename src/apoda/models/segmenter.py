"""Segmenter = F ∘ G: a backbone cut at a named stage into a feature extractor G and a
classifier F (the remaining backbone stages, then ASPP).

APODA perturbs the features f = G(x) and trains F to resist the perturbation, so the cut point
is a first-class setting: `pixel` (G is the identity), or after `layer1` ... `layer4` (the
paper's choice). Logits are upsampled with `upsample_logits` (bilinear, align_corners=False)
everywhere in apoda.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any, Literal, get_args, overload

import torch
import torch.nn.functional as F
from torch import nn

from apoda.config import Cut
from apoda.errors import ApodaError
from apoda.models.aspp import ASPPClassifier
from apoda.models.backbones import Backbone, BNMode, build_backbone

ALIGN_CORNERS = False
"""The one upsampling convention in apoda (the reference code uses True; the difference is
sub-pixel, this one treats pixels as areas and matches PyTorch's default)."""


def upsample_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize `[B, C, h, w]` logits to `size` = (H, W)."""
    height, width = (int(s) for s in size)
    if tuple(logits.shape[-2:]) == (height, width):
        return logits
    return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=ALIGN_CORNERS)


class Classifier(nn.Module):
    """F: the backbone stages after the cut (`backbone`, possibly empty), then the ASPP `head`."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Class scores at the backbone's output resolution."""
        return self.head(self.backbone(f))


def _check_images(x: torch.Tensor, channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ApodaError(f"expected a [B, {channels}, H, W] tensor, got shape {tuple(x.shape)}")


LEGACY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("feature_extractor.", "backbone."),
    ("classifier.backbone.", "backbone."),
    ("classifier.head.", "head."),
    ("aux_classifier.", "aux_head."),
)
"""Key prefixes of checkpoints written before 0.2, whose names depended on the cut, and the
cut-free names they map to."""


def upgrade_state_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """A segmenter state dict with pre-0.2 (cut-dependent) keys renamed to today's names;
    today's keys pass through unchanged."""
    upgraded: dict[str, Any] = {}
    for key, value in state.items():
        for old, new in LEGACY_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        upgraded[key] = value
    return upgraded


class Segmenter(nn.Module):
    """A DeepLab-v2 segmenter split into G (`feature_extractor`) and F (`classifier`).

    The network owns `backbone`, `head` (ASPP) and, multi-level, `aux_head` (an ASPP on
    layer3); its state-dict keys are theirs (`backbone.layer3.0.conv1.weight`, `head.*`,
    `aux_head.*`), so a checkpoint does not depend on the cut. G and F are views over the
    backbone's stages that share its modules: `forward(x)` equals
    `classify(features(x), x.shape[-2:])` exactly, and `forward(x, with_aux=True)` (cut
    "layer4" only) also returns the auxiliary logits, both at the input size.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: ASPPClassifier,
        cut: Cut = "layer4",
        aux_head: ASPPClassifier | None = None,
    ) -> None:
        super().__init__()
        if cut not in get_args(Cut):
            raise ApodaError(f"cut {cut!r} is not one of {list(get_args(Cut))}")
        if aux_head is not None and cut != "layer4":
            raise ApodaError(
                f"the multi-level (auxiliary) classifier needs cut 'layer4', got cut {cut!r}"
            )
        if head.conv2d_list[0].in_channels != backbone.out_channels:
            raise ApodaError(
                f"classifier expects {head.conv2d_list[0].in_channels} channels but the "
                f"{backbone.arch} backbone gives {backbone.out_channels}"
            )
        if aux_head is not None:
            layer3 = backbone.stage("layer3").out_channels
            if aux_head.conv2d_list[0].in_channels != layer3:
                raise ApodaError(
                    f"aux classifier expects {aux_head.conv2d_list[0].in_channels} "
                    f"channels but {backbone.arch}'s layer3 gives {layer3}"
                )
            if aux_head.num_classes != head.num_classes:
                raise ApodaError(
                    f"aux classifier has {aux_head.num_classes} classes, the main one "
                    f"{head.num_classes}"
                )
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        g, rest = backbone.split(cut)
        self.arch: str = backbone.arch
        self.cut: Cut = cut
        self.num_classes: int = head.num_classes
        self.feature_channels: int = g.out_channels
        self.feature_stride: int = g.stride
        self.in_channels: int = backbone.in_channels
        # Views, deliberately not registered as submodules: they share the backbone's modules
        # and would otherwise put the cut into every state-dict key.
        self._views = (g, Classifier(rest, head))

    @property
    def feature_extractor(self) -> Backbone:
        """G: the backbone stages up to and including the cut (a view)."""
        return self._views[0]

    @property
    def classifier(self) -> Classifier:
        """F: the backbone stages after the cut, then the ASPP head (a view)."""
        return self._views[1]

    @property
    def feature_extractor_frozen(self) -> bool:
        """Whether `freeze_feature_extractor()` was called."""
        return self.feature_extractor.frozen

    def freeze_feature_extractor(self) -> None:
        """Fix G's parameters and keep G in eval mode for good (APODA steps 2-3). Not part of the
        state dict: call it again on a rebuilt segmenter when resuming those steps."""
        self.feature_extractor.freeze()

    def train(self, mode: bool = True) -> Segmenter:
        """Set train/eval mode; a frozen G stays in eval mode."""
        super().train(mode)
        if self.feature_extractor.frozen:
            self.feature_extractor.train(False)
        return self

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load weights; checkpoints with pre-0.2 cut-dependent keys are renamed on the way."""
        return super().load_state_dict(upgrade_state_keys(state_dict), strict, assign)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """f = G(x)."""
        _check_images(x, self.in_channels)
        return self.feature_extractor(x)

    def classify(self, f: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """F(f), upsampled to `size` = (H, W) when given."""
        _check_images(f, self.feature_channels)
        logits = self.classifier(f)
        return logits if size is None else upsample_logits(logits, size)

    @overload
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...
    @overload
    def forward(self, x: torch.Tensor, with_aux: Literal[False]) -> torch.Tensor: ...
    @overload
    def forward(
        self, x: torch.Tensor, with_aux: Literal[True]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits at the input size; with `with_aux`, (main, auxiliary) logits."""
        size = tuple(x.shape[-2:])
        if not with_aux:
            return self.classify(self.features(x), size)
        if self.aux_head is None:
            raise ApodaError("with_aux=True needs a segmenter built with multi_level=True")
        _check_images(x, self.in_channels)
        f, taps = self.feature_extractor.forward_with_taps(x, ("layer3",))
        aux = upsample_logits(self.aux_head(taps["layer3"]), size)
        return self.classify(f, size), aux

    def backbone_tensors(self) -> dict[str, torch.Tensor]:
        """Every backbone parameter and buffer (in G or in F) under its backbone key, e.g.
        `layer3.0.conv1.weight`, whatever the cut: the live tensors, for loading weights."""
        return self.backbone.state_dict(keep_vars=True)

    def parameter_groups(self, lr: float, classifier_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """Optimiser groups of the trainable parameters: the backbone (G and F's backbone part)
        at `lr`, the ASPP classifiers at `classifier_lr_mult * lr`. Each group carries `name`
        and `lr_mult` so a scheduler can rescale it; empty groups are left out."""
        backbone = self.backbone.parameters()
        heads: list[nn.Module] = [self.head]
        if self.aux_head is not None:
            heads.append(self.aux_head)
        head_params = chain.from_iterable(h.parameters() for h in heads)
        groups = []
        for name, params, mult in (
            ("backbone", backbone, 1.0),
            ("classifier", head_params, float(classifier_lr_mult)),
        ):
            trainable = [p for p in params if p.requires_grad]
            if trainable:
                groups.append({"params": trainable, "lr": lr * mult, "lr_mult": mult, "name": name})
        return groups


def build_segmenter(
    arch: str,
    num_classes: int,
    cut: Cut = "layer4",
    multi_level: bool = False,
    aspp_legacy: bool = False,
    bn_mode: BNMode | None = None,
    classifier_dilations: Sequence[int] = (6, 12, 18, 24),
) -> Segmenter:
    """Build a segmenter: `arch` backbone, ASPP on its output (and on layer3 when
    `multi_level`), cut at `cut`. `bn_mode=None` = the architecture's default (frozen for the
    pretrained ResNet-101, trainable for the small backbone trained from scratch)."""
    if num_classes < 1:
        raise ApodaError(f"num_classes must be at least 1, got {num_classes}")
    backbone = build_backbone(arch, bn_mode)
    head = ASPPClassifier(backbone.out_channels, num_classes, classifier_dilations, aspp_legacy)
    aux = None
    if multi_level:
        aux = ASPPClassifier(
            backbone.stage("layer3").out_channels, num_classes, classifier_dilations, aspp_legacy
        )
    return Segmenter(backbone, head, cut, aux)
