"""A run folder: its file names, the one reader and writer of `log.jsonl`, the selection labels
of metrics.json, and the rules for reusing a finished run or resuming an unfinished one (both
compare the run's saved config with the one asked for now).

The trainer, the demo, the suites and the report all go through this module, so a file name,
a log format or a reuse rule has one definition."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from apoda.config import Config, config_to_dict, load_config
from apoda.errors import ApodaError
from apoda.run_lock import LOCK_FILE, unwritable

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.pt"
BEST_CHECKPOINT = f"{CHECKPOINT_DIR}/best.pt"


def kept_checkpoint(iteration: int) -> str:
    """The checkpoint kept at an evaluation point with `train.keep_checkpoints`."""
    return f"{CHECKPOINT_DIR}/iter_{iteration:06d}.pt"


TENSORBOARD_DIR = "tb"
SAMPLES_FILE = "samples.npz"
STATS_DIR = "stats"
REPORT_FILE = "report.md"
RUN_FILES = (
    CHECKPOINT_DIR,
    TENSORBOARD_DIR,
    LOG_FILE,
    METRICS_FILE,
    SAMPLES_FILE,
    STATS_DIR,
    REPORT_FILE,
    CONFIG_FILE,
)
"""Everything a training run writes into its folder (cleared by `--overwrite`)."""
EVAL_DIR_PREFIX = "eval-"
"""`apoda eval`'s default output folders inside a run, `eval-DATA-SPLIT` (scores of an older
checkpoint: cleared by `--overwrite` too)."""

SELECTION_FINAL = "final"
SELECTION_ORACLE = "oracle-best"
"""metrics.json `selection`: the last snapshot, or the snapshot with the best target-val mIoU
(model selection on the test set, only behind `train.select_best`)."""
SELECTION_LABEL_FREE = "label-free:"
"""metrics.json `selection` prefix of a snapshot chosen by a label-free score
(`train.select_best: SCORE`), followed by the score's name."""
LABEL_FREE_NOTE = (
    "`label-free:SCORE` reports the evaluation point where that label-free score was highest "
    "(`apoda.selection`; no target label read), with its target-val metrics."
)
ORACLE_NOTE = (
    "`oracle-best` picks the snapshot by its target-val mIoU, i.e. model selection on the "
    "test set; `final` is the last snapshot."
)


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's last checkpoint."""
    path = Path(path)
    return path / LAST_CHECKPOINT if path.is_dir() else path


def is_oracle_selection(selection: Any) -> bool:
    """Whether a metrics.json `selection` value marks oracle selection (also the longer label
    that runs written before 0.2 carry)."""
    return isinstance(selection, str) and selection.startswith(SELECTION_ORACLE)


# --------------------------------------------------------------------------- folders


def writable_folder(folder: Path) -> Path:
    """Create `folder` if needed and check that a file can be written in it, before any work
    whose results would go there; a one-line ApodaError naming it otherwise."""
    if folder.exists() and not folder.is_dir():
        raise ApodaError(f"output folder {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise unwritable(folder, exc) from None
    return folder


def refuse_run_folder(folder: Path, what: str) -> None:
    """`what` (a demo, a suite) writes several runs and a report into `folder`: refuse a folder
    that is one training run's own (it has config.yaml), whose report it would overwrite."""
    if (folder / CONFIG_FILE).is_file():
        raise ApodaError(
            f"{folder} is a training run's folder (it has {CONFIG_FILE}); {what} writes its own "
            "runs and report into --out: choose another folder"
        )


def prepare_run_dir(
    run_dir: Path, resume: bool, overwrite: bool, log: Callable[[str], None] = print
) -> None:
    """Refuse to clobber an existing run unless asked; check the folder can be written;
    with `overwrite`, clear everything a run writes. A folder that holds only what a run left
    when it stopped before its first checkpoint (nothing to resume, no result) is cleared."""
    existing = run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir())
    leftovers = (
        existing
        and (run_dir / CONFIG_FILE).is_file()
        and not any((run_dir / name).exists() for name in (LAST_CHECKPOINT, METRICS_FILE))
    )
    if existing and not (resume or overwrite or leftovers):
        raise ApodaError(
            f"run folder {run_dir} already exists; pass --resume to continue it or --overwrite "
            f"to start it again"
        )
    writable_folder(run_dir)
    if leftovers and not resume:
        log(f"{run_dir} holds a run that stopped before its first checkpoint: starting afresh")
    if (overwrite or leftovers) and not resume:
        for path in [*(run_dir / name for name in RUN_FILES), *run_dir.glob(f"{EVAL_DIR_PREFIX}*")]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


# --------------------------------------------------------------------------- log.jsonl


