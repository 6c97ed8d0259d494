"""What a finished training run leaves in its folder besides the loop's own files (config.yaml,
checkpoints/, tb/, log.jsonl, metrics.json): the source statistics (stats/source.json), the
predictions on a few target-val images (samples.npz) and the run's report (report.md and its
pictures).

The trainer calls these as its `on_finish` hooks, on the main process, after metrics.json is
written; `default_hooks` are every run's. The report is imported only inside its hook, so the
training loop that imports this module loads no report code."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apoda import runs
from apoda.config import Config
from apoda.data.io import SegmentationDataset
from apoda.engine.data import target_val_stats


@dataclass(frozen=True)
class FinishedRun:
    """What a run hands its finish hooks: its folder and config, its final metrics, the source
    statistics, and the trained segmenter with the target-val data and its device."""

    run_dir: Path
    config: Config
    metrics: dict[str, Any]
    source_stats: dict[str, Any]
    segmenter: torch.nn.Module
    val: SegmentationDataset
    device: torch.device


FinishHook = Callable[[FinishedRun], None]
"""Called once a run has finished training and written metrics.json."""


def write_source_stats(run: FinishedRun) -> None:
    """stats/source.json: the source labels' class distribution and tail classes; and
    stats/target.json, the target val split's (the report draws both without re-reading data)."""
    stats_dir = run.run_dir / runs.STATS_DIR
    stats_dir.mkdir(exist_ok=True)
    (stats_dir / "source.json").write_text(json.dumps(run.source_stats, indent=1))
    target = target_val_stats(run.val, run.config.data.target, run.metrics.get("tail_classes"))
    (stats_dir / "target.json").write_text(json.dumps(target, indent=1))


def write_samples(run: FinishedRun) -> None:
    """samples.npz: predictions on the first `train.samples` target-val images, for the
    report's picture grid (the segmenter is left in eval mode)."""
    n = min(run.config.train.samples, len(run.val))
    if n == 0:
        return
    images, labels, preds = [], [], []
    norm = run.val.normalisation
    run.segmenter.eval()
    with torch.no_grad():
        for i in range(n):
            item = run.val[i]
            x = item["image"][None].to(run.device)
            logits = run.segmenter(x).float()
            label = item["label"]
            if label.shape != x.shape[2:]:
                label = torch.nn.functional.interpolate(
                    label[None, None].float(), size=x.shape[2:], mode="nearest"
                )[0, 0].long()
            images.append(norm.denormalise(item["image"]))
            labels.append(label.numpy().astype(np.uint8))
            preds.append(logits.argmax(1)[0].cpu().numpy().astype(np.uint8))
    np.savez_compressed(
        run.run_dir / runs.SAMPLES_FILE,
        images=np.stack(images),
        labels=np.stack(labels),
        predictions=np.stack(preds),
    )


def write_run_report(run: FinishedRun) -> None:
    """report.md and its pictures, drawn from the run folder as written so far."""
    from apoda.report import read_run, write_report

    write_report([read_run(run.run_dir)], run.run_dir, title=f"apoda run {run.config.name}")


def default_hooks() -> tuple[FinishHook, ...]:
    """Every training run's outputs, in the order they are written (the report reads the
    others)."""
    return (write_source_stats, write_samples, write_run_report)
