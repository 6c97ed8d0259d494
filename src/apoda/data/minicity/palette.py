"""Colours and textures of the parts of a MiniCity scene, drawn per object according to a style."""

from __future__ import annotations

import colorsys

import numpy as np

from apoda.data.minicity.canvas import Paint
from apoda.data.minicity.styles import Style

# Image colour (synthetic domain, 0-255), the Cityscapes class it belongs to, and the texture
# amplitudes (fine grain, smooth blotches) it gets in the real domain. Parts of one class share
# the class's hue shift in the real domain.
_PARTS: dict[str, tuple[tuple[int, int, int], str, float, float]] = {
    "road": ((88, 88, 96), "road", 0.10, 0.12),
    "lane": ((235, 235, 225), "road", 0.05, 0.05),
    "sidewalk": ((185, 170, 160), "sidewalk", 0.07, 0.08),
    "kerb": ((145, 145, 150), "sidewalk", 0.05, 0.05),
    "terrain": ((150, 190, 70), "terrain", 0.16, 0.16),
    "building": ((165, 115, 85), "building", 0.06, 0.12),
    "window": ((60, 75, 105), "building", 0.05, 0.05),
    "wall": ((200, 185, 130), "wall", 0.08, 0.08),
    "fence": ((150, 95, 45), "fence", 0.06, 0.05),
    "pole": ((125, 125, 140), "pole", 0.04, 0.04),
    "light_body": ((40, 45, 40), "traffic light", 0.04, 0.02),
    "lamp_red": ((255, 40, 30), "traffic light", 0.02, 0.02),
    "lamp_amber": ((255, 190, 0), "traffic light", 0.02, 0.02),
    "lamp_green": ((40, 255, 90), "traffic light", 0.02, 0.02),
    "sign": ((250, 215, 20), "traffic sign", 0.04, 0.02),
    "vegetation": ((55, 135, 40), "vegetation", 0.22, 0.18),
    "trunk": ((100, 70, 40), "vegetation", 0.10, 0.05),
    "sky": ((120, 175, 235), "sky", 0.01, 0.06),
    "sky_horizon": ((195, 218, 240), "sky", 0.01, 0.06),
    "skin": ((225, 180, 145), "person", 0.03, 0.02),
    "person_top": ((200, 45, 55), "person", 0.04, 0.03),
    "person_legs": ((45, 50, 80), "person", 0.04, 0.03),
    "rider_top": ((215, 60, 175), "rider", 0.04, 0.03),
    "helmet": ((240, 240, 240), "rider", 0.03, 0.02),
    "rider_legs": ((40, 40, 60), "rider", 0.04, 0.03),
    "car": ((45, 85, 185), "car", 0.04, 0.05),
    "car_glass": ((35, 40, 55), "car", 0.03, 0.03),
    "car_tyre": ((25, 25, 25), "car", 0.03, 0.02),
    "car_rear_light": ((230, 30, 30), "car", 0.02, 0.02),
    "car_head_light": ((240, 240, 215), "car", 0.02, 0.02),
    "truck": ((215, 210, 195), "truck", 0.04, 0.06),
    "truck_dark": ((50, 50, 55), "truck", 0.03, 0.02),
    "bus": ((235, 145, 25), "bus", 0.04, 0.05),
    "bus_glass": ((40, 45, 60), "bus", 0.03, 0.02),
    "train": ((175, 185, 200), "train", 0.04, 0.05),
    "train_stripe": ((200, 30, 40), "train", 0.03, 0.03),
    "train_glass": ((35, 45, 60), "train", 0.03, 0.02),
    "motorcycle": ((110, 45, 150), "motorcycle", 0.04, 0.03),
    "motorcycle_tyre": ((25, 25, 25), "motorcycle", 0.03, 0.02),
    "bicycle": ((30, 175, 205), "bicycle", 0.04, 0.03),
    "bicycle_tyre": ((30, 30, 30), "bicycle", 0.03, 0.02),
    "ego": ((45, 50, 60), "ego vehicle", 0.02, 0.03),
}

# Real-domain hue shift per class in degrees: colour stays a cue, but an unreliable one.
_REAL_HUE_SHIFT: dict[str, float] = {
    "road": 0.0,
    "sidewalk": 12.0,
    "building": 10.0,
    "wall": -15.0,
    "fence": 12.0,
    "pole": 0.0,
    "traffic light": -10.0,
    "traffic sign": -12.0,
    "vegetation": 15.0,
    "terrain": -18.0,
    "sky": -10.0,
    "person": 18.0,
    "rider": -18.0,
    "car": 20.0,
    "truck": 12.0,
    "bus": -12.0,
    "train": 15.0,
    "motorcycle": -20.0,
    "bicycle": 18.0,
    "ego vehicle": 0.0,
}


class Palette:
    """Colours and texture amplitudes of parts, drawn per object according to a style."""

    def __init__(self, style: Style, rng: np.random.Generator) -> None:
        self.mode = style.colours
        self.rng = rng

    def __call__(self, part: str, jitter: float = 1.0) -> Paint:
        """RGB (0-255 floats) and (fine, smooth) texture amplitudes for one object's part."""
        rgb, cls, fine, smooth = _PARTS[part]
        rng = self.rng
        if self.mode == "randomised":
            h, s, v = rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0), rng.uniform(0.12, 1.0)
            tex = rng.uniform(0.0, 0.3, size=2) * (rng.uniform() < 0.7)
            return _hsv(h, s, v), tex.astype(np.float32)
        h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
        if self.mode == "synthetic":
            h += rng.uniform(-0.02, 0.02) * jitter
            s *= 1.0 + rng.uniform(-0.1, 0.1) * jitter
            v *= 1.0 + rng.uniform(-0.1, 0.1) * jitter
            return _hsv(h, s, v), np.zeros(2, np.float32)
        h += _REAL_HUE_SHIFT[cls] / 360.0 + rng.uniform(-0.035, 0.035) * jitter
        s *= 0.72 * (1.0 + rng.uniform(-0.15, 0.15) * jitter)
        v *= 0.95 * (1.0 + rng.uniform(-0.15, 0.15) * jitter)
        return _hsv(h, s, v), np.array([fine, smooth], np.float32)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.array([r * 255.0, g * 255.0, b * 255.0], np.float32)
