"""The fully-convolutional domain discriminator of AdaptSegNet and ADVENT (no batch norm)."""

from __future__ import annotations

import torch
from torch import nn

from apoda.errors import ApodaError


class Discriminator(nn.Module):
    """Five 4x4 stride-2 convs `in_channels -> ndf -> 2ndf -> 4ndf -> 8ndf -> 1`, LeakyReLU(0.2)
    after the first four, no batch norm and no sigmoid: it returns a map of domain logits
    (1/32 of the input size) for a BCE-with-logits loss."""

    def __init__(self, in_channels: int, ndf: int = 64) -> None:
        super().__init__()
        if in_channels < 1 or ndf < 1:
            raise ApodaError(
                f"Discriminator needs positive sizes; got in_channels={in_channels}, ndf={ndf}"
            )
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, 4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, 4, stride=2, padding=1)
        self.classifier = nn.Conv2d(ndf * 8, 1, 4, stride=2, padding=1)
        self.leaky_relu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        """Domain logits `[B, 1, h, w]` for a `[B, in_channels, H, W]` input."""
        if p.dim() != 4 or p.shape[1] != self.in_channels:
            raise ApodaError(
                f"Discriminator expects [B, {self.in_channels}, H, W], got {tuple(p.shape)}"
            )
        x = p
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = self.leaky_relu(conv(x))
        return self.classifier(x)
