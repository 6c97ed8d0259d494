"""Reading run folders for reports: config.yaml, metrics.json, log.jsonl, stats/ and
samples.npz, into a `Run`; and the small value helpers the pictures and tables share.

A run folder is what the training loop writes; everything in `apoda.report` only reads it, so
a report can be redrawn at any time, for any set of runs, without a model or a dataset."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from apoda import runs
from apoda.errors import ApodaError


@dataclass
class Samples:
    """Fixed target-val images with their labels and one run's predictions (train ids)."""

    images: np.ndarray  # uint8 [N,H,W,3]
    labels: np.ndarray  # uint8 [N,H,W], 255 = ignore
    predictions: np.ndarray  # uint8 [N,H,W]


@dataclass
class Run:
    """Everything a report needs from one run folder; optional parts are None when absent."""

    name: str
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] | None = None
    samples: Samples | None = None

    @property
    def method(self) -> str | None:
        """The `method.name` of the resolved config, if the config has one."""
        method = self.config.get("method")
        if isinstance(method, Mapping) and method.get("name") is not None:
            return str(method["name"])
        return None

    @property
    def train_records(self) -> list[dict[str, Any]]:
        """Log lines of kind "train" that carry a values mapping."""
        return [
            r for r in self.log if r.get("kind") == "train" and isinstance(r.get("values"), Mapping)
        ]

    @property
    def eval_records(self) -> list[dict[str, Any]]:
        """Log lines of kind "eval"."""
        return [r for r in self.log if r.get("kind") == "eval"]


# --------------------------------------------------------------------------- reading


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApodaError(f"{path}: cannot read JSON ({exc})") from exc


def _read_json_object(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ApodaError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_samples(path: Path) -> Samples:
    try:
        with np.load(path) as data:
            arrays = {key: np.asarray(data[key]) for key in ("images", "labels", "predictions")}
    except KeyError as exc:
        raise ApodaError(f"{path}: expected arrays images, labels and predictions") from exc
    except (OSError, ValueError) as exc:
        raise ApodaError(f"{path}: cannot read samples ({exc})") from exc
    images, labels, predictions = arrays["images"], arrays["labels"], arrays["predictions"]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ApodaError(f"{path}: images must be [N,H,W,3], got {list(images.shape)}")
    if labels.shape != images.shape[:3] or predictions.shape != images.shape[:3]:
        raise ApodaError(
            f"{path}: labels {list(labels.shape)} and predictions {list(predictions.shape)} "
            f"must both be {list(images.shape[:3])} to match images"
        )
    for key in ("images", "labels", "predictions"):
        array = arrays[key]
        if not np.issubdtype(array.dtype, np.integer) or (
            array.size and (array.min() < 0 or array.max() > 255)
        ):
            raise ApodaError(f"{path}: {key} must hold integers in 0..255 (uint8)")
    return Samples(images.astype(np.uint8), labels.astype(np.uint8), predictions.astype(np.uint8))


def read_run(path: str | Path, name: str | None = None) -> Run:
    """Load a run folder; `name` labels it in pictures and tables (default: the folder name)."""
    folder = Path(path)
    config_path, metrics_path = folder / runs.CONFIG_FILE, folder / runs.METRICS_FILE
    if not folder.is_dir() or not (config_path.is_file() or metrics_path.is_file()):
        raise ApodaError(f"{folder} is not a run folder: expected config.yaml or metrics.json")
    config: dict[str, Any] = {}
    if config_path.is_file():
        try:
            loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ApodaError(f"{config_path}: cannot read YAML ({exc})") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ApodaError(f"{config_path}: expected a mapping at the top level")
        config = loaded or {}
    metrics = _read_json_object(metrics_path) if metrics_path.is_file() else None
    log_path = folder / runs.LOG_FILE
    log = runs.read_log(log_path) if log_path.is_file() else []
    stats = {
        domain: _read_json_object(folder / runs.STATS_DIR / f"{domain}.json")
        for domain in ("source", "target")
        if (folder / runs.STATS_DIR / f"{domain}.json").is_file()
    }
    samples_path = folder / runs.SAMPLES_FILE
    samples = _read_samples(samples_path) if samples_path.is_file() else None
    return Run(
        name=name or folder.resolve().name,
        path=folder,
        config=config,
        metrics=metrics,
        log=log,
        stats=stats or None,
        samples=samples,
    )


def as_number(value: Any) -> float:
    """A JSON number as float; null, strings and the like become NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def class_names_of(metrics: Mapping[str, Any]) -> list[str]:
    names = metrics.get("class_names")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    per_class = metrics.get("per_class")
    return [str(n) for n in per_class] if isinstance(per_class, Mapping) else []


def union(lists: Iterable[Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for items in lists:
        for item in items:
            seen.setdefault(str(item), None)
    return list(seen)


def tail_of(metrics: Mapping[str, Any] | None) -> list[str]:
    tail = metrics.get("tail_classes") if metrics else None
    return [str(t) for t in tail] if isinstance(tail, list) else []


def run_tail(run: Run) -> list[str]:
    """A run's tail classes: its metrics.json's `tail_classes`; for a run without them (one
    still training), those its last checkpoint holds (read on the CPU, weights only), else its
    config's `data.tail_classes`; [] when nothing says."""
    metrics = run.metrics or {}
    if isinstance(metrics.get("tail_classes"), list):
        return tail_of(metrics)
    checkpoint = run.path / runs.LAST_CHECKPOINT
    if checkpoint.is_file():
        from apoda.torch_files import read_torch_file  # torch only where there is no metrics.json

        try:
            state = read_torch_file(checkpoint, "checkpoint")
        except ApodaError:
            state = None
        if isinstance(state, Mapping) and isinstance(state.get("tail_classes"), list):
            return [str(t) for t in state["tail_classes"]]
    data = run.config.get("data")
    configured = data.get("tail_classes") if isinstance(data, Mapping) else None
    return [str(t) for t in configured] if isinstance(configured, list) else []


def format_percent(value: Any) -> str:
    number = as_number(value)
    return f"{number:.1f}" if math.isfinite(number) else "n/a"
