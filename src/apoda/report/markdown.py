"""The Markdown report: a summary and per-class table of the runs, then every picture their
data allows, each with a line on how to read it (or why it is missing)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from apoda.errors import ApodaError
from apoda.report.domains import DomainStats, domain_stats
from apoda.report.plots import (
    GRAD_KEY,
    PICTURES,
    plot_class_distribution,
    plot_curves,
    plot_gradient_intensity,
    plot_per_class_iou,
    plot_pseudo_labels,
    plot_qualitative,
    pseudo_label_records,
)
from apoda.report.reading import Run, class_names_of, format_percent, tail_of, union
from apoda.runs import (
    LABEL_FREE_NOTE,
    ORACLE_NOTE,
    REPORT_FILE,
    SELECTION_LABEL_FREE,
    is_oracle_selection,
)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _summary_table(runs: Sequence[Run]) -> list[str]:
    subsets = union(
        (r.metrics.get("subsets") or {})
        for r in runs
        if r.metrics and isinstance(r.metrics.get("subsets"), Mapping)
    )
    header = ["run", "method", "evaluated on", "iteration", "mIoU", "head mIoU", "tail mIoU"]
    header += [*subsets, "selection"]
    rows = []
    for run in runs:
        m = run.metrics
        if m is None:
            rows.append(
                [run.name, run.method or "-", "no metrics.json", *["-"] * (4 + len(subsets) + 1)]
            )
            continue
        where = "/".join(str(m[k]) for k in ("dataset", "split") if m.get(k) is not None) or "-"
        iteration = m.get("iteration")
        subset = m.get("subsets") if isinstance(m.get("subsets"), Mapping) else {}
        rows.append(
            [
                run.name,
                run.method or "-",
                where,
                iteration if iteration is not None else "-",
                format_percent(m.get("miou")),
                format_percent(m.get("head_miou")),
                format_percent(m.get("tail_miou")),
                *(format_percent(subset.get(s)) if s in subset else "-" for s in subsets),
                m.get("selection") or "-",
            ]
        )
    return _table(header, rows)


def _per_class_table(runs: Sequence[Run]) -> list[str]:
    scored = [r for r in runs if r.metrics and isinstance(r.metrics.get("per_class"), Mapping)]
    if not scored:
        return ["_No run has per-class IoU (metrics.json with per_class)._"]
    names = union(class_names_of(r.metrics or {}) for r in scored)
    tail = set(union(tail_of(r.metrics) for r in scored))
    rows = []
    for name in names:
        row: list[Any] = [f"{name}*" if name in tail else name]
        for run in scored:
            per_class = (run.metrics or {})["per_class"]
            row.append(format_percent(per_class[name]) if name in per_class else "-")
        rows.append(row)
    lines = _table(["class", *(r.name for r in scored)], rows)
    lines += [
        "",
        "IoU in %; `*` = tail class; n/a = class absent from the evaluated images; "
        "- = class not in that run's scheme.",
    ]
    return lines


_HOW_TO_READ = {
    "class_distribution": "Each class's share of labelled pixels per domain, log scale, sorted "
    "by the source's share; red classes are the tail (the source's, the ones evaluation "
    "reports). The source is its training labels; the target is its labelled val split, the "
    "images evaluation scores (its training images are unlabelled). Bars that differ between "
    "domains show a shift in the class prior, which weights taken from source frequencies do "
    "not follow.",
    "per_class_iou": "IoU per class, one bar per run, its value printed above it; a triangle at "
    "the foot marks a bar under 1 (invisible on this scale). Red, starred, shaded classes are "
    "the tail, the classes that the paper finds global adversarial alignment neglects.",
    "qualitative": "Rows are fixed target-val images: the image, its ground truth, then each "
    "run's prediction, all in the dataset's class colours; the legend below names the colour "
    "of every class in the shown labels and predictions (black = ignore, not scored).",
    "gradient_intensity": "log10 of the mean |gradient| of each attack objective at each "
    "attack iteration k; objectives orders of magnitude apart mean one of them decides the sign "
    "of a summed I-FGSM step, which is what I-FGSPM's per-objective signs avoid.",
    "curves": "Training values (faint) with their moving average (solid), then target mIoU, "
    "head and tail mIoU at each evaluation, over total training iterations: a run that starts "
    "from another run's checkpoint (model.init_from) is drawn after that run, from a dotted line "
    "at the iteration it took over, so stages read left to right; compare runs panel by panel.",
    "pseudo_labels": "At each evaluation the teacher labels the same target training images. "
    "Top, one colour per run over total training iterations: the share of pixels whose "
    "pseudo-label is unchanged since the previous evaluation (solid) and the share at or above "
    "the method's confidence threshold (dashed); the dash-dotted line is where the label-free "
    "budget rule said the pseudo-labels settled (its label is the run's own iteration). Below, "
    "for each run whose probe images have labels: left, the pseudo-label precision of each tail "
    "class (starred, red names) with the mean over the head classes (thick black line), a gap "
    "where the class was not pseudo-labelled; right, bars of how often each tail class is "
    "pseudo-labelled relative to how often it is there (labelled share / true share, log scale) "
    "at the first (light) and last (solid) evaluation: 1 = as often as it is there, under 1 = "
    "under-predicted, 0 = never pseudo-labelled. A diagnostic only: nothing is chosen from the "
    "labels.",
}

_TITLES = {
    "class_distribution": "Class distribution",
    "per_class_iou": "Per-class IoU",
    "qualitative": "Qualitative results",
    "gradient_intensity": "Attack gradient intensity",
    "curves": "Training and evaluation curves",
    "pseudo_labels": "Pseudo-labels over training",
}


def _how_to_read(key: str, domains: DomainStats | None) -> str:
    """The line under a picture; the class distribution's says when only the source is drawn."""
    if key != "class_distribution" or domains is None or domains.target_missing is None:
        return _HOW_TO_READ[key]
    return (
        "Each class's share of the source's labelled pixels (its training labels), log scale, "
        "largest first; red classes are the tail. Only the source is drawn: there are no "
        f"target class statistics for {domains.run} ({domains.target_missing}), so this "
        "picture shows the source's class prior, not a shift between domains."
    )


