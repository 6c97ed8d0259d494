"""The report's pictures: class distribution, per-class IoU, qualitative grid, attack gradient
intensity, training curves and a self-training run's pseudo-labels. Figures are drawn on plain
`matplotlib.figure.Figure` objects (Agg canvas), never through pyplot, so no display and no
global figure state are involved."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from apoda.errors import ApodaError
from apoda.report.reading import (
    Run,
    as_number,
    class_names_of,
    format_percent,
    run_tail,
    tail_of,
    union,
)
from apoda.report.stages import Start, run_starts

PICTURES = {
    "class_distribution": "class_distribution.png",
    "per_class_iou": "per_class_iou.png",
    "qualitative": "qualitative.png",
    "gradient_intensity": "gradient_intensity.png",
    "curves": "curves.png",
    "pseudo_labels": "pseudo_labels.png",
}

GRAD_KEY = re.compile(r"^attack/(?P<domain>[^/]+)/grad_(?P<objective>[^/]+)/k(?P<k>\d+)$")
_L2_KEY = re.compile(r"^attack/(?P<domain>[^/]+)/l2/k(?P<k>\d+)$")
_TAIL_COLOUR = "tab:red"
_Series = tuple[str, str]  # (domain, attack objective)
_DPI = 100


def _save(figure: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(out, format="png", dpi=_DPI, bbox_inches="tight")
    return out


def _mark_tail(axes: Axes, names: Sequence[str], tail: set[str]) -> None:
    """Red bold tick labels and a light red band behind each tail class."""
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels(names, rotation=45, ha="right")
    for index, (name, label) in enumerate(zip(names, axes.get_xticklabels(), strict=True)):
        if name in tail:
            label.set_color(_TAIL_COLOUR)
            label.set_fontweight("bold")
            axes.axvspan(index - 0.5, index + 0.5, color=_TAIL_COLOUR, alpha=0.08, lw=0)
    axes.set_xlim(-0.5, len(names) - 0.5)


def _moving_average(x: np.ndarray, y: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing moving average of y; x is cut to the points where a full window exists."""
    if window <= 1 or len(y) < window:
        return x, y
    kernel = np.full(window, 1.0 / window)
    return x[window - 1 :], np.convolve(y, kernel, mode="valid")


