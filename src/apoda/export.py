"""`apoda export`: a checkpoint's whole segmenter, F(G(x)) with the bilinear upsampling to the
input size, in eval mode, as one ONNX or TorchScript file, checked against PyTorch on the spot;
`load_exported` reads such a file back (`apoda predict` takes it in place of a checkpoint).

Both formats take what a checkpoint's segmenter takes, a normalised float32 batch
``image [batch, 3, H, W]``, and give float32 ``logits [batch, classes, H, W]``, with the batch,
height and width axes dynamic for every backbone apoda builds: the file runs each image at its
own size, as the checkpoint does. EfficientNet's "same" padding, which Python computes from the
input size, is traced in an equivalent form that reads the size in the graph (`_traceable`).
Should tracing still fix the size (a TracerWarning), the spatial axes stay fixed, and export
refuses unless the checkpoint itself resizes every image to that size (its data.target_size).

The written file is checked against PyTorch on a sample image and its mirror, and, when its
size is dynamic, on the sample resized to another size of the other parity (`other_size`).

The file carries, as JSON (the ONNX metadata_props key ``apoda``, the TorchScript extra file
``apoda.json``), how to normalise an image, the size it was checked at, the size `apoda predict`
resizes images to first (``input.resize``: the run's data.target_size, as for its checkpoint;
null: each image at its own size), and the class names and colours. Files of metadata version 1
(written by earlier apodas) have no ``resize``: `apoda predict` runs them as it always did,
every image resized to their ``size``.

ONNX export uses torch's TorchScript-based exporter (``dynamo=False``): it needs no onnxscript,
and it shares the trace with the TorchScript format. A TorchScript file holds code that
``torch.jit.load`` runs: load only files you trust.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from apoda import __version__
from apoda.config import Config
from apoda.data.classes import ClassScheme, custom_scheme
from apoda.data.folder import ClassList
from apoda.data.io import read_rgb
from apoda.data.minicity import cache_dir, folder_name
from apoda.data.transforms import (
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalisation,
    resize_image,
)
from apoda.errors import ApodaError
from apoda.inference import IMAGE_SUFFIXES, checkpoint_scheme, has_own_classes, load_segmenter
from apoda.models.efficientnet import SameConv2d
from apoda.models.segmenter import ALIGN_CORNERS, Segmenter
from apoda.runs import checkpoint_file, writable_folder
from apoda.torch_files import first_line

Format = Literal["onnx", "torchscript"]
SUFFIXES: dict[str, tuple[str, ...]] = {"onnx": (".onnx",), "torchscript": (".pt", ".ts")}
"""File name endings per format: `apoda predict` tells an exported file by them."""
NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}
RUNTIMES = {"onnx": "ONNX Runtime", "torchscript": "TorchScript (torch.jit.load)"}
METADATA_KEY = "apoda"
EXTRA_FILE = "apoda.json"
METADATA_VERSION = 2
"""Version 2 added ``input.resize``; version 1 files are still read (resized to their size)."""
READABLE_VERSIONS = (1, 2)
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
ONNX_OPSET = 17
UNIT_ROUNDOFF = 2.0**-24
"""u of float32: a correctly rounded operation has relative error at most u."""
BATCH_NORM_ROUNDINGS = 8
"""Roundings one eval batch norm puts on a path: scale γ/√(var+ε) (3), shift β − μ·scale (2),
x·scale + shift (2), and 1 more when a runtime folds it into the convolution's weights."""
SYNTHETIC_SEED = 0
VAL_IMAGES = {
    "minicity": "leftImg8bit/val/*/*.png",
    "cityscapes": "leftImg8bit/val/*/*_leftImg8bit.png",
    "folder": "images/val/**/*",
}
"""Where a target's validation images lie below its root, by data.target."""
EXTRA_HINT = "pip install 'apoda[export]'"


def import_onnx(runtime_only: bool = False) -> tuple[Any, Any]:
    """The `onnx` (None when `runtime_only`) and `onnxruntime` modules; a one-line ApodaError
    naming the `export` extra when one is missing."""
    try:
        import onnxruntime

        if runtime_only:
            return None, onnxruntime
        import onnx
    except ImportError as exc:
        what = "running an ONNX model needs" if runtime_only else "ONNX export needs onnx and"
        missing = exc.name or "a package"
        raise ApodaError(f"{what} onnxruntime ({missing} is not installed): {EXTRA_HINT}") from None
    return onnx, onnxruntime


