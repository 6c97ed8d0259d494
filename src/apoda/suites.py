"""`apoda suite`: the paper's tables as runs with matched controls, over seeds.

Every row of a suite starts from the same step-1 (source-only) checkpoint of its seed and trains
for the same number of iterations, so that a difference between rows is the one ingredient that
the rows switch, not extra training: "source only (matched)" continues step 1 for as long as the
adapted rows train. Rows marked `ours` go beyond the paper and are labelled so in every table.
A finished row is not trained again (suites resume), provided it was trained with the config
the suite asks for now (`apoda.runs.finished_metrics`). A row whose config is another row's
trains no run of its own: it shares that row's (`shared_runs`), and its table says so.
`apoda suite --jobs N` trains the rows in child processes: `apoda.suite_pool`."""

from __future__ import annotations

import csv
import datetime
import json
import math
import shlex
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apoda.config import Config, load_config
from apoda.configs import SUITE_FAMILIES as FAMILIES
from apoda.configs import resolve_config
from apoda.data.classes import THING_CLASS_NAMES
from apoda.engine.trainer import Trainer
from apoda.errors import ApodaError
from apoda.pretrain import resolve_pretrained
from apoda.runs import (
    LAST_CHECKPOINT,
    LOG_FILE,
    finished_metrics,
    read_log,
    refuse_run_folder,
    result_differences,
)


@dataclass(frozen=True)
class Row:
    """One row of a suite: a built-in config (within the data family) and its overrides."""

    key: str
    label: str
    config: str
    overrides: tuple[str, ...] = ()
    init: str | None = "step1"
    ours: bool = False
    needs_pretrained: bool = False
    """A row that only an ImageNet-pretrained G can train (the feature distance): left out of
    the tables of a family whose G trains from scratch (`rows_for_family`)."""
    control: str | None = None
    """The row it is compared with seed by seed in the table of paired differences: the same
    start and schedule with this row's one ingredient off."""
    extra_iterations: int = 0
    """Iterations added to its config's own length (the oracle: step 1's, which its config is,
    then the self-training budget), before the suite's own overrides (`--fast`'s length wins)."""


GAP_ROWS = ("step1", "oracle")
"""A suite with both rows reports each row's share of the gap between them (source only to
the same network trained on target labels)."""


STEP1 = Row("step1", "source only (step 1)", "source_only", init=None)
MATCHED = Row("source_only", "source only (matched)", "source_only_continue", control="step1")
APODA = Row("apoda", "APODA", "apoda", control="apoda_none")
APODA_OFF = Row(
    "apoda_none", "APODA, attack off", "apoda", ("method.attack.name=none",), control="source_only"
)
ASN = Row("asn", "ASN", "asn", control="source_only")
ADVENT = Row("advent", "AdvEnt", "advent", control="source_only")

BN_CONTROLS = (
    Row(
        "asn_bn_train",
        "ASN with G's batch norm in train mode (target statistics leak in)",
        "asn",
        ("model.bn_mode=train",),
        ours=True,
        control="asn",
    ),
    Row(
        "adabn",
        "source only + BN statistics re-estimated on target (AdaBN)",
        "adabn",
        ours=True,
        control="source_only",
    ),
    Row("apoda_adabn", "APODA from AdaBN", "apoda", init="adabn", ours=True, control="adabn"),
)
"""Controls for batch norm on a backbone that trains it: how much of a gain is only G's BN
statistics moving to the target domain (docs/results.md, 'batch norm')."""


def _cut_rows(cut: str) -> tuple[Row, Row]:
    """Table 4's row that perturbs at `cut`, and the same row with the attack off (ours).

    Below layer4, F holds backbone stages that train with D and the target terms: the row's
    gain over the matched control is the perturbation's only against its attack-off twin. Their
    batch norm stays frozen, as in the paper's ResNet-101, or F's train-mode BN would re-estimate
    on target (AdaBN)."""
    overrides = (f"model.cut={cut}", "model.bn_mode=frozen")
    return (
        Row(f"cut_{cut}", f"perturb at {cut}", "apoda", overrides, control=f"cut_{cut}_none"),
        Row(
            f"cut_{cut}_none",
            f"perturb at {cut}, attack off",
            "apoda",
            (*overrides, "method.attack.name=none"),
            ours=True,
            control="source_only",
        ),
    )


