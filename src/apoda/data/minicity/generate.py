"""MiniCity on disk: its config, the cache folder, and the generation of every split.

Procedural street scenes are written once to disk: the "synthetic" source domain in GTA5's
layout (palette PNG labels holding Cityscapes label ids), the "real" target domain in Cityscapes'
layout, and optionally a domain-randomised split for pretraining a backbone. Every image has its
own random generator seeded from (seed, split, index), so the files are byte-identical whatever
the order or number of worker processes. A marker file written last makes an interrupted
generation visible, so :func:`ensure_minicity` redoes it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS
from PIL import Image
from tqdm import tqdm

from apoda.config import MiniCityConfig
from apoda.data.minicity.render import render_scene
from apoda.data.minicity.styles import RANDOMISED, REAL, SYNTHETIC, Style
from apoda.errors import ApodaError

__all__ = [
    "FORMAT_VERSION",
    "MARKER",
    "TARGET_CITIES",
    "MiniCityConfig",
    "cache_dir",
    "ensure_minicity",
    "generate_minicity",
]

FORMAT_VERSION = 1
MARKER = "minicity.json"
# Made-up cities; as in Cityscapes, the validation city is not among the training cities.
TARGET_CITIES: dict[str, tuple[str, ...]] = {
    "train": ("aldenmoor", "brisvale"),
    "val": ("corrick",),
}
# Split codes that seed the per-image generators; never renumber (it would change every file).
_SPLITS: dict[str, tuple[int, Style]] = {
    "source": (0, SYNTHETIC),
    "target_train": (1, REAL),
    "target_val": (2, REAL),
    "randomised": (3, RANDOMISED),
}
_SERIAL_BELOW = 64  # generate smaller jobs in this process: a pool costs more than it saves


def cache_dir() -> Path:
    """Where apoda keeps generated data: $APODA_CACHE, else $XDG_CACHE_HOME/apoda, else
    ~/.cache/apoda."""
    if os.environ.get("APODA_CACHE"):
        return Path(os.environ["APODA_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "apoda"
    return Path.home() / ".cache" / "apoda"


def folder_name(config: MiniCityConfig) -> str:
    """Cache folder name: every field, so different configs never share a folder."""
    return (
        f"minicity-{config.height}x{config.width}-s{config.seed}-n{config.n_source}"
        f"-{config.n_target_train}-{config.n_target_val}-r{config.n_randomised}"
        f"-v{FORMAT_VERSION}"
    )


def _palette() -> list[int]:
    """768-entry PNG palette: Cityscapes label id -> its Cityscapes colour."""
    pal = [0] * 768
    for lab in _CITYSCAPES_LABELS:
        if 0 <= lab.id < 256:
            pal[3 * lab.id : 3 * lab.id + 3] = list(lab.color)
    return pal


_PALETTE = _palette()


def _city_stem(split: str, index: int, total: int) -> tuple[str, str]:
    """(city, Cityscapes-style file stem) of target image `index` of `total` in `split`."""
    cities = TARGET_CITIES[split]
    per_city = -(-total // len(cities))
    city = cities[index // per_city]
    return city, f"{city}_{index % per_city:06d}_000019"


def _paths(out: Path, split: str, index: int, total: int) -> tuple[Path, Path]:
    """(image path, label path) of one image of a split."""
    if split in ("source", "randomised"):
        name = f"{index:05d}.png"
        return out / split / "images" / name, out / split / "labels" / name
    cs_split = split.removeprefix("target_")
    city, stem = _city_stem(cs_split, index, total)
    return (
        out / "target" / "leftImg8bit" / cs_split / city / f"{stem}_leftImg8bit.png",
        out / "target" / "gtFine" / cs_split / city / f"{stem}_gtFine_labelIds.png",
    )


def _render_one(job: tuple[str, int, int, int, int, int, str]) -> None:
    """Draw and write one image and its label (runs in a worker process)."""
    split, index, total, seed, height, width, out = job
    code, style = _SPLITS[split]
    rng = np.random.default_rng([seed, code, index])
    image, label = render_scene(rng, style, height, width)
    image_path, label_path = _paths(Path(out), split, index, total)
    Image.fromarray(image).save(image_path)
    lab = Image.fromarray(label)
    if split in ("source", "randomised"):
        lab.putpalette(_PALETTE)
    lab.save(label_path)


def _split_sizes(config: MiniCityConfig) -> dict[str, int]:
    return {
        "source": config.n_source,
        "target_train": config.n_target_train,
        "target_val": config.n_target_val,
        "randomised": config.n_randomised,
    }


def _marker(config: MiniCityConfig) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "config": asdict(config),
        "layout": {"source": "gta5", "target": "cityscapes", "randomised": "gta5"},
        "cities": {k: list(v) for k, v in TARGET_CITIES.items()},
    }


def generate_minicity(out: Path, config: MiniCityConfig, progress: bool = False) -> Path:
    """Write every split of MiniCity under `out` and return `out`.

    `out/source`, `out/target` and `out/randomised` are replaced; the marker `minicity.json` is
    removed first and written last (tmp + rename), so an interrupted run leaves no marker.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ApodaError(f"MiniCity output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    for sub in ("source", "target", "randomised"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    sizes = _split_sizes(config)
    jobs: list[tuple[str, int, int, int, int, int, str]] = []
    for split, total in sizes.items():
        for index in range(total):
            job = (split, index, total, config.seed, config.height, config.width, str(out))
            jobs.append(job)
            for path in _paths(out, split, index, total):
                path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(jobs), desc="MiniCity", unit="img", disable=not progress)
    workers = os.cpu_count() or 1  # each image has its own seed: any count writes the same files
    if len(jobs) < _SERIAL_BELOW or workers == 1:
        for job in jobs:
            _render_one(job)
            bar.update()
    else:
        # fork where the platform has it: no re-import of the caller's main module.
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        with get_context(method).Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_one, jobs, chunksize=16):
                bar.update()
    bar.close()
    tmp = out / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(_marker(config), indent=2) + "\n")
    os.replace(tmp, out / MARKER)
    return out


def _is_complete(root: Path, config: MiniCityConfig) -> bool:
    """True when `root` holds a finished MiniCity generated from `config`."""
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("format_version") == FORMAT_VERSION
        and marker.get("config") == asdict(config)
    )


def ensure_minicity(
    config: MiniCityConfig | None = None, root: Path | None = None, progress: bool = True
) -> Path:
    """Return the MiniCity folder for `config`, generating it when missing, incomplete or made
    from another config. Default folder: cache_dir() / folder_name(config)."""
    config = config or MiniCityConfig()
    root = Path(root) if root is not None else cache_dir() / folder_name(config)
    if not _is_complete(root, config):
        generate_minicity(root, config, progress=progress)
    return root
