"""`apoda demo`: MiniCity, step 1 (source only), then APODA and its attack-off control from the
same checkpoint; a per-class table, `summary.json` and the report of the three runs.

`--imagenet` runs the same three rows in the paper's regime (the `minicity_imagenet` configs:
128x256 images, the ImageNet EfficientNet-Lite0 as G): 28 minutes on 2 CPU cores instead of the
default's 6-7 (benchmarks/results/demo_time_imagenet.json)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from apoda.config import Config, load_config
from apoda.configs import resolve_config
from apoda.engine.trainer import Trainer
from apoda.evaluation import format_table
from apoda.pretrain import resolve_pretrained
from apoda.report import read_run, write_report
from apoda.run_lock import FolderLock
from apoda.runs import LAST_CHECKPOINT, finished_metrics

# A much shorter schedule on a small MiniCity, for smoke tests and CI.
FAST_OVERRIDES = [
    "data.minicity.n_source=64",
    "data.minicity.n_target_train=64",
    "data.minicity.n_target_val=16",
    "data.minicity.height=32",
    "data.minicity.width=64",
    "data.batch_size=8",
    "train.eval_every=0",
    "train.log_every=5",
    "train.samples=4",
]
TINY_MINICITY = [
    "data.minicity.n_source=16",
    "data.minicity.n_target_train=16",
    "data.minicity.n_target_val=8",
    "data.minicity.height=32",
    "data.minicity.width=64",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "train.progress=false",
    "train.samples=2",
]
"""The smallest MiniCity runs that exercise every part (the tests and `--tiny` smoke checks)."""
FAST_ITERATIONS = {"source_only": 20, "apoda": 8}

ROWS = (
    ("source_only", "source only"),
    ("apoda_none", "APODA attack off"),
    ("apoda", "APODA"),
)


FAMILY_BY_IMAGENET = {False: "minicity", True: "minicity_imagenet"}
"""The config family of the demo, by its `imagenet` flag."""


def demo_configs(out: Path, fast: bool, imagenet: bool = False) -> dict[str, Config]:
    """The three runs of the demo: step 1, then APODA with the attack off and on."""
    family = FAMILY_BY_IMAGENET[imagenet]
    common = FAST_OVERRIDES if fast else []
    step1 = common + ([f"train.iterations={FAST_ITERATIONS['source_only']}"] if fast else [])
    step23 = common + ([f"train.iterations={FAST_ITERATIONS['apoda']}"] if fast else [])
    init = f"model.init_from={out / 'source_only' / LAST_CHECKPOINT}"
    return {
        "source_only": load_config(resolve_config(f"{family}/source_only"), step1),
        "apoda_none": load_config(
            resolve_config(f"{family}/apoda"),
            [*step23, init, "method.attack.name=none", f"name={family}-apoda-attack-off"],
        ),
        "apoda": load_config(resolve_config(f"{family}/apoda"), [*step23, init]),
    }


def _train(config: Config, run_dir: Path, overwrite: bool) -> dict[str, Any]:
    """Train one run, or reuse it when it already finished with this config (a killed demo
    resumes; a finished run of another config, e.g. `--fast`, is refused by name)."""
    if not overwrite:
        metrics = finished_metrics(run_dir, config)
        if metrics is not None:
            print(f"reusing finished run {run_dir}")
            return metrics
    resume = run_dir.is_dir() and not overwrite
    trainer = Trainer(
        config,
        run_dir,
        resume=resume,
        overwrite=overwrite,
        pretrained_file=resolve_pretrained(config),
    )
    return trainer.fit()


def run_demo(
    out: Path, fast: bool = False, overwrite: bool = False, imagenet: bool = False
) -> dict[str, Any]:
    """Run the demo into `out`; print the per-class table; return the summary. `out` is
    held by this demo until it ends (a second demo aimed at it is refused)."""
    with FolderLock(out):
        return _run_demo(out, fast, overwrite, imagenet)


def _run_demo(out: Path, fast: bool, overwrite: bool, imagenet: bool) -> dict[str, Any]:
    start = time.time()
    configs = demo_configs(out, fast, imagenet)
    metrics: dict[str, dict[str, Any]] = {}
    for key, label in ROWS:
        print(f"== {label} ({key}) ==")
        metrics[key] = _train(configs[key], out / key, overwrite)
    columns = {label: metrics[key] for key, label in ROWS}
    first = metrics["source_only"]
    table = format_table(
        columns, first["class_names"], first["tail_classes"], diff=("APODA attack off", "APODA")
    )
    elapsed = time.time() - start
    summary = {
        "fast": fast,
        "family": FAMILY_BY_IMAGENET[imagenet],
        "seconds": round(elapsed, 1),
        "runs": {key: metrics[key] for key, _ in ROWS},
        "table": table,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(table + "\n")
    runs = [read_run(out / key, name=label) for key, label in ROWS]
    regime = " (128x256, ImageNet EfficientNet-Lite0)" if imagenet else ""
    report = write_report(runs, out, title=f"apoda demo: MiniCity{regime}, source only vs APODA")
    print()
    print("Target validation IoU (%) on MiniCity; * = tail class (< 1 % of source pixels).")
    print("APODA and its attack-off control start from the source-only checkpoint and share")
    print("one schedule: their difference is what the perturbations add.")
    print(table)
    print(f"\nreport: {report}   ({elapsed / 60:.1f} min)")
    return summary