SELF_TRAINING_ITERATIONS = 1500
"""The self-training rows' budget, set by the label-free rule (docs/results.md, 'second pass'):
the evaluation at which DACS's teacher's pseudo-label agreement with the previous evaluation's
stopped changing (by < 0.005) on seed 0."""
SELF_TRAINING_SCHEDULE = (
    f"train.iterations={SELF_TRAINING_ITERATIONS}",
    "train.eval_every=250",
    "train.checkpoint_every=250",
)
SELF_TRAINING_CONTROL = Row(
    "source_only_long",
    f"source only (matched to DACS: {SELF_TRAINING_ITERATIONS:,} iterations)",
    "source_only_continue",
    SELF_TRAINING_SCHEDULE,
    control="step1",
)
"""The matched control of the self-training rows: step 1 continued for DACS's budget."""
STEP1_PHOTOMETRIC = Row(
    "step1_photometric",
    "source only (step 1) + photometric augmentation",
    "source_only",
    ("data.photometric=true",),
    init=None,
    ours=True,
    control="step1",
)
ORACLE = Row(
    "oracle",
    "oracle: target labels, step 1's iterations + "
    f"{SELF_TRAINING_ITERATIONS:,} (the longest row's budget)",
    "source_only",
    (
        "data.source=minicity_target",
        "train.eval_every=250",
        "train.checkpoint_every=250",
    ),
    init=None,
    extra_iterations=SELF_TRAINING_ITERATIONS,
)
"""The same network trained on the target's labelled training images from scratch, for as long
as step 1 and a self-training row together."""

SELF_TRAINING: tuple[Row, ...] = (
    STEP1,
    SELF_TRAINING_CONTROL,
    Row("dacs", "DACS", "dacs", SELF_TRAINING_SCHEDULE, control="source_only_long"),
    Row(
        "dacs_rcs",
        "DACS + rare-class sampling",
        "dacs",
        (*SELF_TRAINING_SCHEDULE, "data.rare_class_sampling=true"),
        control="dacs",
    ),
    Row(
        "dacs_rcs_fd",
        "DACS + rare-class sampling + ImageNet feature distance",
        "dacs",
        (
            *SELF_TRAINING_SCHEDULE,
            "data.rare_class_sampling=true",
            "method.imnet_feature_dist_lambda=0.005",  # DAFormer's weight and classes
            f"method.imnet_feature_dist_classes=[{', '.join(THING_CLASS_NAMES)}]",
        ),
        needs_pretrained=True,
        control="dacs_rcs",
    ),
    Row(
        "dacs_perturb",
        "DACS + APODA's perturbation (pre-registered)",
        "dacs",  # = minicity/dacs_perturb: method.attack's defaults are APODA's attack
        (*SELF_TRAINING_SCHEDULE, "method.perturbation_lambda=1.0"),
        ours=True,
        control="dacs",
    ),
    MATCHED,
    APODA_OFF,
    APODA,
    ASN,
    ADVENT,
    BN_CONTROLS[1],
    Row(
        "step1_rcs",
        "source only (step 1) + rare-class sampling",
        "source_only",
        ("data.rare_class_sampling=true",),
        init=None,
        control="step1",
    ),
    Row(
        "apoda_rcs",
        "APODA from the rare-class-sampling step 1",
        "apoda",
        init="step1_rcs",
        control="apoda",
    ),
    STEP1_PHOTOMETRIC,
    Row(
        "photometric_long",
        f"photometric step 1 continued (matched: {SELF_TRAINING_ITERATIONS:,} iterations)",
        "source_only_continue",
        SELF_TRAINING_SCHEDULE,
        init="step1_photometric",
        ours=True,
        control="source_only_long",
    ),
    Row(
        "dacs_photometric",
        "DACS from the photometric step 1",
        "dacs",
        SELF_TRAINING_SCHEDULE,
        init="step1_photometric",
        ours=True,
        control="photometric_long",
    ),
    ORACLE,
)
"""Issue 25's table: the field's self-training family beside everything already there."""