class DeployedSegmenter(nn.Module):
    """F(G(x)) upsampled to the input size as `Segmenter.forward` computes it, without its
    Python-side shape checks, so that a trace keeps the input's sizes symbolic."""

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, H, W] of a normalised batch [B, 3, H, W]."""
        logits = self.segmenter.classifier(self.segmenter.feature_extractor(x))
        return F.interpolate(
            logits, size=x.shape[-2:], mode="bilinear", align_corners=ALIGN_CORNERS
        )


def _dynamic_same_forward(self: SameConv2d, x: torch.Tensor) -> torch.Tensor:
    """`SameConv2d.forward` at strides 1 and 2, in a form a trace keeps for every input size.

    With an odd kernel k and dilation d the "same" padding of a stride-2 side of size s totals
    2P = (k-1)·d on an odd side (P before, P after) and 2P - 1 on an even side (P - 1 before,
    P after): pad P on both sides, then drop the first row (column) where the side is even. The
    parity is read from the padded tensor's shape, which the trace records; the values the
    convolution sees are those of `SameConv2d.forward`, so its output is the same."""
    pad_h = (self.kernel_size[0] - 1) * self.dilation[0] // 2
    pad_w = (self.kernel_size[1] - 1) * self.dilation[1] // 2
    x = F.pad(x, (pad_w, pad_w, pad_h, pad_h))
    if pad_h and self.stride[0] > 1:
        x = x[..., 1 - x.shape[-2] % 2 :, :]
    if pad_w and self.stride[1] > 1:
        x = x[..., 1 - x.shape[-1] % 2 :]
    return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _traceable(model: nn.Module) -> list[SameConv2d]:
    """Give every strided `SameConv2d` of `model` `_dynamic_same_forward` (undo by deleting the
    instance attribute `forward`); the convolutions changed. Only stride 2 is rewritten: the
    equivalence above holds for it (EfficientNet strides no further); other strides are left
    to the trace, which then warns and fixes the size."""
    changed = []
    for module in model.modules():
        strided = isinstance(module, SameConv2d) and module.stride != (1, 1)
        if strided and set(module.stride) <= {1, 2} and "forward" not in vars(module):
            module.forward = _dynamic_same_forward.__get__(module)  # type: ignore[method-assign]
            changed.append(module)
    return changed


def other_size(size: tuple[int, int]) -> tuple[int, int]:
    """A second size to check a dynamic export at: each side s moved by the odd number
    s // 4 | 1 (down, unless that leaves fewer than 9 pixels; 2 more where it would land on a
    multiple of 8), so the parity of both sides differs from `size`'s (EfficientNet pads even
    and odd sides differently) and neither is a multiple of 8: 32x64 -> 23x47, 64x128 -> 47x95."""

    def side(s: int) -> int:
        step = s // 4 | 1
        other = s - step if s - step >= 9 else s + step
        return other + 2 if other % 8 == 0 else other

    return side(size[0]), side(size[1])


def export_size(
    config: Config, text: str | None, val_size: tuple[int, ...] | None = None
) -> tuple[int, int]:
    """(height, width) to export at: `--size HxW`, else the run's target size, else the size of
    its target's validation images (`val_size`, where the checkpoint runs them unresized), else
    the size of its MiniCity images."""
    if text is None:
        if config.data.target_size:
            width, height = config.data.target_size
            return int(height), int(width)
        if val_size is not None:
            return int(val_size[0]), int(val_size[1])
        return config.data.minicity.height, config.data.minicity.width
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None or min(int(side) for side in match.groups()) < 1:
        raise ApodaError(f"--size {text!r}: expected HEIGHTxWIDTH in pixels, e.g. 64x128")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class Tolerance:
    """The bound 2·γ_N·T on |Δlogit| between two float32 evaluations (`rounding_tolerance`)."""

    roundings: int
    terms: float

    @property
    def value(self) -> float:
        """2·N·u/(1 − N·u)·T."""
        n_u = self.roundings * UNIT_ROUNDOFF
        return 2.0 * n_u / (1.0 - n_u) * self.terms

    def formula(self) -> str:
        """The formula with its numbers, for the command's output."""
        n = self.roundings
        return f"2*N*u/(1-N*u)*T = 2*{n}*2^-24/(1-{n}*2^-24)*{self.terms:.4g} = {self.value:.3g}"


def _fan_in(conv: nn.Conv2d) -> int:
    return conv.in_channels // conv.groups * math.prod(conv.kernel_size)


