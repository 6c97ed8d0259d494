"""`apoda predict`: label maps for an image or a folder tree of images.

For each input image three PNGs are written, at the image's own resolution:

* ``NAME_labelTrainIds.png``: 8-bit grayscale, one train id (the class scheme's index, 0..C-1)
  per pixel, what other tools read (Cityscapes calls these ``labelTrainIds``; prediction never
  produces 255 = ignore);
* ``NAME_labels.png``: the same map in the scheme's colours;
* ``NAME_overlay.png``: the colours blended half and half with the image.

A model trained on folder data paints its own classes' colours (the class list its checkpoint
carries) and writes their legend, ``OUT/classes.yaml`` (name, train id, colour of each class).
The model may also be a file written by `apoda export` (``.onnx``, or TorchScript ``.pt``/``.ts``):
it runs on the CPU, and its metadata gives the normalisation, the classes and the resizing, which
is its checkpoint's: each image at its own size, or resized to the run's ``data.target_size`` when
it has one, so the file gives the checkpoint's label maps (within float32 rounding). A file of
metadata version 1 (written by an earlier apoda) is run as before: each image resized to the size
it was exported at.

Output naming: a folder is walked recursively and an image ``IN/sub/street.png`` is written as
``OUT/sub/street_*.png`` (the relative folder is kept). ``NAME`` is the image's stem, unless
another image in the same folder has the same stem (``street.png`` and ``street.jpg``; compared
case-insensitively): then each such image keeps its extension in NAME (``street.png_labels.png``,
``street.jpg_labels.png``). Should even that clash with another image's NAME, or with a
subfolder's outputs, a number is added (``street.jpg~2_labels.png``); every NAME in a folder is
checked against all the others, so two images never write the same file.

When reading a folder, files named like these outputs (``*_labels.png``, ``*_labelTrainIds.png``,
``*_overlay.png``) and everything inside the output folder (when it lies below the input folder)
are skipped, so running twice does not predict on earlier predictions. An image that cannot be
read is reported and skipped; the others are still predicted.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from apoda.data.folder import CLASSES_FILE, ClassList
from apoda.data.io import read_rgb
from apoda.data.transforms import Normalisation, resize_image
from apoda.distributed import resolve_device
from apoda.errors import ApodaError
from apoda.export import exported_format, load_exported
from apoda.inference import IMAGE_SUFFIXES, checkpoint_scheme, has_own_classes, load_segmenter
from apoda.models import upsample_logits
from apoda.runs import checkpoint_file, writable_folder

TRAIN_IDS_SUFFIX = "_labelTrainIds.png"
COLOUR_SUFFIX = "_labels.png"
OVERLAY_SUFFIX = "_overlay.png"
OUTPUT_SUFFIXES = (TRAIN_IDS_SUFFIX, COLOUR_SUFFIX, OVERLAY_SUFFIX)
"""What `apoda predict` appends to an image's NAME; input files ending so are skipped."""


@dataclass
class PredictionResult:
    """What `predict_images` did: the images predicted (input file -> its three outputs), the
    images that could not be read (file, reason) and the files skipped as earlier outputs."""

    out: Path
    predicted: dict[Path, tuple[Path, Path, Path]] = field(default_factory=dict)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def is_prediction_output(path: str | Path) -> bool:
    """Whether a file is named like one of `apoda predict`'s outputs."""
    name = Path(path).name.lower()
    return any(name.endswith(suffix.lower()) for suffix in OUTPUT_SUFFIXES)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def find_images(source: Path, out: Path) -> tuple[list[Path], list[Path]]:
    """The images under ``source`` (recursively, sorted) and the files skipped as outputs."""
    if source.is_file():
        return [source], []
    if not source.is_dir():
        raise ApodaError(f"{source} is neither an image nor a folder of images")
    # The output folder's files are earlier outputs when it lies below the input folder; when
    # it is the input folder itself (outputs beside the images) the names alone tell them apart.
    out_resolved = out.resolve()
    prune = out_resolved if source.resolve() in out_resolved.parents else None
    images: list[Path] = []
    skipped: list[Path] = []
    for folder, dirs, files in os.walk(source):
        base = Path(folder)
        if prune is not None and _inside(base.resolve(), prune):  # in its subfolders too
            skipped.extend(base / f for f in sorted(files) if _is_image(Path(f)))
            continue
        dirs.sort()
        for name in sorted(files):
            path = base / name
            if not _is_image(path):
                continue
            (skipped if is_prediction_output(path) else images).append(path)
    return images, skipped


def output_names(files: list[Path], reserved: Collection[str] = ()) -> dict[Path, str]:
    """NAME for each image of one folder (see the module docstring); unique case-insensitively
    among themselves and against ``reserved`` (lower-case NAMEs already taken)."""
    stems = Counter(f.stem.lower() for f in files)
    wanted = {f: f.stem if stems[f.stem.lower()] == 1 else f.name for f in files}
    counts = Counter(name.lower() for name in wanted.values())
    reserved = {r.lower() for r in reserved}
    taken = set(reserved) | {n.lower() for n in wanted.values() if counts[n.lower()] == 1}
    names: dict[Path, str] = {}
    for file in files:
        name = wanted[file]
        if counts[name.lower()] > 1 or name.lower() in reserved:
            number = 2
            while f"{name}~{number}".lower() in taken:
                number += 1
            name = f"{name}~{number}"
            taken.add(name.lower())
        names[file] = name
    return names


