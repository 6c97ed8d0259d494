"""DeepLab-v2 ASPP classifier: parallel dilated 3x3 convs whose class scores are summed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from apoda.errors import ApodaError


class ASPPClassifier(nn.Module):
    """One 3x3 conv per dilation (padding = dilation) from `in_channels` to `num_classes`,
    outputs summed. Weights are drawn from N(0, 0.01) and biases start at zero, as in DeepLab-v2.

    `legacy_first_two=True` sums only the first two branches, reproducing AdaptSegNet's released
    code (a `return` inside its loop); the other branches still exist so checkpoints match.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dilations: Sequence[int] = (6, 12, 18, 24),
        legacy_first_two: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ApodaError(
                f"ASPP needs positive channel counts; got in_channels={in_channels}, "
                f"num_classes={num_classes}"
            )
        if not dilations or any(d < 1 for d in dilations):
            raise ApodaError(f"ASPP dilations {tuple(dilations)} must be positive integers")
        if legacy_first_two and len(dilations) < 2:
            raise ApodaError("legacy_first_two needs at least two ASPP dilations")
        self.num_classes = num_classes
        self.dilations = tuple(int(d) for d in dilations)
        self.legacy_first_two = legacy_first_two
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
            for d in self.dilations
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at the feature resolution: the sum of the active branches."""
        branches = self.conv2d_list[:2] if self.legacy_first_two else self.conv2d_list
        out = branches[0](x)
        for conv in branches[1:]:
            out = out + conv(x)
        return out