SUITES: dict[str, tuple[Row, ...]] = {
    "table1": (
        STEP1,
        MATCHED,
        ASN,
        ADVENT,
        Row("asn_wce", "ASN + weighted CE", "asn", ("method.seg_loss=wce",), control="asn"),
        Row("asn_lovasz", "ASN + Lovász", "asn", ("method.seg_loss=lovasz",), control="asn"),
        APODA_OFF,
        APODA,
        *BN_CONTROLS,
    ),
    "table3": (
        STEP1,
        MATCHED,
        APODA_OFF,
        Row("i_fgsm", "I-FGSM", "apoda", ("method.attack.name=i_fgsm",), control="apoda_none"),
        Row("fgspm", "FGSPM", "apoda", ("method.attack.name=fgspm",), control="apoda_none"),
        Row(
            "mi_fgspm", "MI-FGSPM", "apoda", ("method.attack.name=mi_fgspm",), control="apoda_none"
        ),
        APODA,
        Row(
            "i_fgspm_relative",
            "I-FGSPM, eps relative to feature std",
            "apoda",
            ("method.attack.eps_mode=relative",),
            ours=True,
            control="apoda_none",
        ),
    ),
    "table4": (
        STEP1,
        MATCHED,
        *(row for cut in ("pixel", "layer1", "layer2", "layer3") for row in _cut_rows(cut)),
        # layer4 is table 1's APODA and its attack-off control, the same runs
        replace(APODA, label="perturb at layer4 (paper: APODA)"),
        replace(APODA_OFF, label="perturb at layer4, attack off"),
    ),
    "table5": (
        STEP1,
        MATCHED,
        Row(
            "s_lovasz",
            "S + Lovász",
            "source_only_continue",
            ("method.seg_loss=ce+lovasz",),
            control="source_only",
        ),
        Row(
            "s_ent",
            "S + entropy",
            "source_only_continue",
            ("method.lambda_ent=0.001",),
            control="source_only",
        ),
        Row(
            "s_lovasz_ent",
            "S + Lovász + entropy",
            "source_only_continue",
            ("method.seg_loss=ce+lovasz", "method.lambda_ent=0.001"),
            control="s_lovasz",
        ),
        Row(
            "s_pert",
            "S + perturbation",
            "apoda",
            ("method.seg_loss=ce", "method.alpha_ent=0", "method.alpha_ent_adv=0"),
            control="source_only",
        ),
        Row(
            "s_pert_lovasz",
            "S + perturbation + Lovász",
            "apoda",
            ("method.seg_loss=lovasz", "method.alpha_ent=0", "method.alpha_ent_adv=0"),
            control="s_pert",
        ),
        Row(
            "s_pert_ent",
            "S + perturbation + entropy (CE as L_seg in Eq. 9)",
            "apoda",
            ("method.seg_loss=ce",),
            ours=True,
            control="s_pert",
        ),
        Row(
            "s_pert_lovasz_ent",
            "S + perturbation + Lovász + entropy",
            "apoda",
            ("method.seg_loss=lovasz",),
            control="s_pert_lovasz",
        ),
        ASN,
        Row(
            "asn_lovasz_ent",
            "ASN + Lovász + entropy",
            "asn",
            ("method.seg_loss=ce+lovasz", "method.lambda_ent=0.001"),
            control="asn",
        ),
        Row("asn_pert", "ASN + perturbation (APODA from ASN)", "apoda", init="asn", control="asn"),
    ),
    "selftraining": SELF_TRAINING,
}


@dataclass
class SuiteResult:
    """Per row and seed, the metrics of the run, and for a method with a mean teacher its
    pseudo-label probe at every evaluation (`apoda.engine.pseudo_probe`)."""

    name: str
    rows: tuple[Row, ...]
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    probes: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)


def _run_dir(out: Path, row: Row, seed: int) -> Path:
    """The folder of a row's run for one seed: OUT/seedS/KEY."""
    return out / f"seed{seed}" / row.key


