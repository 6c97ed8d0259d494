"""Rendering a MiniCity street scene: the drawing order, then the domain's photographic finish.

Ground and building rows are drawn per pixel from their plane equations; objects are upright
billboards drawn far to near. The finish (textures, light, colour cast, blur, sensor noise) is
where the style separates the domains most.
"""

from __future__ import annotations

from math import ceil

import numpy as np

from apoda.data.minicity.frontage import draw_street_frontages
from apoda.data.minicity.ground import draw_ground, draw_sky
from apoda.data.minicity.placement import draw_objects, place_objects
from apoda.data.minicity.scene import Scene
from apoda.data.minicity.styles import Style
from apoda.data.minicity.vehicles import draw_ego_vehicle

__all__ = ["render_scene"]


def render_scene(
    rng: np.random.Generator, style: Style, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene: (HxWx3 uint8 RGB image, HxW uint8 Cityscapes label ids)."""
    scene = Scene(rng, style, height, width)
    draw_sky(scene)
    draw_ground(scene)
    draw_street_frontages(scene)
    draw_objects(place_objects(scene))
    if style.ego_vehicle:
        draw_ego_vehicle(scene)
    return _finish(scene), scene.canvas.label


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Unit-variance-ish noise that varies over about `cell` pixels (bilinear value noise)."""
    gh, gw = int(height / cell) + 2, int(width / cell) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    y = (np.arange(height, dtype=np.float32) + 0.5) / cell
    x = (np.arange(width, dtype=np.float32) + 0.5) / cell
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    ty, tx = (y - y0)[:, None], (x - x0)[None, :]
    a = grid[y0][:, x0] * (1 - tx) + grid[y0][:, x0 + 1] * tx
    b = grid[y0 + 1][:, x0] * (1 - tx) + grid[y0 + 1][:, x0 + 1] * tx
    return a * (1 - ty) + b * ty


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an HxWx3 float image (edges reflected)."""
    if sigma < 0.2:
        return img
    radius = max(1, ceil(2.5 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float32) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
    out = sum(k[i] * pad[i : i + img.shape[0]] for i in range(len(k)))
    pad = np.pad(out, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
    return sum(k[i] * pad[:, i : i + img.shape[1]] for i in range(len(k)))


def _finish(scene: Scene) -> np.ndarray:
    """Textures, light, colour cast, blur and sensor noise; returns the uint8 RGB image."""
    style, rng, c = scene.style, scene.rng, scene.canvas
    img = c.rgb
    if style.colours != "synthetic":
        fine = rng.standard_normal((c.h, c.w)).astype(np.float32)
        smooth = _smooth_noise(rng, c.h, c.w, max(c.w / 24.0, 2.0))
        img = img * (1.0 + c.tex[..., 0:1] * fine[..., None] + c.tex[..., 1:2] * smooth[..., None])
    if style.colours == "randomised":
        gain = rng.uniform(0.5, 1.4) * rng.uniform(0.8, 1.2, size=3)
        img = 255.0 * (np.clip(img * gain, 0.0, 255.0) / 255.0) ** rng.uniform(0.6, 1.6)
    elif style.colours == "real":
        gain = rng.uniform(0.85, 1.05) * np.array(style.cast, np.float32)
        gain = gain * (1.0 + rng.uniform(-0.03, 0.03, size=3))
        img = img * gain.astype(np.float32)
    if style.saturation != 1.0:
        grey = img.mean(axis=2, keepdims=True)
        img = grey + style.saturation * (img - grey)
    img = _blur(img, rng.uniform(*style.blur_sigma) * c.w / 128.0)
    sigma = rng.uniform(*style.noise_sigma)
    if sigma > 0:
        img = img + sigma * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