def write_report(
    runs: Sequence[Run],
    out_dir: str | Path,
    title: str = "apoda report",
    palette: np.ndarray | None = None,
) -> Path:
    """Draw every picture the runs' data allows into `out_dir` and write `out_dir/report.md`.

    A picture whose data is missing (or inconsistent between runs) is replaced by a note saying
    why, so a report can always be written, even for a run that never evaluated.
    """
    if not runs:
        raise ApodaError("write_report: no runs given")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    domains = domain_stats(runs)
    grad_run = next(
        (r for r in runs if any(GRAD_KEY.match(k) for t in r.train_records for k in t["values"])),
        None,
    )
    drawers: dict[str, tuple[Callable[[Path], Path] | None, str, str]] = {
        "class_distribution": (
            partial(plot_class_distribution, domains.stats) if domains else None,
            "no run has stats/source.json or stats/target.json",
            f"(stats of {domains.run})" if domains else "",
        ),
        "per_class_iou": (
            partial(plot_per_class_iou, runs),
            "no run has metrics.json with per_class",
            "",
        ),
        "qualitative": (
            partial(plot_qualitative, runs, palette=palette)
            if any(r.samples is not None for r in runs)
            else None,
            "no run has samples.npz",
            "",
        ),
        "gradient_intensity": (
            partial(plot_gradient_intensity, grad_run) if grad_run else None,
            "no run logged attack/*/grad_* values (only APODA-style methods do)",
            f"(from {grad_run.name})" if grad_run else "",
        ),
        "curves": (
            partial(plot_curves, runs),
            "no run has training or evaluation lines in log.jsonl",
            "",
        ),
        "pseudo_labels": (
            partial(plot_pseudo_labels, runs)
            if any(pseudo_label_records(r) for r in runs)
            else None,
            "no run logged pseudo-label probes (only self-training methods with a mean teacher do)",
            "",
        ),
    }

    lines = [f"# {title}", "", "## Summary", "", *_summary_table(runs), ""]
    if any(r.metrics and is_oracle_selection(r.metrics.get("selection")) for r in runs):
        lines += [f"Note: {ORACLE_NOTE}", ""]
    if any(
        str((r.metrics or {}).get("selection", "")).startswith(SELECTION_LABEL_FREE) for r in runs
    ):
        lines += [f"Note: {LABEL_FREE_NOTE}", ""]
    lines += ["## Per-class IoU", "", *_per_class_table(runs), "", "## Pictures", ""]
    for key, (draw, missing, source) in drawers.items():
        lines += [f"### {_TITLES[key]} {source}".rstrip(), ""]
        reason = missing
        if draw is not None:
            try:
                draw(out / PICTURES[key])
            except ApodaError as exc:
                reason = str(exc)
            else:
                lines += [
                    f"![{_TITLES[key]}]({PICTURES[key]})",
                    "",
                    f"How to read this: {_how_to_read(key, domains)}",
                    "",
                ]
                continue
        lines += [f"_Not drawn: {reason}._", ""]
    report = out / REPORT_FILE
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