def row_config(
    row: Row,
    family: str,
    out: Path,
    seed: int,
    extra: Sequence[str] = (),
    runs_of: Mapping[str, Row] | None = None,
) -> Config:
    """The config a row trains with: its built-in file, the seed, its overrides, the suite's
    extra overrides, and its init row's checkpoint (in the folder of the run that row shares,
    `runs_of`, see `shared_runs`)."""
    overrides = [f"train.seed={seed}", f"name={row.key}-seed{seed}", *row.overrides]
    if row.extra_iterations:
        own = load_config(resolve_config(f"{family}/{row.config}"), overrides).train.iterations
        overrides.append(f"train.iterations={own + row.extra_iterations}")
    overrides += extra
    if row.init is not None:
        start = (runs_of or {}).get(row.init, Row(row.init, "", ""))
        init = _run_dir(out, start, seed) / LAST_CHECKPOINT
        overrides.append(f"model.init_from={init}")
    return load_config(resolve_config(f"{family}/{row.config}"), overrides)


def shared_runs(rows: Sequence[Row], family: str, extra: Sequence[str] = ()) -> dict[str, Row]:
    """Row key -> the row whose run it is: the first row (of every suite, tables 1 to 5 in
    order, then `rows`) that starts from the same run and trains the same config (keys that do
    not change results aside). On MiniCity "S + perturbation + entropy" is APODA's own config
    (its L_seg is CE), on GTA5 "S + perturbation + Lovász + entropy" is: one run serves both."""
    candidates: dict[str, Row] = {}
    for row in (r for suite in SUITES.values() for r in suite):
        candidates.setdefault(row.key, row)
    candidates.update((row.key, row) for row in rows)  # the rows asked for, as given
    runs_of: dict[str, Row] = {}
    configs: dict[str, Config] = {}
    asked = {row.key for row in rows}
    for row in training_order(list(candidates.values())):
        if row.init is not None and row.init not in runs_of:
            continue  # its start was left out below
        try:
            config = row_config(row, family, Path(), 0, extra, runs_of)
        except ApodaError:
            if row.key in asked:
                raise
            continue  # another suite's row that the extra overrides do not fit
        runs_of[row.key] = next(
            (
                candidates[key]
                for key, other in configs.items()
                if start_key(candidates[key], runs_of) == start_key(row, runs_of)
                and not result_differences(other, config)
            ),
            row,
        )
        if runs_of[row.key] is row:
            configs[row.key] = config
    return runs_of


def start_key(row: Row, runs_of: Mapping[str, Row]) -> str | None:
    """The key of the run a row starts from (its init row's shared run), None for step 1."""
    return None if row.init is None else runs_of[row.init].key


def _train_row(
    row: Row, family: str, out: Path, seed: int, extra: Sequence[str], runs_of: Mapping[str, Row]
) -> dict[str, Any]:
    """Train one row for one seed, or return its metrics if it finished with this config."""
    run_dir = _run_dir(out, row, seed)
    config = row_config(row, family, out, seed, extra, runs_of)
    metrics = finished_metrics(run_dir, config)
    if metrics is not None:
        print(f"[{row.key} seed {seed}] finished before; not trained again")
        return metrics
    print(f"[{row.key} seed {seed}] training {config.method.name} -> {run_dir}")
    trainer = Trainer(
        config, run_dir, resume=run_dir.is_dir(), pretrained_file=resolve_pretrained(config)
    )
    return trainer.fit()


def _probe_records(run_dir: Path) -> list[dict[str, Any]]:
    """A run's pseudo-label probe at each evaluation, with the evaluation's iteration and
    mIoU; none for a run without a teacher."""
    log = run_dir / LOG_FILE
    records = read_log(log) if log.is_file() else []
    return [
        {"iteration": r["iteration"], "miou": r.get("miou"), **r["pseudo_labels"]}
        for r in records
        if r.get("kind") == "eval" and "pseudo_labels" in r
    ]


def select_rows(rows: Sequence[Row], keys: Sequence[str]) -> tuple[Row, ...]:
    """The rows named by `keys` and the rows they start from (in the suite's order): a part of
    a table, run with the same matched start as the whole. No keys: every row."""
    if not keys:
        return tuple(rows)
    by_key = {r.key: r for r in rows}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise ApodaError(
            f"--rows {','.join(unknown)}: not rows of this suite; its rows: {', '.join(by_key)}"
        )
    wanted: set[str] = set()
    pending = list(keys)
    while pending:
        key = pending.pop()
        if key not in wanted:
            wanted.add(key)
            init = by_key[key].init
            if init is not None:
                pending.append(init)
    return tuple(r for r in rows if r.key in wanted)