def rounding_tolerance(segmenter: Segmenter, x: torch.Tensor) -> Tolerance:
    """How far two float32 evaluations of the segmenter on `x` that order their arithmetic
    differently may differ: |Δ| <= 2·γ_N·T per logit, γ_N = N·u/(1 − N·u), u = 2^-24.

    A sum of n products computed in float32 in any order is within γ_n·Σ|terms| of the exact
    value; two implementations, twice that. N is the depth of the reductions: fan-in + 2 (bias,
    residual or branch sum) for every convolution, 8 per batch norm, and 12·L + 16 for the
    upsampling (weights from float coordinates up to L, the logit map's longer side, then 4
    terms). T is the largest sum of |terms| of a logit, measured on `x`: the ASPP head's
    Σ|w·f| + |b| over its branches. A first-order model: the backbone's roundings count as
    relative errors of the head's terms, which is exact for the head and holds as long as the
    backbone does not amplify relative errors."""
    head = segmenter.head
    branches = list(head.conv2d_list[:2] if head.legacy_first_two else head.conv2d_list)
    roundings = sum(_fan_in(conv) + 2 for conv in branches)
    for module in segmenter.backbone.modules():
        if isinstance(module, nn.Conv2d):
            roundings += _fan_in(module) + 2
        elif isinstance(module, nn.BatchNorm2d):
            roundings += BATCH_NORM_ROUNDINGS
    with torch.no_grad():
        features = segmenter.backbone(x).abs()
        terms = torch.stack(
            [
                F.conv2d(
                    features,
                    conv.weight.abs(),
                    None if conv.bias is None else conv.bias.abs(),
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    conv.groups,
                )
                for conv in branches
            ]
        ).sum(0)
    roundings += 12 * max(features.shape[-2:]) + 16
    return Tolerance(roundings, float(terms.max()))


