"""MiniCity: the built-in two-domain benchmark, a laptop-sized stand-in for GTA5 -> Cityscapes.

- :mod:`~apoda.data.minicity.generate`: the config, the cache folder and writing the splits to disk.
- :mod:`~apoda.data.minicity.folder_export`: MiniCity as folder datasets of 7 categories.
- The scene generator, by the order a scene is made in: :mod:`.styles` (the three domains),
  :mod:`.palette` (part colours), :mod:`.canvas` (shape primitives), :mod:`.scene` (camera and
  street), :mod:`.ground`, :mod:`.frontage`, :mod:`.placement` (where objects stand),
  :mod:`.vehicles`, :mod:`.people`, :mod:`.roadside`, and :mod:`.render` (drawing order and the
  photographic finish).
"""

from __future__ import annotations

from apoda.data.minicity.generate import (
    FORMAT_VERSION,
    MARKER,
    TARGET_CITIES,
    MiniCityConfig,
    cache_dir,
    ensure_minicity,
    folder_name,
    generate_minicity,
)
from apoda.data.minicity.render import render_scene
from apoda.data.minicity.styles import RANDOMISED, REAL, SYNTHETIC, Style

__all__ = [
    "FORMAT_VERSION",
    "MARKER",
    "RANDOMISED",
    "REAL",
    "SYNTHETIC",
    "TARGET_CITIES",
    "MiniCityConfig",
    "Style",
    "cache_dir",
    "ensure_minicity",
    "folder_name",
    "generate_minicity",
    "render_scene",
]