def training_order(rows: Sequence[Row]) -> list[Row]:
    """Rows whose init row comes first (step 1, then ASN before APODA-from-ASN)."""
    done: set[str] = set()
    ordered: list[Row] = []
    pending = list(rows)
    while pending:
        ready = [r for r in pending if r.init is None or r.init in done]
        if not ready:
            raise ApodaError(f"suite rows wait on rows that are not in the suite: {pending}")
        for r in ready:
            ordered.append(r)
            done.add(r.key)
            pending.remove(r)
    return ordered


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std of the finite values (std 0 for one value; None for none)."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return None, None
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _cell(mean: float | None, std: float | None, seeds: int) -> str:
    """A table cell: mean ± std over several seeds, the mean alone for one, '-' for none."""
    if mean is None:
        return "-"
    return f"{mean:.1f} ± {std:.1f}" if seeds > 1 else f"{mean:.1f}"


def _paired(runs: list[dict[str, Any]], controls: list[dict[str, Any]]) -> dict[str, Any]:
    """Per seed, a row's mIoU and tail mean minus its control's, and their means."""
    paired: dict[str, Any] = {}
    for key in ("miou", "tail_miou"):
        diffs = [
            None if a.get(key) is None or b.get(key) is None else a[key] - b[key]
            for a, b in zip(runs, controls, strict=True)
        ]
        paired[key] = diffs
        paired[f"{key}_mean"] = _mean_std(diffs)[0]
    return paired


def summarise(result: SuiteResult) -> dict[str, Any]:
    """Mean and std over seeds of every class IoU, mIoU, head and tail mean, per row; each
    row's differences to its control paired by seed, and its share of the step-1-to-oracle
    gap where the suite has both (`GAP_ROWS`)."""
    first = next(iter(result.metrics.values()))[0]
    classes = first["class_names"]
    summary: dict[str, Any] = {}
    for row in result.rows:
        runs = result.metrics[row.key]
        entry: dict[str, Any] = {"label": row.label, "ours": row.ours, "seeds": len(runs)}
        for key in ("miou", "head_miou", "tail_miou"):
            entry[key] = _mean_std([m.get(key) for m in runs])
        entry["per_class"] = {c: _mean_std([m["per_class"].get(c) for m in runs]) for c in classes}
        controls = result.metrics.get(row.control or "")
        if controls is not None and len(controls) == len(runs):
            entry["paired"] = {"control": row.control, **_paired(runs, controls)}
        summary[row.key] = entry
    low, high = (summary.get(k, {}).get("miou", (None,))[0] for k in GAP_ROWS)
    gap = None
    if low is not None and high is not None and high != low:
        gap = {"from": GAP_ROWS[0], "to": GAP_ROWS[1], "from_miou": low, "to_miou": high}
        for entry in summary.values():
            entry["gap_closed"] = (entry["miou"][0] - low) / (high - low)
    return {
        "class_names": classes,
        "tail_classes": first["tail_classes"],
        "gap": gap,
        "rows": summary,
    }


def _signed(values: list[float | None], digits: int) -> str:
    return ", ".join("-" if v is None else f"{v:+.{digits}f}" for v in values)


def _paired_table(summary: dict[str, Any]) -> list[str]:
    """The table of paired differences: every row with a control in the suite."""
    rows = summary["rows"]
    paired = [(key, e) for key, e in rows.items() if "paired" in e]
    if not paired:
        return []
    lines = [
        "",
        "Paired by seed: each row minus its control (the same start and schedule, the row's one "
        "ingredient off), in mIoU and tail-mean points.",
        "",
        "| row | control | mIoU, per seed | mean | tail, per seed | mean |",
        "|---|---|---|---:|---|---:|",
    ]
    for _, entry in paired:
        p = entry["paired"]
        tail_mean = "-" if p["tail_miou_mean"] is None else f"{p['tail_miou_mean']:+.2f}"
        lines.append(
            f"| {entry['label']} | {rows[p['control']]['label']} | {_signed(p['miou'], 2)} "
            f"| {p['miou_mean']:+.2f} | {_signed(p['tail_miou'], 1)} | {tail_mean} |"
        )
    return lines