def sample_image(config: Config, size: str | None) -> tuple[np.ndarray, str]:
    """The RGB image to check an export on, at the export size (`export_size` of `size`), and
    what it is: the first validation image of the run's target when it is on disk (nothing is
    generated or downloaded), else a fixed-seed synthetic one."""
    data = config.data
    if data.target == "minicity":
        root: Path | None = cache_dir() / folder_name(data.minicity) / "target"
    else:
        root = Path(data.target_root) if data.target_root else None
    pattern = VAL_IMAGES.get(data.target)
    found = []
    if root is not None and pattern is not None:
        found = sorted(p for p in root.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        height, width = export_size(config, size)
        rng = np.random.default_rng(SYNTHETIC_SEED)
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        return image, f"a synthetic image (seed {SYNTHETIC_SEED})"
    real = read_rgb(found[0])
    height, width = export_size(config, size, real.shape[:2])
    return resize_image(real, (width, height)), f"{data.target} val image {found[0].name}"


def _trace(
    model: DeployedSegmenter, batch: torch.Tensor
) -> tuple[torch.jit.ScriptModule, str | None]:
    """The traced model (with `_traceable`'s forms), and None when its spatial axes may stay
    dynamic, else why not: the first TracerWarning, which says that Python read a tensor's size
    and so fixed the sample's size in the graph."""
    changed = _traceable(model)
    try:
        with warnings.catch_warnings(record=True) as caught:  # and hides torch's deprecations
            warnings.simplefilter("always")
            traced = torch.jit.trace(model, batch, check_trace=False, _store_inputs=False)
    finally:
        for module in changed:
            del module.forward
    sized = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    return traced, first_line(str(sized[0].message)) if sized else None


def _write_onnx(
    model: torch.jit.ScriptModule, batch: torch.Tensor, path: Path, axes: dict[int, str], meta: str
) -> None:
    """Write the traced model as ONNX with `axes` dynamic and `meta` as metadata."""
    onnx, _ = import_onnx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notes
        torch.onnx.export(
            model,
            (batch,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {METADATA_KEY: meta})
    onnx.save(proto, str(path))


def _write_torchscript(model: torch.jit.ScriptModule, path: Path, meta: str) -> None:
    """Save the traced model with `meta` as the extra file apoda.json."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notes
        torch.jit.save(model, str(path), _extra_files={EXTRA_FILE: meta})


def _metadata(
    path: Path,
    state: dict[str, Any],
    config: Config,
    scheme: ClassScheme,
    size: tuple[int, int],
    axes: list[str],
    resize: tuple[int, int] | None,
) -> dict[str, Any]:
    """What a deployment (and `apoda predict`) needs to feed the model and read its output."""
    caffe = config.data.normalisation == "caffe"
    height, width = size
    dynamic = "height" in axes
    spatial: list[int | str] = ["height", "width"] if dynamic else [height, width]
    return {
        "format_version": METADATA_VERSION,
        "written_by": f"apoda {__version__}",
        "checkpoint": str(path),
        "iteration": state.get("iteration"),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, *spatial],
            "dtype": "float32",
            "size": [height, width],
            "size_meaning": "the size the export was checked at"
            + ("" if dynamic else ", and the only one it takes"),
            "dynamic_axes": axes,
            "resize": None if resize is None else list(resize),
            "resize_meaning": "apoda predict resizes each image to this [height, width] first, "
            "as the checkpoint does (its data.target_size); null: each image at its own size",
        },
        "normalisation": {
            "mode": config.data.normalisation,
            "formula": "(pixel * scale - mean) / std per channel, channels in this order",
            "channels": "BGR" if caffe else "RGB",
            "scale": 1.0 if caffe else 1.0 / 255.0,
            "mean": list(CAFFE_MEAN_BGR if caffe else IMAGENET_MEAN),
            "std": [1.0, 1.0, 1.0] if caffe else list(IMAGENET_STD),
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", scheme.num_classes, *spatial],
            "meaning": "class logits at the input size; the class is the argmax over axis 1",
        },
        "classes": {
            "scheme": scheme.name,
            "own": has_own_classes(config),  # a classes.yaml's, not a built-in scheme
            "names": list(scheme.class_names),
            "colors": [list(color) for color in scheme.colors],
        },
    }


@dataclass
class SizeCheck:
    """How the written file matched PyTorch at one input size: the largest |difference| of
    their logits, the largest |logit|, the tolerance it had to meet, and the share of the
    `pixels` (of all images of the check) whose argmax agrees."""

    size: tuple[int, int]
    max_difference: float
    max_logit: float
    tolerance: Tolerance
    argmax_agreement: float
    pixels: int


@dataclass
class ExportResult:
    """What `export_checkpoint` wrote and how the check of the written file went: `size` is the
    sample's (height, width), which the check fields describe (the sample and its mirror);
    `other` the check at `other_size` (None for a fixed-size export); `resize` the (height,
    width) `apoda predict` resizes images to first, as for the checkpoint (None: their own)."""

    out: Path
    format: Format
    size: tuple[int, int]
    dynamic_axes: list[str]
    num_classes: int
    sample: str
    max_difference: float
    max_logit: float
    tolerance: Tolerance
    argmax_agreement: float
    pixels: int
    resize: tuple[int, int] | None = None
    other: SizeCheck | None = None


def _reference(
    model: DeployedSegmenter, batch: torch.Tensor, path: Path, what: str
) -> torch.Tensor:
    """PyTorch's logits of `batch`; a one-line ApodaError when the model cannot run it or
    gives non-finite values."""
    height, width = batch.shape[-2:]
    try:
        with torch.no_grad():
            reference = model(batch)
    except RuntimeError as exc:
        raise ApodaError(f"the model cannot run at {height}x{width}: {first_line(exc)}") from None
    if not torch.isfinite(reference).all():
        raise ApodaError(f"checkpoint {path} gives non-finite logits on {what}")
    return reference


def _check(
    run: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    reference: torch.Tensor,
    tolerance: Tolerance,
    fmt: Format,
    out: Path,
    at: str = "",
) -> SizeCheck:
    """Run the written file on `batch` and compare with PyTorch's `reference`; an ApodaError
    (`at` names the size where it is not the sample's) when the shapes or values disagree."""
    with torch.no_grad():
        logits = run(batch)
    if logits.shape != reference.shape:
        raise ApodaError(
            f"export check failed: {RUNTIMES[fmt]} gives logits of shape "
            f"{list(logits.shape)}, PyTorch {list(reference.shape)}; {out} not written"
        )
    difference = float((logits - reference).abs().max())
    if not difference <= tolerance.value:  # NaN fails too
        raise ApodaError(
            f"export check failed: largest |difference| {difference:.3g} between "
            f"{RUNTIMES[fmt]} and PyTorch logits{at} exceeds the tolerance {tolerance.value:.3g}; "
            f"{out} not written"
        )
    height, width = batch.shape[-2:]
    return SizeCheck(
        size=(int(height), int(width)),
        max_difference=difference,
        max_logit=float(reference.abs().max()),
        tolerance=tolerance,
        argmax_agreement=float((logits.argmax(1) == reference.argmax(1)).float().mean()),
        pixels=int(reference[:, 0].numel()),
    )


def export_checkpoint(
    checkpoint: str | Path, fmt: Format, out: str | Path, size: str | None = None
) -> ExportResult:
    """Write the checkpoint's segmenter to `out` and check the written file against PyTorch on
    a sample image and its mirror (a batch of 2) and, when its size is dynamic, on the sample
    resized to `other_size`; an ApodaError naming the largest difference and the tolerance,
    and nothing written, when they disagree. A file whose size tracing fixed is refused unless
    the checkpoint resizes every image to that size too (its data.target_size): at any other
    size it would not give the checkpoint's answers."""
    if fmt not in SUFFIXES:
        raise ApodaError(f"--format {fmt!r}: expected one of {', '.join(SUFFIXES)}")
    out_path = Path(out)
    if out_path.suffix.lower() not in SUFFIXES[fmt]:
        raise ApodaError(
            f"--out {out_path}: {NAMES[fmt]} files end in {' or '.join(SUFFIXES[fmt])} "
            "(apoda predict tells exported files by it)"
        )
    path = checkpoint_file(checkpoint)
    if out_path.is_dir() or (out_path.exists() and out_path.resolve() == path.resolve()):
        what = "a folder" if out_path.is_dir() else "the checkpoint itself"
        raise ApodaError(f"--out {out_path} is {what}; give a new file name")
    if fmt == "onnx":
        import_onnx()
    writable_folder(out_path.parent)
    segmenter, config, state = load_segmenter(path)
    rgb, sample = sample_image(config, size)
    height, width = rgb.shape[:2]
    target_size = config.data.target_size
    resize = (int(target_size[1]), int(target_size[0])) if target_size else None  # as predict
    normalisation = Normalisation(config.data.normalisation)
    image = normalisation.normalise(rgb)
    batch = torch.stack([image, image.flip(-1)])
    model = DeployedSegmenter(segmenter).eval()
    reference = _reference(model, batch, path, sample)
    tolerance = rounding_tolerance(segmenter, batch)
    traced, fixed_by = _trace(model, batch)
    if fixed_by is not None and resize != (height, width):
        does = (
            "runs each image at its own size (no data.target_size)"
            if resize is None
            else f"resizes images to its data.target_size {resize[0]}x{resize[1]}"
        )
        raise ApodaError(
            f"cannot export {segmenter.arch} at a fixed size: tracing fixed the input size to "
            f"{height}x{width} ({fixed_by}), but the checkpoint {does}, so the file would not "
            f"give its answers; {out_path} not written"
        )
    checks = [(batch, reference, tolerance, "")]  # inputs, PyTorch's logits, tolerance, where
    if fixed_by is None:  # a dynamic file must also match at a size it was not traced at
        other_height, other_width = other_size((height, width))
        other_rgb = resize_image(rgb, (other_width, other_height))
        other = normalisation.normalise(other_rgb)[None]
        what = f"{sample} resized to {other_height}x{other_width}"
        other_reference = _reference(model, other, path, what)
        other_tolerance = rounding_tolerance(segmenter, other)
        checks.append(
            (other, other_reference, other_tolerance, f" at {other_height}x{other_width}")
        )
    axes = {0: "batch", 2: "height", 3: "width"} if fixed_by is None else {0: "batch"}
    scheme = checkpoint_scheme(state, config, path)
    meta = json.dumps(
        _metadata(path, state, config, scheme, (height, width), list(axes.values()), resize)
    )
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}{out_path.suffix}")
    try:
        if fmt == "onnx":
            _write_onnx(traced, batch, tmp, axes, meta)
        else:
            _write_torchscript(traced, tmp, meta)
        run = load_exported(tmp).run
        check, *other_checks = [
            _check(run, x, ref, tol, fmt, out_path, at) for x, ref, tol, at in checks
        ]
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(
        out=out_path,
        format=fmt,
        size=(height, width),
        dynamic_axes=list(axes.values()),
        num_classes=segmenter.num_classes,
        sample=sample,
        max_difference=check.max_difference,
        max_logit=check.max_logit,
        tolerance=tolerance,
        argmax_agreement=check.argmax_agreement,
        pixels=check.pixels,
        resize=resize,
        other=other_checks[0] if other_checks else None,
    )


@dataclass
class ExportedModel:
    """A file written by `apoda export`, run on the CPU: `run` maps a normalised batch
    [B, 3, H, W] to logits [B, C, H, W]; `size` is (height, width) it was exported and checked
    at; `resize` the (height, width) to resize each image to before `run`, as its checkpoint
    does (None: each image at its own size; a metadata version 1 file: its `size`, as earlier
    apodas ran it); `legend` lists a folder-trained model's own classes (None for a built-in
    scheme)."""

    run: Callable[[torch.Tensor], torch.Tensor]
    normalisation: Normalisation
    size: tuple[int, int]
    class_names: tuple[str, ...]
    colors: np.ndarray
    legend: ClassList | None
    resize: tuple[int, int] | None = None


def exported_format(path: str | Path) -> Format | None:
    """The format of an exported file by its name (.onnx; .ts, or a .pt that holds TorchScript
    code), None for anything else (a checkpoint or a run folder)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        return None
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".ts":
        return "torchscript"
    if suffix == ".pt" and path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("/constants.pkl") for name in archive.namelist()):
                return "torchscript"
    return None


def _load_onnx(path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
    _, ort = import_onnx(runtime_only=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's exception types share no narrower base
        raise ApodaError(
            f"{path} is not an ONNX model that onnxruntime can load: {first_line(exc)}"
        ) from None

    def run(x: torch.Tensor) -> torch.Tensor:
        feed = {INPUT_NAME: x.detach().to("cpu", torch.float32).numpy()}
        return torch.from_numpy(session.run([OUTPUT_NAME], feed)[0])

    meta = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return run, meta


def _load_torchscript(path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
    extra = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notes
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as exc:
        raise ApodaError(
            f"{path} is not a TorchScript file that torch.jit.load can read: "
            f"{first_line(exc).split('. ')[0]}"
        ) from None
    module.eval()
    meta = extra[EXTRA_FILE]
    return module, meta.decode() if isinstance(meta, bytes) else meta or None


def load_exported(path: str | Path) -> ExportedModel:
    """Read a file written by `apoda export` (its format told by `exported_format`)."""
    path = Path(path)
    fmt = exported_format(path)
    if fmt is None:
        raise ApodaError(f"{path} is not an exported model (.onnx, .ts, or a TorchScript .pt)")
    if not path.is_file():
        raise ApodaError(f"exported model {path} does not exist")
    run, meta = _load_onnx(path) if fmt == "onnx" else _load_torchscript(path)
    if not meta:
        raise ApodaError(f"{path} has no apoda metadata: it was not written by `apoda export`")
    try:
        info = json.loads(meta)
        version = info["format_version"]
        if version not in READABLE_VERSIONS:
            raise ApodaError(
                f"{path}: apoda metadata version {version!r}, this apoda reads "
                f"{' and '.join(str(v) for v in READABLE_VERSIONS)}"
            )
        mode = info["normalisation"]["mode"]
        height, width = (int(side) for side in info["input"]["size"])
        # version 1 files were always run resized to their size, which they may fix
        sides = info["input"]["resize"] if version >= 2 else [height, width]
        resize = None if sides is None else (int(sides[0]), int(sides[1]))
        if sides is not None and len(sides) != 2:
            raise ValueError(f"input.resize {sides!r} is not [height, width]")
        scheme_name = str(info["classes"]["scheme"])
        own = bool(info["classes"]["own"])
        names = tuple(str(name) for name in info["classes"]["names"])
        colors = np.asarray(info["classes"]["colors"], dtype=np.int64)
    except (ValueError, KeyError, TypeError) as exc:
        raise ApodaError(f"{path}: its apoda metadata cannot be read ({exc!r})") from None
    if colors.shape != (len(names), 3) or colors.min() < 0 or colors.max() > 255 or not names:
        raise ApodaError(f"{path}: its metadata needs one RGB colour (0-255) for each class")
    if min(height, width) < 1:
        raise ApodaError(f"{path}: its metadata gives the input size {height}x{width}")
    if resize is not None and min(resize) < 1:
        raise ApodaError(f"{path}: its metadata gives the resize {resize[0]}x{resize[1]}")
    try:
        normalisation = Normalisation(mode)
    except ApodaError as exc:
        raise ApodaError(f"{path}: {exc}") from None
    colors = colors.astype(np.uint8)
    legend = None
    if own:
        rgb = [(int(r), int(g), int(b)) for r, g, b in colors]
        legend = ClassList.from_scheme(custom_scheme(scheme_name, names, rgb))
    return ExportedModel(run, normalisation, (height, width), names, colors, legend, resize)
