"""`apoda demo`: MiniCity, step 1 (source only), then APODA and its attack-off control and DACS
(`configs/minicity/dacs.yaml`, the self-training that adapts on MiniCity, docs/results.md) from
the same checkpoint; a per-class table, `summary.json` and the report of the four runs.
7.2 minutes and 1.1 GB on 2 CPU cores from an empty cache
(benchmarks/results/demo_time.json); `--no-self-training` leaves DACS out.

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
from apoda.runs import LAST_CHECKPOINT, finished_metrics, refuse_run_folder

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
FAST_ITERATIONS = {"source_only": 20, "apoda": 8, "dacs": 8}

ROWS = (
    ("source_only", "source only"),
    ("apoda_none", "APODA attack off"),
    ("apoda", "APODA"),
)
SELF_TRAINING_ROW = ("dacs", "DACS")
"""The self-training row (on by default except with `--imagenet`, whose demo is slow already)."""


def demo_rows(self_training: bool) -> tuple[tuple[str, str], ...]:
    """(run folder, column label) of each row of the demo, in order."""
    return (*ROWS, SELF_TRAINING_ROW) if self_training else ROWS


FAMILY_BY_IMAGENET = {False: "minicity", True: "minicity_imagenet"}
"""The config family of the demo, by its `imagenet` flag."""


def demo_configs(
    out: Path, fast: bool, imagenet: bool = False, self_training: bool = False
) -> dict[str, Config]:
    """The runs of the demo: step 1, then APODA with the attack off and on (and DACS) from it."""
    family = FAMILY_BY_IMAGENET[imagenet]

    def schedule(key: str) -> list[str]:
        return [*FAST_OVERRIDES, f"train.iterations={FAST_ITERATIONS[key]}"] if fast else []

    init = f"model.init_from={out / 'source_only' / LAST_CHECKPOINT}"
    configs = {
        "source_only": load_config(
            resolve_config(f"{family}/source_only"), schedule("source_only")
        ),
        "apoda_none": load_config(
            resolve_config(f"{family}/apoda"),
            [
                *schedule("apoda"),
                init,
                "method.attack.name=none",
                f"name={family}-apoda-attack-off",
            ],
        ),
        "apoda": load_config(resolve_config(f"{family}/apoda"), [*schedule("apoda"), init]),
    }
    if self_training:
        configs["dacs"] = load_config(resolve_config(f"{family}/dacs"), [*schedule("dacs"), init])
    return configs


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
    out: Path,
    fast: bool = False,
    overwrite: bool = False,
    imagenet: bool = False,
    self_training: bool | None = None,
) -> dict[str, Any]:
    """Run the demo into `out`; print the per-class table; return the summary. `out` is
    held by this demo until it ends (a second demo aimed at it is refused). `self_training`:
    the DACS row (None: on, except with `imagenet`)."""
    refuse_run_folder(out, "the demo")
    with FolderLock(out):
        with_dacs = not imagenet if self_training is None else self_training
        return _run_demo(out, fast, overwrite, imagenet, with_dacs)


def _run_demo(
    out: Path, fast: bool, overwrite: bool, imagenet: bool, self_training: bool
) -> dict[str, Any]:
    start = time.time()
    configs = demo_configs(out, fast, imagenet, self_training)
    rows = demo_rows(self_training)
    metrics: dict[str, dict[str, Any]] = {}
    for key, label in rows:
        print(f"== {label} ({key}) ==")
        metrics[key] = _train(configs[key], out / key, overwrite)
    columns = {label: metrics[key] for key, label in rows}
    first = metrics["source_only"]
    table = format_table(
        columns, first["class_names"], first["tail_classes"], diff=("APODA attack off", "APODA")
    )
    elapsed = time.time() - start
    summary = {
        "fast": fast,
        "family": FAMILY_BY_IMAGENET[imagenet],
        "self_training": self_training,
        "seconds": round(elapsed, 1),
        "runs": {key: metrics[key] for key, _ in rows},
        "table": table,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(table + "\n")
    runs = [read_run(out / key, name=label) for key, label in rows]
    regime = " (128x256, ImageNet EfficientNet-Lite0)" if imagenet else ""
    report = write_report(runs, out, title=f"apoda demo: MiniCity{regime}, source only vs APODA")
    print()
    print("Target validation IoU (%) on MiniCity; * = tail class (< 1 % of source pixels).")
    print("APODA and its attack-off control start from the source-only checkpoint and share")
    print("one schedule: their difference is what the perturbations add.")
    if self_training:
        print("DACS starts from the same checkpoint and trains G too, for its own (longer)")
        print("schedule; its matched control is in `apoda suite selftraining`.")
    print(table)
    print(f"\nreport: {report}   ({elapsed / 60:.1f} min)")
    return summary