def _grid(count: int, columns: int, cell: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    figure = Figure(figsize=(cell[0] * cols, cell[1] * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel().tolist()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, axes[:count]


# --------------------------------------------------------------------------- pictures


def plot_class_distribution(stats: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Pixel share of each class per domain as side-by-side log-scale bars (paper Fig. 4/5).

    Classes are sorted by the first domain's share, largest first, so the long tail reads left to
    right; tail classes (the union of every domain's `tail_classes`) are marked in red. The legend
    sits right of the axes, clear of the bars.
    """
    return _save(_class_distribution_figure(stats), path)


def _class_distribution_figure(stats: Mapping[str, Mapping[str, Any]]) -> Figure:
    """The figure `plot_class_distribution` saves."""
    if not stats:
        raise ApodaError("class distribution: no stats given (expected stats/source.json etc.)")
    domains = list(stats)
    fractions: dict[str, Mapping[str, Any]] = {}
    for domain in domains:
        share = stats[domain].get("pixel_fraction")
        if not isinstance(share, Mapping) or not share:
            raise ApodaError(f"class distribution: stats '{domain}' has no pixel_fraction mapping")
        fractions[domain] = share
    first = fractions[domains[0]]
    names = union(
        [stats[domains[0]].get("class_names") or [], first] + [fractions[d] for d in domains[1:]]
    )
    names.sort(key=lambda n: -np.nan_to_num(as_number(first.get(n)), nan=-1.0))
    tail = set(union(stats[d].get("tail_classes") or [] for d in domains))

    figure = Figure(figsize=(max(8.0, 0.45 * len(names) * max(1, len(domains))), 4.5))
    axes = figure.add_subplot()
    width = 0.8 / len(domains)
    positive: list[float] = []
    for index, domain in enumerate(domains):
        values = np.array([100.0 * as_number(fractions[domain].get(n)) for n in names])
        shown = np.where(values > 0, values, np.nan)
        positive.extend(shown[np.isfinite(shown)].tolist())
        offsets = np.arange(len(names)) - 0.4 + width * (index + 0.5)
        axes.bar(offsets, shown, width=width, label=domain)
        for offset in offsets[values == 0]:  # no bar on a log axis: say it is zero
            axes.text(
                offset,
                0.01,
                "0",
                transform=axes.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                color=f"C{index % 10}",
                fontweight="bold",
            )
    axes.set_yscale("log")
    if positive:
        axes.set_ylim(bottom=min(positive) / 2)
    axes.set_ylabel("share of labelled pixels (%)")
    axes.set_title("class share per domain (tail classes in red; 0 = no pixel of the class)")
    _mark_tail(axes, names, tail)
    # Outside the axes (to the right), so the legend never covers a bar.
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return figure


def plot_per_class_iou(runs: Sequence[Run], path: str | Path) -> Path:
    """Per-class IoU, one group of bars per class and one bar per run, each with its value; bars
    under 1 get a marker at the foot, tail classes are red and starred."""
    return _save(_per_class_iou_figure(runs), path)


_NEAR_ZERO = 1.0
"""IoU (%) under which a bar is too short to see on a 0-100 axis: it gets a marker."""


def near_zero(values: Sequence[float]) -> list[bool]:
    """Which IoUs (%) are scored but under 1, too short a bar to see on a 0-100 axis."""
    return [math.isfinite(v) and v < _NEAR_ZERO for v in values]


def _label_bars(axes: Axes, offsets: np.ndarray, values: Sequence[float], colour: str) -> None:
    """Each bar's value above it (n/a where there is none); a triangle at the foot of bars < 1,
    with the value above the triangle."""
    low = near_zero(values)
    for offset, value, small in zip(offsets, values, low, strict=True):
        y = 3.5 if small else (value if math.isfinite(value) else 0.0) + 1
        axes.text(
            offset, y, format_percent(value), ha="center", va="bottom", rotation=90, fontsize=6.5
        )
    if any(low):
        axes.plot(
            offsets[np.array(low)],
            np.full(sum(low), 1.4),
            linestyle="none",
            marker="^",
            ms=5,
            color=colour,
            markeredgecolor="k",
            markeredgewidth=0.4,
            gid="near-zero",
        )


def _per_class_iou_figure(runs: Sequence[Run]) -> Figure:
    """The figure `plot_per_class_iou` saves."""
    scored = [r for r in runs if r.metrics and isinstance(r.metrics.get("per_class"), Mapping)]
    if not scored:
        raise ApodaError("per-class IoU: no run has metrics.json with per_class")
    names = union(class_names_of(r.metrics or {}) for r in scored)
    tail = set(union(tail_of(r.metrics) for r in scored))

    figure = Figure(figsize=(max(8.0, len(names) * (0.35 + 0.15 * len(scored))), 4.8))
    axes = figure.add_subplot()
    width = 0.8 / len(scored)
    for index, run in enumerate(scored):
        per_class = (run.metrics or {})["per_class"]
        values = [as_number(per_class.get(n)) for n in names]
        offsets = np.arange(len(names)) - 0.4 + width * (index + 0.5)
        miou = as_number((run.metrics or {}).get("miou"))
        colour = f"C{index % 10}"
        axes.bar(
            offsets,
            values,
            width=width,
            color=colour,
            label=f"{run.name} (mIoU {format_percent(miou)})",
        )
        _label_bars(axes, offsets, values, colour)
    axes.set_ylabel("IoU (%)")
    axes.set_ylim(0, 112)  # room for the value above a bar near 100
    axes.set_yticks(range(0, 101, 20))
    axes.set_title(
        "per-class IoU: value above each bar, \u25b2 = IoU under 1, tail classes* in red"
    )
    _mark_tail(axes, [f"{n}*" if n in tail else n for n in names], {f"{n}*" for n in tail})
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return figure


def _check_palette(palette: Any) -> np.ndarray:
    array = np.asarray(palette)
    if array.shape != (256, 3) or not np.issubdtype(array.dtype, np.integer):
        raise ApodaError(
            f"palette must be an integer array [256,3], got {array.dtype}{list(array.shape)}"
        )
    return array.astype(np.uint8)


def plot_qualitative(
    runs: Sequence[Run],
    path: str | Path,
    palette: np.ndarray | None = None,
    max_samples: int = 4,
) -> Path:
    """Rows of samples; columns image, ground truth, then each run's prediction (paper Fig. 6),
    with a legend below of the colours of every class in the shown labels and predictions.

    Images and labels come from the first run with samples; every run with samples must hold the
    same number of images at the same size, since they must be predictions on the same images.
    The default palette is that run's class colours (metrics.json), else Cityscapes'.
    """
    return _save(_qualitative_figure(runs, palette, max_samples), path)


def _run_palette(run: Run) -> np.ndarray:
    """A run's class colours (metrics.json class_colors), else the Cityscapes palette."""
    from apoda.data.classes import CITYSCAPES_PALETTE, palette_of

    run_colours = (run.metrics or {}).get("class_colors")
    try:
        return palette_of(run_colours) if run_colours else CITYSCAPES_PALETTE
    except (ValueError, TypeError, OverflowError):
        raise ApodaError(
            f"qualitative: class_colors of {run.path / 'metrics.json'} are not [R, G, B]s"
        ) from None


def _sample_class_names(runs: Sequence[Run]) -> list[str]:
    """Class names for train ids: the first run's metrics.json that has them, else Cityscapes'."""
    from apoda.data.classes import CITYSCAPES19

    for run in runs:
        names = class_names_of(run.metrics or {})
        if names:
            return names
    return list(CITYSCAPES19.class_names)


def legend_classes(maps: Iterable[np.ndarray], names: Sequence[str]) -> list[tuple[int, str]]:
    """(train id, name) of every value in the label/prediction maps, in id order; 255 is the
    ignore label, an id past `names` is shown as its number."""
    present = np.unique(np.concatenate([np.unique(m) for m in maps]))
    return [
        (int(i), "ignore" if i == 255 else names[i] if i < len(names) else f"id {i}")
        for i in present
    ]


_LEGEND_ENTRY_W = 1.45
"""Inches of figure width one legend entry (patch and class name) takes."""


def _legend_columns(entries: int, figure_width: float) -> int:
    """Legend columns: as many as fit the width, fewer when that balances the rows."""
    fit = max(1, min(entries, int(figure_width / _LEGEND_ENTRY_W)))
    return math.ceil(entries / math.ceil(entries / fit))


def _class_legend(figure: Figure, entries: Sequence[tuple[int, str]], colours: np.ndarray) -> None:
    """Colour patches with class names in rows under the grid, as many columns as fit."""
    patches = [
        Patch(facecolor=colours[i] / 255.0, edgecolor="0.4", linewidth=0.5, label=name)
        for i, name in entries
    ]
    figure.legend(
        handles=patches,
        loc="outside lower center",
        ncols=_legend_columns(len(patches), figure.get_figwidth()),
        fontsize="small",
        frameon=False,
        title="class colours (of the labels and predictions shown)",
        title_fontsize="small",
    )


def _qualitative_figure(
    runs: Sequence[Run], palette: np.ndarray | None = None, max_samples: int = 4
) -> Figure:
    """The figure `plot_qualitative` saves."""
    pairs = [(r, r.samples) for r in runs if r.samples is not None]
    if not pairs:
        raise ApodaError("qualitative: no run has samples.npz")
    first, reference = pairs[0]
    colours = _check_palette(_run_palette(first) if palette is None else palette)
    for run, samples in pairs[1:]:
        if samples.labels.shape != reference.labels.shape:
            raise ApodaError(
                f"qualitative: {run.path / 'samples.npz'} holds {list(samples.labels.shape)} "
                f"but {first.path / 'samples.npz'} holds {list(reference.labels.shape)}; "
                "runs must predict the same images"
            )
    count = min(max_samples, reference.images.shape[0])
    if count < 1:
        raise ApodaError(f"qualitative: {first.path / 'samples.npz'} holds no images")
    height, width = reference.labels.shape[1:]
    columns = 2 + len(pairs)
    cell_w = 2.6
    shown = [reference.labels[:count], *(samples.predictions[:count] for _, samples in pairs)]
    entries = legend_classes(shown, _sample_class_names(runs))
    legend_rows = math.ceil(len(entries) / _legend_columns(len(entries), cell_w * columns))
    figure = Figure(
        figsize=(cell_w * columns, cell_w * height / width * count + 0.7 + 0.25 * legend_rows),
        layout="constrained",
    )
    grid = figure.subplots(count, columns, squeeze=False)
    titles = ["image", "ground truth", *(run.name for run, _ in pairs)]
    for row in range(count):
        panels = [reference.images[row], colours[reference.labels[row]]]
        panels += [colours[samples.predictions[row]] for _, samples in pairs]
        for col, panel in enumerate(panels):
            axes = grid[row, col]
            axes.imshow(panel, interpolation="nearest")
            axes.set_axis_off()
            if row == 0:
                axes.set_title(titles[col], fontsize="medium")
    _class_legend(figure, entries, colours)
    return figure


def _attack_series(
    run: Run, pattern: re.Pattern[str]
) -> tuple[dict[_Series, dict[int, list[float]]], dict[_Series, list[tuple[int, float]]]]:
    """Group attack values by (domain, objective): per k over all lines, and per training line
    averaged over k."""
    by_k: dict[_Series, dict[int, list[float]]] = {}
    by_iteration: dict[_Series, list[tuple[int, float]]] = {}
    for record in run.train_records:
        line: dict[_Series, list[float]] = {}
        for key, raw in record["values"].items():
            match = pattern.match(key)
            value = as_number(raw)
            if match is None or not math.isfinite(value):
                continue
            series = (match["domain"], match.groupdict().get("objective", "l2"))
            by_k.setdefault(series, {}).setdefault(int(match["k"]), []).append(value)
            line.setdefault(series, []).append(value)
        iteration = as_number(record.get("iteration"))
        if not math.isfinite(iteration):
            continue
        for series, values in line.items():
            by_iteration.setdefault(series, []).append((int(iteration), float(np.mean(values))))
    return by_k, by_iteration


def _log10(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(array > 0, np.log10(np.where(array > 0, array, 1.0)), np.nan)


def plot_gradient_intensity(run: Run, path: str | Path) -> Path:
    """log10 mean |gradient| of each attack objective against the I-FGSPM iteration k (paper
    Fig. 3), averaged over training lines; a second panel follows the same values (averaged over
    k) along training, and a third shows the L2 distance of f* from f when it was logged."""
    grads, grads_over_time = _attack_series(run, GRAD_KEY)
    if not grads:
        raise ApodaError(
            f"gradient intensity: {run.path / 'log.jsonl'} has no attack/*/grad_* keys"
        )
    distances, _ = _attack_series(run, _L2_KEY)
    objectives = sorted({objective for _, objective in grads})
    colour_of = {o: f"C{i % 10}" for i, o in enumerate(objectives)}
    styles = ["-", "--", ":", "-."]
    domains = sorted({domain for domain, _ in grads} | {domain for domain, _ in distances})
    style_of = {d: styles[i % len(styles)] for i, d in enumerate(domains)}

    figure, (per_k, over_time, *rest) = _grid(3 if distances else 2, 3, (5.0, 3.8))
    for (domain, objective), values in sorted(grads.items()):
        ks = sorted(values)
        style = {"color": colour_of[objective], "linestyle": style_of[domain]}
        per_k.plot(
            ks,
            _log10(np.mean(values[k]) for k in ks),
            marker="o",
            label=f"{domain} {objective}",
            **style,
        )
        points = grads_over_time[(domain, objective)]
        over_time.plot([p[0] for p in points], _log10(p[1] for p in points), **style)
    per_k.set_xlabel("attack iteration k")
    per_k.set_ylabel("log10 mean |gradient|")
    per_k.set_title(f"{run.name}: gradient intensity per k")
    per_k.xaxis.get_major_locator().set_params(integer=True)
    per_k.legend(fontsize="small")
    over_time.set_xlabel("training iteration")
    over_time.set_ylabel("log10 mean |gradient| (mean over k)")
    over_time.set_title("along training")
    if rest:
        panel = rest[0]
        for (domain, _), values in sorted(distances.items()):
            ks = sorted(values)
            panel.plot(
                ks,
                [np.mean(values[k]) for k in ks],
                marker="o",
                color="k",
                linestyle=style_of[domain],
                label=domain,
            )
        panel.set_xlabel("attack iteration k")
        panel.set_ylabel("L2 distance of f* from f")
        panel.set_title("perturbation size")
        panel.xaxis.get_major_locator().set_params(integer=True)
        panel.legend(fontsize="small")
    return _save(figure, path)


_FEW_POINTS = 20
"""A curve with fewer points than this is drawn with markers: a one-point line is invisible."""


def plot_curves(runs: Sequence[Run], path: str | Path, window: int | None = None) -> Path:
    """One panel per logged quantity, runs overlaid: training values (faint) with a trailing
    moving average (solid; `window` lines, default about a tenth of the run), then evaluation
    mIoU, head and tail mIoU over total training iterations: a run started from another run's
    checkpoint (`model.init_from`) is drawn after it, from a dotted line at that run's end.
    Attack keys are left to the gradient picture. Series of fewer than 20 points are drawn with
    markers, so a short run's values show."""
    return _save(_curves_figure(runs, window), path)


def _stage_note(runs: Sequence[Run], starts: Sequence[Start]) -> str:
    """One line naming the runs drawn after the run they started from (and starts not found)."""
    after: dict[tuple[str, int], list[str]] = {}
    for run, start in zip(runs, starts, strict=True):
        if start.after is not None:
            after.setdefault((start.after, start.offset), []).append(run.name)
    parts = [
        f"{', '.join(names)} start from {parent} (at iteration {offset}, dotted line)"
        for (parent, offset), names in after.items()
    ]
    parts += [
        f"{run.name}: start {start.missing} not found, drawn from 0"
        for run, start in zip(runs, starts, strict=True)
        if start.missing
    ]
    return "; ".join(parts)


def _mark_start(panel: Axes, start: Start) -> None:
    """A grey dotted line where a run that continues another run begins (runs may share it)."""
    if start.after is not None:
        panel.axvline(start.offset, color="0.45", linestyle=":", lw=1.2, gid="stage-start")


def _curves_figure(runs: Sequence[Run], window: int | None = None) -> Figure:
    """The figure `plot_curves` saves: x is total training iterations (see `run_starts`)."""
    keys = sorted(
        union(
            (k for k in r["values"] if not k.startswith("attack/"))
            for run in runs
            for r in run.train_records
        )
    )
    eval_keys = [
        k
        for k in ("miou", "head_miou", "tail_miou")
        if any(math.isfinite(as_number(r.get(k))) for run in runs for r in run.eval_records)
    ]
    if not keys and not eval_keys:
        raise ApodaError("curves: no run has training or evaluation lines in log.jsonl")
    titles = {
        "miou": "eval mIoU (%)",
        "head_miou": "eval head mIoU (%)",
        "tail_miou": "eval tail mIoU (%)",
    }
    starts = run_starts(runs)
    figure, panels = _grid(len(keys) + len(eval_keys), 3, (4.6, 3.2))
    for panel, key in zip(panels, keys, strict=False):
        for index, (run, start) in enumerate(zip(runs, starts, strict=True)):
            points = [
                (as_number(r.get("iteration")), as_number(r["values"].get(key)))
                for r in run.train_records
                if key in r["values"]
            ]
            xy = np.array([p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])])
            if not len(xy):
                continue
            xy[:, 0] += start.offset
            colour = f"C{index % 10}"
            panel.plot(xy[:, 0], xy[:, 1], color=colour, alpha=0.25, lw=0.8)
            size = window if window is not None else max(1, len(xy) // 10)
            sx, sy = _moving_average(xy[:, 0], xy[:, 1], size)
            marker = "o" if len(sx) < _FEW_POINTS else None
            panel.plot(sx, sy, color=colour, lw=1.5, marker=marker, ms=4, label=run.name)
            _mark_start(panel, start)
        panel.set_title(key, fontsize="medium")
    for panel, key in zip(panels[len(keys) :], eval_keys, strict=True):
        for index, (run, start) in enumerate(zip(runs, starts, strict=True)):
            xy = np.array(
                [(as_number(r.get("iteration")), as_number(r.get(key))) for r in run.eval_records]
            ).reshape(-1, 2)
            xy = xy[np.isfinite(xy).all(axis=1)]
            if len(xy):
                xy[:, 0] += start.offset
                panel.plot(xy[:, 0], xy[:, 1], color=f"C{index % 10}", marker="o", label=run.name)
                _mark_start(panel, start)
        panel.set_title(titles[key], fontsize="medium")
    for panel in panels:
        panel.set_xlabel("total training iterations")
        if panel.get_legend_handles_labels()[0]:
            panel.legend(fontsize="x-small")
    note = _stage_note(runs, starts)
    if note:
        figure.suptitle(note, fontsize="medium")
    return figure


# --------------------------------------------------------------------------- pseudo-labels

_NO_PROBE = "no run logged pseudo-label probes (only self-training methods with a mean teacher do)"
_HEAD_COLOUR = "k"
_CLASS_COLOURS = ["C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9"]  # no red (the tail's), no grey
_CLASS_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*"]
_SETTLED_STYLE = "-."
_Probe = tuple[int, Mapping[str, Any]]  # (the run's own iteration, its pseudo_labels record)


def pseudo_label_records(run: Run) -> list[_Probe]:
    """(iteration, `pseudo_labels`) of each evaluation of a run that logged the pseudo-label
    probe (see `apoda.engine.pseudo_probe`), in iteration order."""
    found = []
    for record in run.eval_records:
        probe, iteration = record.get("pseudo_labels"), as_number(record.get("iteration"))
        if isinstance(probe, Mapping) and math.isfinite(iteration):
            found.append((int(iteration), probe))
    return sorted(found, key=lambda pair: pair[0])


def plot_pseudo_labels(runs: Sequence[Run], path: str | Path) -> Path:
    """How the teacher's pseudo-labels evolve in the runs that logged the probe (others are
    left out): agreement with the previous evaluation and the confident share over total
    training iterations, with the label-free rule's `settled_at`; and, for each run whose probe
    images have labels, its tail classes' pseudo-label precision (with the head classes' mean)
    over training and each tail class's labelled / true pixel share at the first and last
    evaluation."""
    return _save(_pseudo_labels_figure(runs), path)


def _series(
    probes: Sequence[_Probe], offset: int, value: Callable[[Mapping[str, Any]], Any]
) -> tuple[np.ndarray, np.ndarray]:
    """x (total iterations) and y of the probes where `value` is a number (NaN elsewhere)."""
    x = np.array([iteration + offset for iteration, _ in probes], dtype=float)
    y = np.array([as_number(value(probe)) for _, probe in probes], dtype=float)
    return x, y


def _settled_at(probes: Sequence[_Probe]) -> int | None:
    """The iteration the label-free rule said the pseudo-labels settled at (the run's own)."""
    for _, probe in probes:
        settled = as_number(probe.get("settled_at"))
        if math.isfinite(settled):
            return int(settled)
    return None


def _mark_settled(panel: Axes, settled: int | None, offset: int, colour: str, label: str) -> None:
    """A dash-dotted line in the run's colour where the label-free rule said its pseudo-labels
    settled; its legend entry gives the run's own iteration (`label` names the run or is "")."""
    if settled is None:
        return
    panel.axvline(
        settled + offset,
        color=colour,
        linestyle=_SETTLED_STYLE,
        lw=1.3,
        gid="settled",
        label=f"{label}settled at {settled:,} (label-free rule)",
    )


def _per_class_probes(probes: Sequence[_Probe]) -> list[_Probe]:
    return [(i, p) for i, p in probes if isinstance(p.get("per_class"), Mapping) and p["per_class"]]


def _class_value(probe: Mapping[str, Any], name: str, key: str) -> float:
    entry = probe["per_class"].get(name)
    return as_number(entry.get(key)) if isinstance(entry, Mapping) else math.nan


def _precision_panel(
    panel: Axes,
    run: Run,
    probes: Sequence[_Probe],
    tail: Sequence[str],
    offset: int,
    settled: int | None,
    colour: str,
) -> None:
    """Each tail class's pseudo-label precision over training, and the head classes' mean."""
    names = union(p["per_class"] for _, p in probes)
    head = [n for n in names if n not in tail]
    x = np.array([i + offset for i, _ in probes], dtype=float)
    never, wrong = [], []
    for index, name in enumerate(n for n in tail if n in names):
        y = np.array([_class_value(p, name, "precision") for _, p in probes])
        if not np.isfinite(y).any():
            never.append(f"{name}*")
            continue
        if not np.nan_to_num(y).any():  # lines on top of each other at 0: say which
            wrong.append(f"{name}*")
        panel.plot(
            x,
            y,
            color=_CLASS_COLOURS[index % len(_CLASS_COLOURS)],
            marker=_CLASS_MARKERS[index % len(_CLASS_MARKERS)],
            ms=4,
            lw=1.2,
            label=f"{name}*",
        )
    if head:
        with np.errstate(all="ignore"):
            values = np.array([[_class_value(p, n, "precision") for n in head] for _, p in probes])
            counted = np.isfinite(values).sum(axis=1)
            mean = np.where(counted > 0, np.nansum(values, axis=1) / np.maximum(counted, 1), np.nan)
        label = "head classes (mean)" if tail else "all classes (mean; tail unknown)"
        panel.plot(x, mean, color=_HEAD_COLOUR, lw=3.0, marker="o", ms=4, label=label)
    _mark_settled(panel, settled, offset, colour, "")
    notes = [f"never pseudo-labelled: {', '.join(never)}"] if never else []
    notes += [f"precision 0 whenever pseudo-labelled: {', '.join(wrong)}"] if wrong else []
    if notes:
        panel.text(
            0.01,
            0.98,
            "\n".join(notes),
            transform=panel.transAxes,
            ha="left",
            va="top",
            fontsize="small",
            color=_TAIL_COLOUR,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5},
        )
    panel.set_ylim(-0.04, 1.08)  # a class at precision 0 stays visible above the axis
    panel.set_xlabel("total training iterations")
    panel.set_ylabel("pseudo-label precision")
    panel.set_title(f"{run.name}: precision of the tail* and the head mean", fontsize="medium")
    if panel.get_legend_handles_labels()[0]:
        legend = panel.legend(
            fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0
        )
        for text in legend.get_texts():
            if text.get_text().endswith("*"):
                text.set_color(_TAIL_COLOUR)


def _share_panel(
    panel: Axes, run: Run, probes: Sequence[_Probe], tail: Sequence[str], offset: int, colour: str
) -> None:
    """labelled share / true share of each tail class at the first and the last evaluation."""
    names = [n for n in tail if n in union(p["per_class"] for _, p in probes)]
    if not names:
        panel.text(
            0.5,
            0.5,
            "tail classes unknown\n(no tail_classes in metrics.json or the checkpoint)",
            transform=panel.transAxes,
            ha="center",
            va="center",
        )
        panel.set_axis_off()
        return
    picked = [probes[0], probes[-1]] if len(probes) > 1 else [probes[0]]
    width = 0.8 / len(picked)
    positive: list[float] = []
    for slot, ((iteration, probe), alpha, which) in enumerate(
        zip(picked, (0.35, 1.0), ("first", "last"), strict=False)
    ):
        labelled = np.array([_class_value(probe, n, "labelled_share") for n in names])
        present = np.array([_class_value(probe, n, "true_share") for n in names])
        with np.errstate(all="ignore"):
            ratio = np.where(present > 0, labelled / present, np.nan)
        shown = np.where(ratio > 0, ratio, np.nan)
        positive.extend(shown[np.isfinite(shown)].tolist())
        offsets = np.arange(len(names)) - 0.4 + width * (slot + 0.5)
        when = "evaluation" if len(picked) == 1 else f"{which} evaluation"
        panel.bar(
            offsets,
            shown,
            width=width,
            color=colour,
            alpha=alpha,
            edgecolor=colour,
            label=f"{when} (iteration {iteration + offset:,})",
        )
        for x, value, share in zip(offsets, ratio, present, strict=True):
            note = (
                f"{value:.2g}"
                if value > 0
                else "0"
                if value == 0
                else "absent"
                if share == 0
                else "n/a"
            )
            y, transform = (value, panel.transData) if value > 0 else (0.01, None)
            panel.text(
                x,
                y * 1.08 if transform is not None else y,
                note,
                transform=transform or panel.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
                fontweight="normal" if value > 0 else "bold",
                color="k" if value > 0 else _TAIL_COLOUR,
            )
    panel.axhline(1.0, color="0.3", lw=1.0, linestyle="--")
    panel.set_yscale("log")
    low = min([*positive, 1.0]) / 4
    high = max([*positive, 1.0]) * 4
    panel.set_ylim(low, high)
    panel.set_ylabel("labelled share / true share (log)")
    panel.set_title(
        f"{run.name}: how often each tail class is pseudo-labelled (1 = as often as it is there)",
        fontsize="medium",
    )
    panel.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    panel.set_xticks(range(len(names)))  # every class is a tail class: red names, no bands
    panel.set_xticklabels(
        [f"{n}*" for n in names], rotation=45, ha="right", color=_TAIL_COLOUR, fontweight="bold"
    )
    panel.set_xlim(-0.5, len(names) - 0.5)
    panel.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _pseudo_labels_figure(runs: Sequence[Run]) -> Figure:
    """The figure `plot_pseudo_labels` saves: x is total training iterations (`run_starts`)."""
    starts = run_starts(runs)
    probed = [
        (f"C{index % 10}", run, start, probes)
        for index, (run, start) in enumerate(zip(runs, starts, strict=True))
        if (probes := pseudo_label_records(run))
    ]
    if not probed:
        raise ApodaError(_NO_PROBE)
    labelled = [(c, r, s, p) for c, r, s, probes in probed if (p := _per_class_probes(probes))]
    rows = 1 + len(labelled)
    figure = Figure(figsize=(15.0, 1.0 + 4.2 * rows), layout="constrained")
    grid = figure.subplots(rows, 2, squeeze=False, width_ratios=(1.0, 1.0))
    agreement, confident = grid[0]
    several = len(probed) > 1
    drawn: set[str] = set()
    for colour, run, start, probes in probed:
        settled = _settled_at(probes)
        quantities = ((agreement, "agreement", "-"), (confident, "confident_share", "--"))
        for panel, key, style in quantities:
            x, y = _series(probes, start.offset, lambda p, k=key: p.get(k))
            if np.isfinite(y).any():
                panel.plot(x, y, color=colour, linestyle=style, marker="o", ms=4, label=run.name)
                drawn.add(key)
            _mark_settled(panel, settled, start.offset, colour, f"{run.name}: " if several else "")
            _mark_start(panel, start)
    agreement.set_title(
        "agreement with the previous evaluation's pseudo-labels (solid)", fontsize="medium"
    )
    agreement.set_ylabel("share of pixels unchanged")
    confident.set_title(
        "confident share: top probability \u2265 the method's threshold (dashed)",
        fontsize="medium",
    )
    confident.set_ylabel("share of pixels")
    for panel, key, missing in (
        (agreement, "agreement", "no agreement yet (it needs two evaluations)"),
        (confident, "confident_share", "not logged (the method has no confidence threshold)"),
    ):
        panel.set_xlabel("total training iterations")
        if key not in drawn:
            panel.text(0.5, 0.5, missing, transform=panel.transAxes, ha="center")
        if panel.get_legend_handles_labels()[0]:
            panel.legend(fontsize="small", loc="best")
    for row, (colour, run, start, probes) in enumerate(labelled, start=1):
        tail = run_tail(run)
        _precision_panel(grid[row][0], run, probes, tail, start.offset, _settled_at(probes), colour)
        _share_panel(grid[row][1], run, probes, tail, start.offset, colour)
        for panel in grid[row]:
            _mark_start(panel, start)
    images = union([str(p.get("images", "?"))] for _, _, _, probes in probed for _, p in probes)
    title = f"the teacher's pseudo-labels on {' / '.join(images)} fixed target training images"
    note = _stage_note([r for _, r, _, _ in probed], [s for _, _, s, _ in probed])
    figure.suptitle(f"{title}\n{note}" if note else title, fontsize="medium")
    return figure
