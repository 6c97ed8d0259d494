"""Choosing a checkpoint without target labels (`apoda select`, issue 26).

In unsupervised domain adaptation nobody has the target's labels, yet the checkpoint a paper
reports is usually picked with them, or is simply the last. This module scores every checkpoint
a run kept (`train.keep_checkpoints`) with label-free scores, each oriented so that HIGHER IS
BETTER, and says which checkpoint each score chooses. With `labels=True` (a study of the
scores, never a way to choose) it also reads the target's validation labels: each checkpoint's
target mIoU, each score's Spearman rank correlation with it, and each rule's regret (the target
mIoU of the best checkpoint minus that of the one the rule chooses).

Everything is deterministic: networks run in eval mode without gradients, pixel samples and
the photometric change are fixed, the target images' DataLoader has its own generator, and
`select` restores the global RNG that building networks and evaluation's loaders draw from.
docs/selection.md describes the scores and the command."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from apoda.checkpoints import load_checkpoint, load_module_state
from apoda.config import LABEL_FREE_SCORES, config_from_dict
from apoda.engine.data import build_run_data
from apoda.engine.label_free import (
    DEFAULT_IMAGES,
    HELDOUT_IMAGES,
    HELDOUT_SEED_OFFSET,
    PHOTOMETRIC,
    SND_PIXELS,
    SND_TAU,
    RunInputs,
    labelled_metrics,
    score_networks,
)
from apoda.errors import ApodaError
from apoda.inference import checkpoint_scheme, load_segmenter
from apoda.models import Segmenter
from apoda.models.build import architecture_from_config
from apoda.models.segmenter import upgrade_state_keys
from apoda.runs import CHECKPOINT_DIR, LAST_CHECKPOINT, saved_config

DEFAULT_SCORE = "augmentation_agreement"
# chosen by issue 26's pre-registered study on MiniCity draw 0 (docs/results.md): the lowest sum
# of mean regret within a run and across the runs of a table

SCORE_NAMES = LABEL_FREE_SCORES
"""The label-free scores, as the table's columns and the JSON's keys (higher is better)."""
BASELINE_RULES = ("last", "random")
"""Rules that read no score: the last checkpoint, and one drawn at random (its expectation)."""

# -- a run's checkpoints and data ---------------------------------------------------------------
_KEPT = re.compile(r"iter_(\d+)\.pt")


def run_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """A run's checkpoints by iteration: the kept `iter_NNNNNN.pt` files and `last.pt` (left out
    when a kept file has its iteration)."""
    folder = run_dir / CHECKPOINT_DIR
    found = {
        int(match[1]): path
        for path in (folder.glob("iter_*.pt") if folder.is_dir() else [])
        if (match := _KEPT.fullmatch(path.name))
    }
    last = run_dir / LAST_CHECKPOINT
    if last.is_file():
        found.setdefault(int(load_checkpoint(last)["iteration"]), last)
    if not found:
        raise ApodaError(
            f"{run_dir} is not a run folder with checkpoints: expected {LAST_CHECKPOINT} or "
            f"{CHECKPOINT_DIR}/iter_NNNNNN.pt (train with train.keep_checkpoints=true to keep "
            "one per evaluation point)"
        )
    return sorted(found.items())


def run_inputs(run_dir: Path, images: int, heldout_root: str | None) -> RunInputs:
    """A run folder's inputs: its config (config.yaml), its first `images` target training
    images without augmentation, its target val split and held-out source images."""
    config = saved_config(run_dir)
    if config is None:
        raise ApodaError(f"{run_dir} is not a run folder: it has no config.yaml")
    return RunInputs.of(config, build_run_data(config, need_train=False), images, heldout_root)


def partner_network(state: dict[str, Any], path: Path) -> Segmenter | None:
    """The other half of a self-training checkpoint's teacher-student pair: the student
    (`segmenter`) when the teacher is evaluated, else the teacher; None without a teacher."""
    if "teacher" not in state["modules"]:
        return None
    name = "segmenter" if state.get("evaluated", "segmenter") == "teacher" else "teacher"
    config = config_from_dict(state["config"], saved=True)
    network = architecture_from_config(config, checkpoint_scheme(state, config, path).num_classes)
    load_module_state(network, state["modules"][name], name, path, upgrade_state_keys)
    return network.eval()


# -- scoring ------------------------------------------------------------------------------------
def check_score(name: str) -> str:
    """`name` if it is a score's, else a one-line error listing them."""
    if name not in SCORE_NAMES:
        raise ApodaError(
            f"--score: unknown score {name!r}; expected one of {', '.join(SCORE_NAMES)}"
        )
    return name