def plan_outputs(source: Path, images: list[Path], out: Path) -> dict[Path, Path]:
    """Each image's output stem path ``OUT/REL_FOLDER/NAME`` (append a suffix to get a file)."""
    by_folder: dict[Path, list[Path]] = {}
    for image in images:
        by_folder.setdefault(image.parent, []).append(image)
    plan: dict[Path, Path] = {}
    for folder, files in by_folder.items():
        rel = folder.relative_to(source) if source.is_dir() else Path()
        # A subfolder named like an output of NAME (a folder "x_labels.png") would clash with it.
        reserved = {
            d.name[: -len(s)].lower()
            for d in (folder.iterdir() if source.is_dir() else ())
            if d.is_dir()
            for s in OUTPUT_SUFFIXES
            if d.name.lower().endswith(s.lower())
        }
        for file, name in output_names(files, reserved).items():
            plan[file] = out / rel / name
    return plan


@dataclass
class _Network:
    """What prediction needs of a model: `run` maps a normalised batch on `device` to logits at
    its size; images are resized to `size` (width, height) first, or kept at their own size when
    it is None; `colors` (uint8 [C, 3]) colours each class index; `legend`: a model of its own
    classes names them, train id and colour, in OUT/classes.yaml."""

    run: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    norm: Normalisation
    size: tuple[int, int] | None
    colors: np.ndarray
    legend: ClassList | None = None


def _open_network(checkpoint: str | Path) -> _Network:
    """A checkpoint or run folder, on its run's device and at its run's target size; or a file
    written by `apoda export`, on the CPU, resized as its metadata says (`ExportedModel.resize`:
    its checkpoint's target size or none; a version 1 file's export size)."""
    if exported_format(checkpoint) is not None:
        model = load_exported(checkpoint)
        cpu = torch.device("cpu")
        size = None if model.resize is None else (model.resize[1], model.resize[0])
        return _Network(model.run, cpu, model.normalisation, size, model.colors, model.legend)
    segmenter, config, state = load_segmenter(checkpoint)
    device = resolve_device(config.train.device)
    size = config.data.target_size
    scheme = checkpoint_scheme(state, config, checkpoint_file(checkpoint))
    return _Network(
        segmenter.to(device),
        device,
        Normalisation(config.data.normalisation),
        (int(size[0]), int(size[1])) if size else None,
        np.asarray(scheme.colors, dtype=np.uint8),
        ClassList.from_scheme(scheme) if has_own_classes(config) else None,
    )


def predict_images(checkpoint: str | Path, images: str | Path, out: str | Path) -> PredictionResult:
    """Predict every image of ``images`` (a file, or a folder walked recursively) into ``out``.

    Raises ApodaError before any work when the input holds no images or ``out`` is not writable;
    unreadable images are returned in ``failures`` and do not stop the others."""
    source = Path(images)
    out_dir = Path(out)
    files, skipped = find_images(source, out_dir)
    if not files:
        plural = "" if len(skipped) == 1 else "s"
        note = f" ({len(skipped)} earlier prediction output{plural} skipped)" if skipped else ""
        suffixes = "/".join(IMAGE_SUFFIXES)
        raise ApodaError(f"no {suffixes} images in {source}{note}")
    writable_folder(out_dir)
    plan = plan_outputs(source, files, out_dir)

    network = _open_network(checkpoint)
    if network.legend is not None:
        network.legend.write(out_dir / CLASSES_FILE)
    result = PredictionResult(out=out_dir, skipped=skipped)
    for file in files:
        try:
            rgb = read_rgb(file)
        except (ApodaError, Image.DecompressionBombError) as exc:
            # read_rgb's message names the file; keep the reason only, the caller names the file
            reason = str(exc).removeprefix(f"cannot read image {file}: ")
            result.failures.append((file, reason))
            continue
        net_in = resize_image(rgb, network.size) if network.size else rgb
        with torch.no_grad():
            logits = network.run(network.norm.normalise(net_in)[None].to(network.device))
            logits = upsample_logits(logits, rgb.shape[:2])
        pred = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        color = network.colors[pred]
        overlay = (0.5 * rgb + 0.5 * color).astype(np.uint8)
        stem = plan[file]
        stem.parent.mkdir(parents=True, exist_ok=True)
        targets = (
            stem.parent / (stem.name + TRAIN_IDS_SUFFIX),
            stem.parent / (stem.name + COLOUR_SUFFIX),
            stem.parent / (stem.name + OVERLAY_SUFFIX),
        )
        for target, array in zip(targets, (pred, color, overlay), strict=True):
            Image.fromarray(array).save(target, format="PNG")
        result.predicted[file] = targets
    return result
