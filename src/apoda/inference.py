"""Using trained models: score a checkpoint on a dataset, predict label maps for images, and
build datasets by name for the CLI (`apoda eval`, `apoda predict`, `apoda data stats`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from apoda.config import Config, config_from_dict
from apoda.data import SegmentationDataset, build_dataset, get_scheme
from apoda.data.classes import ClassScheme, colorize
from apoda.data.io import read_rgb
from apoda.data.transforms import Normalisation, resize_image
from apoda.distributed import resolve_device
from apoda.engine.checkpoint import load_checkpoint, load_module_state
from apoda.errors import ApodaError
from apoda.evaluation import evaluate_segmenter
from apoda.models import Segmenter, upsample_logits
from apoda.models.build import architecture_from_config
from apoda.runs import METRICS_FILE, checkpoint_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_segmenter(path: str | Path) -> tuple[Segmenter, Config, dict[str, Any]]:
    """Rebuild the segmenter a checkpoint was trained with and load its weights."""
    path = checkpoint_file(path)
    state = load_checkpoint(path)
    config = config_from_dict(state["config"], saved=True)
    scheme = get_scheme(config.data.scheme)
    segmenter = architecture_from_config(config, scheme.num_classes)
    load_module_state(segmenter, state["modules"]["segmenter"], "segmenter", path)
    segmenter.eval()
    return segmenter, config, state


def dataset_for(
    name: str,
    root: str | None,
    split: str | None,
    scheme: ClassScheme,
    config: Config | None = None,
    label_full_res: bool = True,
) -> tuple[SegmentationDataset, str]:
    """A labelled dataset by name (`minicity` means MiniCity's target domain, Cityscapes layout)."""
    from apoda.engine.data import minicity_root

    data = config.data if config is not None else Config().data
    kwargs: dict[str, Any] = {"normalisation": data.normalisation, "label_full_res": label_full_res}
    if name == "minicity":
        return build_dataset(
            "cityscapes", minicity_root(data) / "target", split or "val", scheme, **kwargs
        ), split or "val"
    if root is None:
        raise ApodaError(f"--root is required for {name}: the folder of the dataset")
    size = None
    if config is not None:
        size = data.target_size if name == "cityscapes" else data.source_size
    split = split or ("val" if name == "cityscapes" else "train")
    return build_dataset(
        name, root, split, scheme, size=tuple(size) if size else None, **kwargs
    ), split


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str,
    root: str | None,
    split: str | None,
    out: str | None,
    batch_size: int | None = None,
    colors: str | None = None,
) -> tuple[dict[str, Any], Path]:
    """`apoda eval`: the field's protocol (full-resolution labels) on one split; metrics.json."""
    path = checkpoint_file(checkpoint)
    segmenter, config, state = load_segmenter(path)
    scheme = get_scheme(config.data.scheme)
    device = resolve_device(config.train.device)
    segmenter.to(device)
    dataset, split = dataset_for(data, root, split, scheme, config)
    tail = list(state.get("tail_classes") or [])
    metrics = evaluate_segmenter(
        segmenter,
        dataset,
        scheme,
        tail,
        device,
        batch_size or config.data.eval_batch_size,
        data,
        split,
        iteration=state.get("iteration"),
        checkpoint=str(path),
        progress=True,
    )
    out_dir = Path(out) if out else path.parent.parent / f"eval-{data}-{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / METRICS_FILE
    out_file.write_text(json.dumps(metrics, indent=1))
    if colors:
        from apoda.evaluation import predict_full_res, save_color_predictions

        with torch.no_grad():
            for i in range(len(dataset)):
                item = dataset[i]
                image = item["image"][None].to(device)
                pred = predict_full_res(segmenter, image, item["label"].shape[-2:]).cpu()
                save_color_predictions(pred, [item["name"]], scheme, colors)
    return metrics, out_file


def predict_images(checkpoint: str | Path, images: str | Path, out: str | Path) -> list[Path]:
    """`apoda predict`: colour label maps and overlays for an image or a folder of images."""
    segmenter, config, _ = load_segmenter(checkpoint)
    scheme = get_scheme(config.data.scheme)
    device = resolve_device(config.train.device)
    segmenter.to(device)
    source = Path(images)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.is_file():
        files = [source]
    else:
        raise ApodaError(f"{source} is neither an image nor a folder of images")
    if not files:
        raise ApodaError(f"no .png/.jpg images in {source}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    norm = Normalisation(config.data.normalisation)
    size = config.data.target_size
    written = []
    for file in files:
        rgb = read_rgb(file)
        net_in = resize_image(rgb, (int(size[0]), int(size[1]))) if size else rgb
        with torch.no_grad():
            logits = segmenter(norm.normalise(net_in)[None].to(device))
            logits = upsample_logits(logits, rgb.shape[:2])
        pred = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        color = colorize(pred, scheme)
        overlay = (0.5 * rgb + 0.5 * color).astype(np.uint8)
        for suffix, array in (("_labels", color), ("_overlay", overlay)):
            target = out_dir / f"{file.stem}{suffix}.png"
            Image.fromarray(array).save(target)
            written.append(target)
    return written


def dataset_stats(
    name: str,
    root: str | None,
    split: str | None,
    scheme_name: str | None,
    out: str | None,
    plot: str | None,
) -> dict[str, Any]:
    """`apoda data stats`: class fractions of a dataset's labels, as JSON and a picture."""
    from apoda.data.stats import compute_stats
    from apoda.report import plot_class_distribution

    scheme = get_scheme(scheme_name or ("synthia16" if name == "synthia" else "cityscapes19"))
    if name == "minicity" and split in (None, "source"):
        from apoda.engine.data import minicity_root

        dataset: SegmentationDataset = build_dataset(
            "gta5", minicity_root(Config().data) / "source", "train", scheme
        )
        split = "source"
    else:
        dataset, split = dataset_for(name, root, split, scheme)
    stats = compute_stats(dataset, name, split, progress=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(stats, indent=1))
    if plot:
        plot_class_distribution({f"{name} {split}": stats}, plot)
    return stats