def _mean_of(values: list[float | None]) -> str:
    return "-" if (m := _mean_std(values)[0]) is None else f"{m:.2f}"


def _probe_table(result: SuiteResult, tail: list[str]) -> list[str]:
    """The pseudo-label probe at each run's last evaluation, mean over seeds: how right the
    teacher's pseudo-labels are, how many pass the threshold, and its recall of tail classes."""
    last = {
        row.key: [seed[-1] for seed in result.probes[row.key]]
        for row in result.rows
        if row.key in result.probes
    }
    if not last:
        return []
    lines = [
        "",
        "The teacher's pseudo-labels on the probe images at the last evaluation (mean over seeds; "
        "`settled at`: the label-free budget rule's iteration, per seed; recall per tail class).",
        "",
        "| row | accuracy | above threshold | settled at | " + " | ".join(tail) + " |",
        "|---|---:|---:|---|" + "---:|" * len(tail),
    ]
    labels = {row.key: row.label for row in result.rows}
    for key, records in last.items():
        recall = [
            _mean_of([r.get("per_class", {}).get(c, {}).get("recall") for r in records])
            for c in tail
        ]
        settled = ", ".join(str(r.get("settled_at") or "-") for r in records)
        cells = [
            _mean_of([r.get("accuracy") for r in records]),
            _mean_of([r.get("confident_share") for r in records]),
            settled,
            *recall,
        ]
        lines.append(f"| {labels[key]} | " + " | ".join(cells) + " |")
    return lines