def read_log(path: Path) -> list[dict[str, Any]]:
    """Read log.jsonl. A last line without its newline that does not parse is the trace of a run
    killed mid-write and is dropped; any other bad line is an error naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApodaError(f"{path}: cannot read the run log ({exc})") from None
    lines = text.split("\n")
    complete = text.endswith("\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not complete:
                break
            raise ApodaError(f"{path}:{number}: not a JSON line ({exc})") from None
        if not isinstance(record, dict):
            raise ApodaError(f"{path}:{number}: expected a JSON object per line")
        records.append(record)
    return records


def _json_safe(value: float) -> float | None:
    return value if math.isfinite(value) else None


class RunLog:
    """Writes `train` and `eval` records to TensorBoard and log.jsonl; a resumed run keeps the
    records up to its checkpoint (read with the tolerant `read_log`) and drops the rest."""

    def __init__(self, run_dir: Path, resume_iteration: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / LOG_FILE
        if resume_iteration is not None and self.path.exists():
            kept = [r for r in read_log(self.path) if r.get("iteration", 0) <= resume_iteration]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.start = time.time()
        self.writer = SummaryWriter(
            log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=resume_iteration
        )
        self.file = open(self.path, "a")  # noqa: SIM115 - kept open for the run's duration

    def _write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def train(self, iteration: int, values: dict[str, Tensor | float]) -> dict[str, float]:
        """Log training scalars (tensors are converted here, once per log interval)."""
        floats = {k: float(v) for k, v in values.items()}
        for key, value in floats.items():
            self.writer.add_scalar(key, value, iteration)
        record = {"kind": "train", "iteration": iteration, "time": time.time() - self.start}
        self._write({**record, "values": {k: _json_safe(v) for k, v in floats.items()}})
        return floats

    def eval(self, iteration: int, metrics: dict[str, Any]) -> None:
        """Log an evaluation: mIoU, head and tail means and the per-class IoU."""
        for key in ("miou", "head_miou", "tail_miou"):
            if metrics.get(key) is not None:
                self.writer.add_scalar(f"eval/{key}", metrics[key], iteration)
        for name, value in metrics["per_class"].items():
            if value is not None:
                self.writer.add_scalar(f"eval_class/{name}", value, iteration)
        probe = metrics.get("pseudo_labels") or {}
        for key in ("agreement", "confident_share", "accuracy"):
            if probe.get(key) is not None:
                self.writer.add_scalar(f"pseudo_labels/{key}", probe[key], iteration)
        keys = ("miou", "head_miou", "tail_miou", "per_class", "subsets", "pseudo_labels")
        keys += ("selection_scores",)
        self._write(
            {
                "kind": "eval",
                "iteration": iteration,
                **{k: metrics[k] for k in keys if k in metrics},
            }
        )

    def warning(self, iteration: int, message: str) -> None:
        """Log a warning about the run (it also goes into metrics.json and the console)."""
        self._write({"kind": "warning", "iteration": iteration, "message": message})

    def close(self) -> None:
        """Flush and close both sinks."""
        self.writer.close()
        self.file.close()


# --------------------------------------------------------------------------- reuse and resume

NOT_RESULT_KEYS = frozenset(
    {
        "name",
        "train.progress",
        "train.log_every",
        "train.device",
        "data.num_workers",
        "data.eval_batch_size",
        "model.init_from",
        "train.probe_images",
        "train.settle_tolerance",
        "train.keep_checkpoints",
    }
)
"""Config keys that do not change what a run computes: a finished run may be reused, and an
unfinished one resumed, when only these differ. (`model.init_from` is a path spelling: the
init run is checked by the same rule, and a resumed run restores its own checkpoint.)"""

EXTENDABLE_KEYS = frozenset({"train.iterations"})
"""Keys that `--resume` may change: more iterations extend the run (the poly schedule is
recomputed over the new length)."""


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: Config, wanted: Config) -> dict[str, tuple[Any, Any]]:
    """Every flattened key whose value differs: key -> (saved, wanted)."""
    old, new = _flatten(config_to_dict(saved)), _flatten(config_to_dict(wanted))
    return {
        key: (old.get(key), new.get(key))
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    }


def result_differences(saved: Config, wanted: Config) -> dict[str, tuple[Any, Any]]:
    """The differences that change what a run computes (`NOT_RESULT_KEYS` aside)."""
    return {k: v for k, v in config_differences(saved, wanted).items() if k not in NOT_RESULT_KEYS}


def _describe(diffs: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diffs.items())


def saved_config(run_dir: Path) -> Config | None:
    """The config a run folder was trained with (configs of earlier apoda versions included),
    or None when the folder has none."""
    path = run_dir / CONFIG_FILE
    return load_config(path, saved=True) if path.is_file() else None


def finished_metrics(run_dir: Path, config: Config) -> dict[str, Any] | None:
    """The metrics of a finished run in `run_dir` if it was trained with `config` (keys that
    do not change results aside); None when the run has not finished. A finished run trained
    with another config is an error naming the keys, never silently reused."""
    metrics_file = run_dir / METRICS_FILE
    if not metrics_file.is_file():
        return None
    saved = saved_config(run_dir)
    if saved is not None:
        diffs = result_differences(saved, config)
        if diffs:
            raise ApodaError(
                f"{run_dir} finished with a different config than the one asked for now "
                f"({_describe(diffs)}); move that folder away, pass another output folder, or "
                "--overwrite to train it again"
            )
    try:
        return json.loads(metrics_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ApodaError(f"{metrics_file}: cannot read JSON ({exc})") from None


def resume_config(
    saved: Config, requested: Config, run_dir: Path, log: Callable[[str], None] = print
) -> Config:
    """The config a resumed run continues with: the saved one, with the changes `--resume` may
    apply (more iterations) taken from `requested` and reported. Any other difference that
    changes results is an error naming the keys."""
    diffs = result_differences(saved, requested)
    refused = {k: v for k, v in diffs.items() if k not in EXTENDABLE_KEYS}
    if refused:
        raise ApodaError(
            f"--resume of {run_dir}: the run was started with another config "
            f"({_describe(refused)}); only {', '.join(sorted(EXTENDABLE_KEYS))} may change when "
            "resuming. Start a new run (another --out, or --overwrite) to change the others"
        )
    if diffs:
        log(
            f"resuming {run_dir} with {_describe(diffs)} (the poly learning-rate schedule is "
            "recomputed over the new length)"
        )
    return requested