def score_checkpoint(path: Path, inputs: RunInputs, labels: bool) -> dict[str, Any]:
    """Every score of one checkpoint, what they are made of, and with `labels` its target
    val mIoU and tail mIoU (`evaluate_segmenter` on the run's target val split)."""
    network, _, state = load_segmenter(path)
    network.to(inputs.device)
    partner = partner_network(state, path)
    if partner is not None:
        partner.to(inputs.device)
    scores, details = score_networks(network, partner, inputs)
    record: dict[str, Any] = {
        "iteration": int(state["iteration"]),
        "checkpoint": str(path),
        "evaluated": state.get("evaluated", "segmenter"),
        "scores": scores,
        "details": details,
    }
    if labels:
        tail = list(state.get("tail_classes") or [])
        metrics = labelled_metrics(
            network, inputs.run.val, inputs.run.scheme, tail, inputs.device, inputs.batch_size
        )
        record["target_miou"], record["target_tail_miou"] = metrics["miou"], metrics["tail_miou"]
    return record


def score_run(
    run_dir: Path,
    checkpoints: Sequence[tuple[int, Path]],
    images: int = DEFAULT_IMAGES,
    heldout_root: str | None = None,
    labels: bool = False,
) -> dict[str, Any]:
    """Every checkpoint of a run scored (`run_checkpoints` gives `checkpoints`)."""
    inputs = run_inputs(run_dir, images, heldout_root)
    return {
        "run": str(run_dir),
        "heldout_source": inputs.heldout_name,
        "target_images": len(inputs.target),
        "checkpoints": [score_checkpoint(path, inputs, labels) for _, path in checkpoints],
    }


