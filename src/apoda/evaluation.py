"""Evaluation: confusion matrix at full label resolution, IoU, head/tail summaries and tables.

The protocol of the field: logits are upsampled bilinearly to the label's resolution before the
argmax, one confusion matrix is accumulated over the whole split, IoU = TP / (TP + FP + FN) per
class and mIoU is the mean over classes that occur (NaN-safe).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from apoda.data.classes import IGNORE_INDEX, ClassScheme, scheme_palette
from apoda.distributed import rank_and_world, sum_over_ranks
from apoda.errors import ApodaError


class ConfusionMatrix:
    """Counts of (ground truth, prediction) pixel pairs; rows are ground truth, columns prediction.

    Labels equal to 255 or outside [0, C) are skipped. The matrix lives on ``device`` so that a
    distributed all-reduce can run on it without a copy.
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None) -> None:
        if num_classes < 1:
            raise ApodaError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def update(self, pred: Tensor, label: Tensor) -> None:
        """Add a batch of predicted indices and labels of the same shape ([B, H, W])."""
        if pred.shape != label.shape:
            raise ApodaError(
                f"prediction shape {tuple(pred.shape)} differs from label shape "
                f"{tuple(label.shape)}; upsample the logits to the label size first"
            )
        c = self.num_classes
        pred = pred.to(self.matrix.device, torch.int64).reshape(-1)
        label = label.to(self.matrix.device, torch.int64).reshape(-1)
        keep = (label >= 0) & (label < c)
        pred, label = pred[keep], label[keep]
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= c):
            raise ApodaError(
                f"predicted class indices must be in [0, {c}), got [{int(pred.min())}, "
                f"{int(pred.max())}]; does the model output {c} classes?"
            )
        self.matrix += torch.bincount(label * c + pred, minlength=c * c).reshape(c, c)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. from another shard); returns self."""
        if other.num_classes != self.num_classes:
            raise ApodaError(
                f"cannot merge a {other.num_classes}-class confusion matrix into a "
                f"{self.num_classes}-class one"
            )
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def iou(self) -> np.ndarray:
        """Per-class IoU in [0, 1]; NaN where a class is in neither ground truth nor prediction."""
        m = self.matrix.to("cpu", torch.float64).numpy()
        tp = np.diag(m)
        union = m.sum(axis=0) + m.sum(axis=1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self, subset: Sequence[int] | None = None) -> float:
        """Mean IoU over ``subset`` (class indices; all classes if None), ignoring NaN classes."""
        return _nanmean(self.iou() if subset is None else self.iou()[list(subset)])


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN (without a warning) if there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def predict_full_res(model: nn.Module, images: Tensor, label_size: Sequence[int]) -> Tensor:
    """Class indices [B, H, W] at ``label_size`` (height, width, as ``label.shape[-2:]``).

    Logits are upsampled bilinearly to the label size before the argmax, so a model that runs on
    downscaled images is scored against full-resolution labels.
    """
    logits = model(images)
    if not isinstance(logits, Tensor) or logits.ndim != 4:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ApodaError(f"expected the model to return logits [B, C, h, w], got {got}")
    size = (int(label_size[0]), int(label_size[1]))
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


def evaluate(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    num_classes: int,
    device: torch.device | str,
    progress: bool = False,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> ConfusionMatrix:
    """Confusion matrix of ``model`` over ``loader`` (batches with "image" and "label").

    Runs in eval mode without gradients and restores the model's training mode afterwards.
    ``reduce`` (e.g. a distributed all-reduce) is applied to the matrix before it is returned;
    the returned matrix is on the CPU.
    """
    cm = ConfusionMatrix(num_classes, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
                images = batch["image"].to(device)
                labels = batch["label"].to(device)
                cm.update(predict_full_res(model, images, labels.shape[-2:]), labels)
    finally:
        model.train(was_training)
    if reduce is not None:
        cm.matrix = reduce(cm.matrix)
    cm.matrix = cm.matrix.cpu()
    return cm


def _percent(value: float) -> float | None:
    """A [0, 1] value as a percentage, NaN as None (JSON null)."""
    return None if math.isnan(value) else 100.0 * value


def metrics_dict(
    cm: ConfusionMatrix,
    scheme: ClassScheme,
    tail_classes: Sequence[str],
    dataset: str,
    split: str,
    iteration: int | None = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """JSON-safe metrics of one evaluation: IoU in percent, NaN written as None.

    ``class_colors`` are the scheme's (the report paints with them); ``head_miou`` and
    ``tail_miou`` average the classes outside / inside ``tail_classes``;
    ``subsets`` (e.g. mIoU16 and mIoU13) is present when the scheme reports several.
    """
    if cm.num_classes != scheme.num_classes:
        raise ApodaError(
            f"confusion matrix has {cm.num_classes} classes but scheme {scheme.name!r} has "
            f"{scheme.num_classes}"
        )
    tail_idx = [scheme.index(c) for c in tail_classes]
    head_idx = [i for i in range(scheme.num_classes) if i not in tail_idx]
    iou = cm.iou()
    out: dict[str, Any] = {
        "dataset": dataset,
        "split": split,
        "num_classes": scheme.num_classes,
        "class_names": list(scheme.class_names),
        "class_colors": [list(color) for color in scheme.colors],
        "miou": _percent(_nanmean(iou)),
        "per_class": {c: _percent(float(v)) for c, v in zip(scheme.class_names, iou, strict=True)},
        "tail_classes": list(tail_classes),
        "head_miou": _percent(_nanmean(iou[head_idx])),
        "tail_miou": _percent(_nanmean(iou[tail_idx])),
        "iteration": iteration,
        "checkpoint": checkpoint,
    }
    if len(scheme.eval_subsets) > 1:
        out["subsets"] = {
            key: _percent(_nanmean(iou[list(idx)])) for key, idx in scheme.eval_subsets.items()
        }
    return out


def evaluate_segmenter(
    segmenter: nn.Module,
    dataset: Dataset[Any],
    scheme: ClassScheme,
    tail: list[str],
    device: torch.device,
    batch_size: int,
    name: str,
    split: str,
    iteration: int | None = None,
    checkpoint: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score a segmenter on a labelled split: each rank scores its shard, and one confusion
    matrix summed over ranks gives the 1-process metrics."""
    rank, world = rank_and_world()
    shard: Dataset[Any] = dataset
    if world > 1:
        shard = Subset(dataset, list(range(rank, len(dataset), world)))  # type: ignore[arg-type]
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False)
    cm = evaluate(
        segmenter, loader, scheme.num_classes, device, progress=progress, reduce=sum_over_ranks
    )
    return metrics_dict(cm, scheme, tail, name, split, iteration=iteration, checkpoint=checkpoint)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _diff_cell(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{b - a:+.1f}"


def format_table(
    columns: Mapping[str, Mapping[str, Any]],
    class_names: Sequence[str],
    tail_classes: Sequence[str],
    diff: tuple[str, str] | None = None,
) -> str:
    """Markdown table: a row per class (tail classes starred), a column per run (metrics dicts
    from ``metrics_dict``), an optional ``b - a`` column for ``diff=(a, b)``, then head mean,
    tail mean, mIoU and any mIoU subsets."""
    if not columns:
        raise ApodaError("format_table needs at least one column")
    if diff is not None:
        unknown = [d for d in diff if d not in columns]
        if unknown:
            raise ApodaError(f"diff columns {unknown} are not among the runs {', '.join(columns)}")
    tail = set(tail_classes)
    rows: list[tuple[str, list[float | None]]] = []
    for c in class_names:
        label = f"*{c}" if c in tail else c
        rows.append((label, [m.get("per_class", {}).get(c) for m in columns.values()]))
    rows.append(("head mean", [m.get("head_miou") for m in columns.values()]))
    rows.append(("tail mean (*)", [m.get("tail_miou") for m in columns.values()]))
    rows.append(("mIoU", [m.get("miou") for m in columns.values()]))
    subsets: list[str] = []
    for m in columns.values():
        subsets += [k for k in m.get("subsets", {}) if k not in subsets]
    for key in subsets:
        rows.append((key, [m.get("subsets", {}).get(key) for m in columns.values()]))

    names = list(columns)
    header = ["class", *names]
    if diff is not None:
        header.append(f"{diff[1]} - {diff[0]}")
        a, b = names.index(diff[0]), names.index(diff[1])
    lines = [
        "| " + " | ".join(header) + " |",
        "|---" + "|---:" * (len(header) - 1) + "|",
    ]
    for label, values in rows:
        cells = [label, *(_cell(v) for v in values)]
        if diff is not None:
            cells.append(_diff_cell(values[a], values[b]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_color_predictions(
    preds: Tensor | np.ndarray, names: Sequence[str], scheme: ClassScheme, out_dir: str | Path
) -> list[Path]:
    """Write each [H, W] prediction as ``out_dir/NAME.png``: a palette PNG whose indices are the
    class indices and whose palette is the scheme's colours (ignore and unknown: black)."""
    array = preds.detach().cpu().numpy() if isinstance(preds, Tensor) else np.asarray(preds)
    if array.ndim != 3 or len(array) != len(names):
        raise ApodaError(
            f"expected predictions [B, H, W] with one name each, got shape {array.shape} "
            f"and {len(names)} names"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    palette = scheme_palette(scheme).reshape(-1).tolist()
    valid = (array >= 0) & (array < scheme.num_classes)
    indices = np.where(valid, array, IGNORE_INDEX).astype(np.uint8)
    paths = []
    for pred, name in zip(indices, names, strict=True):
        image = Image.fromarray(pred)  # "L"; putpalette turns it into "P"
        image.putpalette(palette)
        path = out / f"{name}.png"
        image.save(path)
        paths.append(path)
    return paths
