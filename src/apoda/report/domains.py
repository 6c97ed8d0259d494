"""Class statistics of both domains for the class-distribution picture: the source's from the
run folder (stats/source.json), the target's from stats/target.json when a run has one, else
counted on the target's labelled val split (the split evaluation scores; its training images
are unlabelled) as the run's config.yaml names it, when that data is at hand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apoda.errors import ApodaError
from apoda.report.reading import Run, tail_of


@dataclass
class DomainStats:
    """Stats JSONs to draw, keyed by their legend label; `target_missing` says why the target
    is absent (None when it is drawn)."""

    stats: dict[str, dict[str, Any]]
    run: str
    target_missing: str | None = None


def target_val_stats(run: Run) -> dict[str, Any]:
    """Class pixel fractions of the labelled target val split of a run's config (the split its
    evaluation scores), cached like source stats; the tail classes are the source's.

    Raises ApodaError when the config names no data or the split cannot be read."""
    if not isinstance(run.config.get("data"), Mapping):
        raise ApodaError(f"{run.path / 'config.yaml'} names no dataset (no data section)")
    from apoda.config import config_from_dict
    from apoda.engine.data import build_run_data
    from apoda.engine.data import target_val_stats as val_split_stats

    source = (run.stats or {}).get("source") or {}
    try:
        config = config_from_dict(run.config, saved=True)
        val = build_run_data(config, need_train=False).val
        return val_split_stats(val, config.data.target, tail_of(run.metrics) or tail_of(source))
    except (OSError, ValueError) as exc:
        raise ApodaError(f"target val labels of {run.name} unreadable ({exc})") from exc


def _label(domain: str, stats: Mapping[str, Any]) -> str:
    """Legend label of one domain's stats, e.g. "target: minicity val (16 images)"."""
    where = " ".join(str(stats[k]) for k in ("dataset", "split") if stats.get(k) is not None)
    images = stats.get("num_images")
    count = f" ({images} images)" if isinstance(images, int) else ""
    return f"{domain}: {where}{count}" if where else domain


def domain_stats(runs: Sequence[Run]) -> DomainStats | None:
    """Source and target stats of the first run with stats (one with both preferred); the
    target counted from its val labels when the run folder has no stats/target.json."""
    with_stats = [r for r in runs if r.stats]
    if not with_stats:
        return None
    run = next((r for r in with_stats if {"source", "target"} <= set(r.stats or {})), with_stats[0])
    found = dict(run.stats or {})
    missing = None
    if "source" in found and "target" not in found:
        try:
            found["target"] = target_val_stats(run)
        except ApodaError as exc:
            missing = str(exc)
    stats = {
        _label(domain, found[domain]): found[domain]
        for domain in ("source", "target")
        if domain in found
    }
    return DomainStats(stats, run.name, missing)