# -- choosing, and judging the choices with labels ----------------------------------------------
def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, tied values sharing the mean of their ranks."""
    return [sum(u < v for u in values) + (sum(u == v for u in values) + 1) / 2 for v in values]


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Spearman's rank correlation (Pearson's of the tie-averaged ranks); None for fewer than 3
    pairs, a missing value, or a constant side."""
    if len(x) < 3 or any(v is None for v in (*x, *y)):
        return None
    rx, ry = _ranks(cast(Sequence[float], x)), _ranks(cast(Sequence[float], y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if vx == 0 or vy == 0 else cov / math.sqrt(vx * vy)


def choose(values: Sequence[float | None]) -> int | None:
    """The index of the highest value (the earliest of ties); None when a value is missing."""
    if not values or any(v is None for v in values):
        return None
    known = cast(Sequence[float], values)
    return max(range(len(known)), key=lambda i: (known[i], -i))


def regret(targets: Sequence[float], pick: int) -> float:
    """Target mIoU of the best checkpoint minus that of the picked one (0 for the best)."""
    return max(targets) - targets[pick]


def _column(rows: Sequence[dict[str, Any]], name: str) -> list[Any]:
    return [row["scores"][name] for row in rows]


def summarise_run(record: dict[str, Any], score: str, labels: bool) -> None:
    """Add to a scored run the iteration each score and `last` choose and the one `score`
    chooses; with `labels`, each score's Spearman correlation with the target mIoU and each
    rule's regret (`random`: the best minus the mean over checkpoints)."""
    rows = record["checkpoints"]
    picks: dict[str, int | None] = {name: choose(_column(rows, name)) for name in SCORE_NAMES}
    picks["last"] = len(rows) - 1
    record["choices"] = {k: None if i is None else rows[i]["iteration"] for k, i in picks.items()}
    record["chosen"] = record["choices"][score]
    if not labels:
        return
    targets = [row["target_miou"] for row in rows]
    record["spearman"] = {name: spearman(_column(rows, name), targets) for name in SCORE_NAMES}
    known = None not in targets
    record["regret"] = {
        rule: regret(targets, pick) if known and pick is not None else None
        for rule, pick in picks.items()
    }
    record["regret"]["random"] = max(targets) - sum(targets) / len(targets) if known else None


def _candidates(record: dict[str, Any], last_only: bool) -> list[dict[str, Any]]:
    """The checkpoints of a run a rule may choose from: all, or with `last_only` the last."""
    return record["checkpoints"][-1:] if last_only else record["checkpoints"]


def across_runs(
    records: Sequence[dict[str, Any]], score: str, last_only: bool = False
) -> dict[str, Any] | None:
    """The checkpoint of all runs with the highest `score` (runs without it left out), or with
    `last_only` the run whose last checkpoint has it: which run to keep when each run's last
    checkpoint is taken, the rule issue 26's study recommends (docs/results.md)."""
    candidates = [
        (row["scores"][score], record["run"], row)
        for record in records
        for row in _candidates(record, last_only)
        if row["scores"][score] is not None
    ]
    if not candidates:
        return None
    value, run, row = max(candidates, key=lambda c: c[0])
    return {
        "run": run,
        "iteration": row["iteration"],
        "checkpoint": row["checkpoint"],
        "score": score,
        "value": value,
    }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _group_regret(
    records: Sequence[dict[str, Any]], rule: str, last_only: bool = False
) -> float | None:
    """The best target mIoU of all `records`' checkpoints minus that of the checkpoint `rule`
    chooses among them, or with `last_only` among each run's last checkpoint (`random`: minus
    the mean of those); None when a value is missing."""
    rows = [row for record in records for row in record["checkpoints"]]
    candidates = [row for record in records for row in _candidates(record, last_only)]
    targets = [row["target_miou"] for row in rows]
    if not rows or None in targets:
        return None
    best = max(targets)
    if rule == "random":
        return best - sum(row["target_miou"] for row in candidates) / len(candidates)
    pick = choose(_column(candidates, rule))
    return None if pick is None else best - candidates[pick]["target_miou"]


def table_groups(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs grouped by their parent folder, those of two runs or more: a suite keeps one
    table's methods for one seed in OUT/seedS/ROW, so a group is what a table reports."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(str(Path(record["run"]).parent), []).append(record)
    return {name: group for name, group in groups.items() if len(group) > 1}


def study(records: Sequence[dict[str, Any]], tolerance: float = 0.5) -> dict[str, Any]:
    """Each rule judged over labelled runs: within runs, the mean and largest regret, the share
    of runs whose regret is at most `tolerance` mIoU and the mean Spearman correlation; across
    runs, the regret of the checkpoint the score chooses among all of them, and per table
    (`table_groups`: which method and checkpoint a table would report) its mean and largest
    regret, also when the rule may only choose among the runs' last checkpoints (which run to
    keep when each run's last one is taken; `random`: the best minus the mean)."""
    within: dict[str, Any] = {}
    for rule in [*SCORE_NAMES, *BASELINE_RULES]:
        lost = [r["regret"][rule] for r in records if r["regret"].get(rule) is not None]
        rho = [r["spearman"][rule] for r in records if r["spearman"].get(rule) is not None]
        within[rule] = {
            "runs": len(lost),
            "mean_regret": _mean(lost),
            "max_regret": max(lost) if lost else None,
            f"share_within_{tolerance}": _mean([float(x <= tolerance) for x in lost]),
            "mean_spearman": _mean(rho),
        }
    rules = [*SCORE_NAMES, "random"]
    groups = table_groups(records)

    def per_table(last_only: bool) -> dict[str, Any]:
        judged: dict[str, Any] = {}
        for rule in rules:
            lost = [
                x for g in groups.values() if (x := _group_regret(g, rule, last_only)) is not None
            ]
            judged[rule] = {
                "tables": len(lost),
                "mean_regret": _mean(lost),
                "max_regret": max(lost) if lost else None,
            }
        return judged

    return {
        "tolerance": tolerance,
        "within_runs": within,
        "across_runs_regret": {rule: _group_regret(records, rule) for rule in rules},
        "tables": sorted(groups),
        "across_tables": per_table(last_only=False),
        "across_tables_last": per_table(last_only=True),
    }


SETTINGS = {
    "snd_pixels": SND_PIXELS,
    "snd_tau": SND_TAU,
    "photometric": PHOTOMETRIC,
    "heldout_seed_offset": HELDOUT_SEED_OFFSET,
    "heldout_images": HELDOUT_IMAGES,
}
"""What every score was computed with: files scored otherwise are not pooled (`read_scored`)."""


def select(
    runs: Sequence[str | Path],
    images: int = DEFAULT_IMAGES,
    heldout_root: str | None = None,
    labels: bool = False,
    score: str = DEFAULT_SCORE,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`apoda select`: every checkpoint of every run scored, each run's choices, the choice
    across runs and, with `labels`, the rank correlations and regrets. Every folder is checked
    before any scoring."""
    check_score(score)
    folders = [Path(run) for run in runs]
    checkpoints = [run_checkpoints(folder) for folder in folders]
    with torch.random.fork_rng(devices=[]):  # building networks and loaders draws from it
        records = [
            score_run(folder, found, images, heldout_root, labels)
            for folder, found in zip(folders, checkpoints, strict=True)
        ]
    skipped = [r["run"] for r in records if r["heldout_source"] is None]
    if skipped:
        log(
            f"heldout_source_miou: skipped for {', '.join(skipped)} (a source other than "
            "MiniCity: --heldout-root DIR gives labelled source images in its format)"
        )
    return summarise(records, score, labels, images)


def summarise(
    records: list[dict[str, Any]], score: str, labels: bool, images: int
) -> dict[str, Any]:
    """Scored runs (`score_run`'s records) with what each rule chooses and, with `labels`, how
    well: the result `apoda select` prints and writes."""
    for record in records:
        summarise_run(record, score, labels)
    result: dict[str, Any] = {
        "score": score,
        "default_score": DEFAULT_SCORE,
        "scores": list(SCORE_NAMES),
        "images": images,
        "labels": labels,
        "settings": SETTINGS,
        "runs": records,
    }
    if len(records) > 1:
        result["across_runs"] = across_runs(records, score)
        result["across_last"] = across_runs(records, score, last_only=True)
    if labels:
        rows = [row for record in records for row in record["checkpoints"]]
        targets = [row["target_miou"] for row in rows]
        result["spearman_all"] = {n: spearman(_column(rows, n), targets) for n in SCORE_NAMES}
        result["study"] = study(records)
    return result


def read_scored(files: Sequence[str | Path], labels: bool) -> tuple[list[dict[str, Any]], int]:
    """The scored runs of earlier `apoda select` JSON files, pooled to be judged again without
    scoring (`apoda select --scored`), and the target images they were scored on. Files scored
    with other settings, other scores, or (for `labels`) without labels are refused."""
    records: list[dict[str, Any]] = []
    images: set[int] = set()
    for name in files:
        path = Path(name)
        try:
            result = json.loads(path.read_text())
            found, scored = result["runs"], (result["scores"], result["settings"])
            images.add(int(result["images"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ApodaError(
                f"--scored {path}: expected the JSON that apoda select writes ({error})"
            ) from None
        if scored != (list(SCORE_NAMES), SETTINGS):
            raise ApodaError(
                f"--scored {path}: scored with other scores or settings than these "
                f"({', '.join(SCORE_NAMES)}; {SETTINGS}); score its runs again"
            )
        if labels and not result.get("labels"):
            raise ApodaError(f"--scored {path}: scored without --labels, so it has no target mIoU")
        records += found
    if len(images) > 1:
        raise ApodaError(
            f"--scored: the files were scored on different numbers of target images "
            f"({sorted(images)}); pool only files scored alike"
        )
    runs = [record["run"] for record in records]
    twice = sorted({run for run in runs if runs.count(run) > 1})
    if twice:
        raise ApodaError(f"--scored: runs scored in more than one file: {', '.join(twice)}")
    return records, images.pop()


# -- the printed tables -------------------------------------------------------------------------
def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> Iterator[str]:
    yield "| " + " | ".join(header) + " |"
    yield "|---" + "|---:" * (len(header) - 1) + "|"
    for row in rows:
        yield "| " + " | ".join(row) + " |"


def format_run(record: dict[str, Any], score: str, labels: bool) -> str:
    """A run's table (a row per checkpoint, the one `score` chooses marked *) and what each
    rule chooses (with `labels`: its target mIoU, regret and Spearman correlation)."""
    rows = record["checkpoints"]
    header = ["iteration", *SCORE_NAMES, *(["target mIoU", "target tail mIoU"] if labels else [])]
    cells = [
        [
            f"{row['iteration']}{' *' if row['iteration'] == record['chosen'] else ''}",
            *(_number(row["scores"][name]) for name in SCORE_NAMES),
            *([_number(row["target_miou"]), _number(row["target_tail_miou"])] if labels else []),
        ]
        for row in rows
    ]
    title = (
        f"{record['run']}: {len(rows)} checkpoints, target scores on {record['target_images']} "
        f"images (higher is better); * chosen by {score}"
    )
    return "\n".join([title, "", *_table(header, cells), "", *_rules_table(record, score, labels)])


def _rules_table(record: dict[str, Any], score: str, labels: bool) -> Iterator[str]:
    """What each rule chooses; with `labels`, how that choice fares on the target (`random`:
    the mean over checkpoints)."""
    rows = record["checkpoints"]
    targets = {row["iteration"]: row.get("target_miou") for row in rows}
    known = [value for value in targets.values() if value is not None]
    mean = sum(known) / len(known) if len(known) == len(rows) else None  # what `random` expects
    header = ["rule", "chooses", *(["target mIoU", "regret", "Spearman"] if labels else [])]
    cells = []
    for rule in [*SCORE_NAMES, *BASELINE_RULES] if labels else [*SCORE_NAMES, "last"]:
        pick = record["choices"].get(rule)
        cell = [f"{rule} (--score)" if rule == score else rule, "-" if pick is None else str(pick)]
        if labels:
            target = mean if rule == "random" else targets.get(pick)
            lost, rho = record["regret"][rule], record["spearman"].get(rule)
            cell += [_number(target), _number(lost), _number(rho)]
        cells.append(cell)
    return _table(header, cells)


def _across_lines(result: dict[str, Any]) -> str:
    """Which checkpoint of all runs the score chooses, and which run among their last ones."""
    score, lines = result["score"], []
    for key, where in (
        ("across_runs", "across the runs"),
        ("across_last", "among the runs' last checkpoints"),
    ):
        best = result[key]
        lines.append(
            f"{where}, {score} chooses none (no run has it)"
            if best is None
            else f"{where}, {score} chooses {best['run']} iteration {best['iteration']} "
            f"({score} {_number(best['value'])})"
        )
    return "\n".join(lines)


def format_selection(result: dict[str, Any]) -> str:
    """Every run's tables, the choice across runs, and the correlations over all runs."""
    score, labels = result["score"], result["labels"]
    parts = [format_run(record, score, labels) for record in result["runs"]]
    if len(result["runs"]) > 1:
        parts.append(_across_lines(result))
    if labels:
        total = sum(len(r["checkpoints"]) for r in result["runs"])
        spearman_all = result["spearman_all"]
        rows = [[name, _number(spearman_all[name])] for name in SCORE_NAMES]
        parts.append("\n".join(_table(["score", f"Spearman over all {total} checkpoints"], rows)))
        parts.append(_study_table(result["study"], len(result["runs"])))
    return "\n\n".join(parts)


def _study_table(summary: dict[str, Any], runs: int) -> str:
    """`study`'s numbers: a row per rule."""
    tolerance, tables = summary["tolerance"], len(summary["tables"])
    header = ["rule", "mean regret", "largest regret", f"runs within {tolerance}",
              "mean Spearman", f"regret across the {runs} runs",
              f"mean regret per table ({tables})", "largest per table",
              "per table, last checkpoints"]  # fmt: skip
    cells = []
    for rule, judged in summary["within_runs"].items():
        per_table = summary["across_tables"].get(rule, {})
        last = summary["across_tables_last"].get(rule, {})
        cells.append(
            [
                rule,
                _number(judged["mean_regret"]),
                _number(judged["max_regret"]),
                _number(judged[f"share_within_{tolerance}"]),
                _number(judged["mean_spearman"]),
                _number(summary["across_runs_regret"].get(rule)),
                _number(per_table.get("mean_regret")),
                _number(per_table.get("max_regret")),
                _number(last.get("mean_regret")),
            ]
        )
    title = (
        f"Over {runs} runs (regret in mIoU points; within a run, across all runs, and across "
        "the runs of each table: the runs of one folder, a suite's methods for one seed)"
    )
    return "\n".join([title, "", *_table(header, cells)])


def write_selection(result: dict[str, Any], path: Path) -> None:
    """The selection's every number as JSON."""
    path.write_text(json.dumps(result, indent=1))