def write_tables(result: SuiteResult, out: Path, argv: Sequence[str]) -> Path:
    """table.md, table.csv and suite.json for a finished suite."""
    summary = summarise(result)
    classes, tail = summary["class_names"], set(summary["tail_classes"])
    seeds = max(e["seeds"] for e in summary["rows"].values())
    gap = summary["gap"]
    header = ["method", *[f"**{c}**" if c in tail else c for c in classes], "mIoU", "head", "tail"]
    header += ["gap closed"] if gap else []
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(argv)
    lines = [
        f"# {result.name} ({seeds} seed{'s' if seeds > 1 else ''}: mean ± std of target-val IoU %)",
        "",
        f"Command: `{command}`  ",
        f"Date: {date}. Tail classes (< 1 % of source pixels) in **bold**. Rows marked "
        "(ours) go beyond the paper."
        + (
            f" Gap closed: the share of the distance in mean mIoU from row `{gap['from']}` "
            f"({gap['from_miou']:.1f}) to row `{gap['to']}` ({gap['to_miou']:.1f})."
            if gap
            else ""
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|---" + "|---:" * (len(header) - 1) + "|",
    ]
    csv_rows = [["method", "ours", *classes, "mIoU", "head", "tail", "seeds"]]
    for key, entry in summary["rows"].items():
        label = entry["label"] + (" (ours)" if entry["ours"] else "")
        cells = [_cell(*entry["per_class"][c], seeds) for c in classes]
        cells += [_cell(*entry[k], seeds) for k in ("miou", "head_miou", "tail_miou")]
        cells += [f"{100 * entry['gap_closed']:.0f} %"] if gap else []
        lines.append("| " + " | ".join([label, *cells]) + " |")
        means = [entry["per_class"][c][0] for c in classes] + [
            entry[k][0] for k in ("miou", "head_miou", "tail_miou")
        ]
        csv_rows.append(
            [
                key,
                str(entry["ours"]),
                *["" if m is None else f"{m:.2f}" for m in means],
                str(entry["seeds"]),
            ]
        )
    lines += _paired_table(summary)
    lines += _probe_table(result, summary["tail_classes"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    with open(out / "table.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(csv_rows)
    payload = {
        "suite": result.name,
        "command": command,
        "date": date,
        "summary": summary,
        "runs": result.metrics,
        "probe": result.probes,
    }
    (out / "suite.json").write_text(json.dumps(payload, indent=1))
    return out / "table.md"


def run_suite(
    name: str,
    out: Path,
    seeds: int = 1,
    data: str = "minicity",
    fast: bool = False,
    overrides: Sequence[str] = (),
    argv: Sequence[str] = (),
    rows: Sequence[Row] | None = None,
    runs: Path | None = None,
    only_seed: int | None = None,
    row_keys: Sequence[str] = (),
) -> SuiteResult | None:
    """Train (or reuse) every row for every seed, then write the tables.

    `runs` is where the rows' run folders live (default `out`): suites that share it share
    their common rows (step 1, the matched control, APODA). `only_seed` trains that seed's rows
    and writes no table (for launching seeds in parallel processes). `row_keys` keeps only
    those rows (and the rows they start from)."""
    family = config_family(data)
    extra = suite_overrides(fast, overrides)
    if rows is None:
        rows = suite_rows(name, row_keys, family, extra)
    else:
        rows = rows_for_family(select_rows(rows, row_keys), family, extra, row_keys)
    if seeds < 1:
        raise ApodaError(f"--seeds must be at least 1, got {seeds}")
    refuse_run_folder(out, "a suite")
    runs_of = shared_runs(rows, family, extra)
    for row in rows:
        if runs_of[row.key] is not row:
            print(f"[{row.key}] the run of row {runs_of[row.key].key}: the same config")
    result = SuiteResult(name, tuple(_labelled(row, runs_of[row.key]) for row in rows))
    runs = runs or out
    for seed in range(seeds) if only_seed is None else [only_seed]:
        for row in training_order(rows):
            metrics = _train_row(runs_of[row.key], family, runs, seed, extra, runs_of)
            result.metrics.setdefault(row.key, []).append(metrics)
            probe = _probe_records(_run_dir(runs, runs_of[row.key], seed))
            if probe:
                result.probes.setdefault(row.key, []).append(probe)
    if only_seed is not None:
        return None
    table = write_tables(result, out, argv)
    print(table.read_text())
    return result


def _labelled(row: Row, run: Row) -> Row:
    """The row as its table shows it: one that shares another row's run says whose."""
    if run is row:
        return row
    return replace(row, label=f"{row.label} (the run of row `{run.key}`: same config)")


def suite_overrides(fast: bool, overrides: Sequence[str]) -> list[str]:
    """The overrides every row of a suite gets: --fast's short schedule first, then the user's."""
    if not fast:
        return list(overrides)
    from apoda.demo import FAST_OVERRIDES

    return [*FAST_OVERRIDES, "train.iterations=10", *overrides]


def config_family(data: str) -> str:
    """The config family of `--data NAME`; a one-line error for an unknown name."""
    if data not in FAMILIES:
        raise ApodaError(f"--data {data!r}: expected one of {', '.join(FAMILIES)}")
    return FAMILIES[data]


def suite_rows(
    name: str, row_keys: Sequence[str], family: str, extra: Sequence[str] = ()
) -> tuple[Row, ...]:
    """The rows of suite `name` that `family` can train (only `row_keys` and their starts, if
    given); an unknown suite or row: error."""
    if name not in SUITES:
        raise ApodaError(f"unknown suite {name!r}; expected one of {', '.join(SUITES)}")
    return rows_for_family(select_rows(SUITES[name], row_keys), family, extra, row_keys)


def rows_for_family(
    rows: Sequence[Row], family: str, extra: Sequence[str], asked: Sequence[str] = ()
) -> tuple[Row, ...]:
    """`rows` less those that need an ImageNet-pretrained G where the family's config (with the
    suite's overrides) has none, each left out with a line that says so; an error if `asked`
    (--rows) names one of them."""
    kept = []
    for row in rows:
        if row.needs_pretrained and not row_config(row, family, Path(), 0, extra).model.pretrained:
            why = (
                f"it needs an ImageNet-pretrained G (model.pretrained), which the {family} "
                "configs do not set (minicity_imagenet's do)"
            )
            if row.key in asked:
                raise ApodaError(f"--rows {row.key}: {why}")
            print(f"[{row.key}] left out: {why}")
        else:
            kept.append(row)
    return tuple(kept)
